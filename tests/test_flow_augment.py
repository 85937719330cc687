"""The `augment` flow against the real local OpenAI-compatible server (a subprocess), on real MovieLens rows.

Server-side counters (`/admin/stats`) are the ground truth for what was asked over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.artifacts import Artifact

from flows.augment import AugmentFailed, augment_flow
from llmsim.launch import start_llm_server
from recsys.config import (
    AugmentConfig,
    AugmentRunConfig,
    DataConfig,
    LLMConfig,
    ModelConfig,
    SplitConfig,
    TrainConfig,
)
from storage.ledger import LedgerWriter, read_ledger
from tests.conftest import REPO
from tests.conftest import SMALL_USERS as N_USERS


def config(data: DataConfig, base_url: str, split: SplitConfig | None = None, llm: dict | None = None,
           **augment) -> AugmentRunConfig:
    llm_kw = {"model": "llmrec-heuristic", "base_url": base_url, "rpm": None, "tpm": None, "max_attempts": 6,
              "backoff_initial_s": 0.05, "backoff_max_s": 1.0, "timeout_s": 20.0, **(llm or {})}
    return AugmentRunConfig(
        data=data, split=split or SplitConfig(),
        model=ModelConfig(name="mf", embedding_dim=16), train=TrainConfig(max_epochs=2, device="cpu"),
        llm=LLMConfig(**llm_kw),
        augment=AugmentConfig(**{"users_per_batch": 10, "items_per_batch": 50, **augment}),
    )


def chat_requests(stats: dict) -> int:
    return sum(stats["prompt_answer_counts"].values())


def outputs(out: Path) -> dict[str, pd.DataFrame]:
    names = {"edges": "augmented_edges", "profiles": "user_profiles", "attributes": "item_attributes",
             "failures": "augment_failures"}
    return {k: pd.read_parquet(out / f"{v}.parquet") for k, v in names.items() if (out / f"{v}.parquet").exists()}


@pytest.mark.slow
def test_faults_lose_no_item(small_movielens, tmp_path):
    """10 % 500s, 10 % malformed answers and a 429-enforcing RPM limit (which the client, reading the limit from the
    x-ratelimit headers, mostly keeps under): every user is answered or listed."""
    with start_llm_server(error_rate=0.1, malformed_rate=0.1, rpm_limit=90, seed=7) as server:
        cfg = config(DataConfig(dataset=str(small_movielens)), server.base_url, stages=("edges", "profiles"))
        out = tmp_path / "out"
        try:
            augment_flow(config=cfg, store_root=str(tmp_path / "store"), out_dir=str(out))
        except AugmentFailed as e:
            assert "items failed" in str(e)
        stats = server.stats()
    assert stats["by_status"].get("500", 0) > 0
    got = outputs(out)
    for stage in ("edges", "profiles"):
        answered = set(got[stage]["user_id"])
        failed = set(got["failures"].query("stage == @stage")["key"])
        assert answered.isdisjoint(failed)
        assert answered | failed == set(range(1, N_USERS + 1)), f"{stage}: items lost"
        reasons = got["failures"].query("stage == @stage")["reason"]
        assert reasons.str.len().gt(0).all()
    edges = got["edges"]
    assert (edges["pos_item_id"] != edges["neg_item_id"]).all()


@pytest.mark.slow
def test_rerun_asks_only_failed_batches_and_ledger_matches_server(small_movielens, tmp_path):
    store, out = str(tmp_path / "store"), tmp_path / "out"
    # A title only some users watched: their prompts always get HTTP 500, so their batches fail.
    ds_items = pd.read_parquet(small_movielens / "items.parquet")
    title = ds_items.loc[ds_items["item_id"] == 1, "title"].item()  # Toy Story
    with start_llm_server(fail_match=title) as server:
        cfg = config(DataConfig(dataset=str(small_movielens)), server.base_url, stages=("edges", "profiles"),
                     llm={"max_attempts": 2})
        with pytest.raises(AugmentFailed, match="items failed"):
            augment_flow(config=cfg, store_root=store, out_dir=str(out))
        failed = outputs(out)["failures"]
        assert len(failed) > 0 and failed["reason"].str.contains("500").all()
        cost = Artifact.get("augment-cost")  # the run's Prefect artifact: calls, cost and failures per stage
        table = {r["stage"]: r for r in (json.loads(cost.data) if isinstance(cost.data, str) else cost.data)}
        assert table["edges"]["failed_items"] + table["profiles"]["failed_items"] == len(failed)
        assert table["edges"]["failed_calls"] > 0 and table["edges"]["calls"] > 0

        server.set_faults()  # the endpoint recovers
        server.reset()
        result = augment_flow(config=cfg, store_root=store, out_dir=str(out))
        stats = server.stats()
        # Only the failed items went over HTTP: every other answer was served from the cache or skipped.
        assert chat_requests(stats) == len(failed)
        assert result["failed"] == 0 and result["rows"] == {"edges": N_USERS, "profiles": N_USERS}

        rerun = pd.read_parquet(out / "ledger.parquet")  # this run's rows; all runs' rows are in the store
        assert rerun["flow_run_id"].nunique() == 1
        assert len(read_ledger(Path(store) / "ledger")) > len(rerun)
        http = rerun[~rerun["cached"] & (rerun["outcome"] == "ok")]
        assert int(http["prompt_tokens"].sum()) == stats["prompt_tokens"]
        assert int(http["completion_tokens"].sum()) == stats["completion_tokens"]

        server.reset()
        augment_flow(config=cfg, store_root=store, out_dir=str(out))  # after full success: nothing to ask
        assert server.stats()["requests"] == 0


@pytest.mark.slow
def test_kill_mid_stage_then_rerun_asks_only_what_was_in_flight(small_movielens, tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    with start_llm_server(latency_ms=40) as server:
        # One batch at a time, 2 requests in flight: at most 2 requests are under way when the process dies.
        cfg = config(DataConfig(dataset=str(small_movielens)), server.base_url, stages=("edges", "profiles"),
                     llm={"max_in_flight": 2}, max_batches_in_flight=1)
        script = ("import sys; from flows.augment import augment_flow; from recsys.config import AugmentRunConfig; "
                  "augment_flow(config=AugmentRunConfig.model_validate_json(sys.argv[1]), "
                  "store_root=sys.argv[2], out_dir=sys.argv[3])")
        proc = subprocess.Popen([sys.executable, "-c", script, cfg.model_dump_json(), str(store), str(out)],
                                cwd=REPO, env=os.environ.copy(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 240
            while server.stats()["chat_ok"] < 25 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert proc.poll() is None, "the flow ended before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        answered_before = server.stats()["chat_ok"]
        assert 0 < answered_before < 2 * N_USERS

        result = augment_flow(config=cfg, store_root=str(store), out_dir=str(out))
        counts = server.stats()["prompt_answer_counts"]
    assert result["failed"] == 0 and result["rows"] == {"edges": N_USERS, "profiles": N_USERS}
    assert len(counts) == 2 * N_USERS
    # Every answer the killed process received was kept. Only a request in flight at the kill (the server had
    # answered or was answering, the process never read it) can be asked again: at most max_in_flight of them.
    twice = {h: n for h, n in counts.items() if n > 1}
    assert len(twice) <= 2 and set(twice.values()) <= {2}, f"{len(twice)} prompts answered twice over HTTP"


@pytest.mark.slow
def test_budget_stops_within_one_batch(small_movielens, tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  llmrec-heuristic: {input: 1000.0, output: 1000.0}\n")
    with start_llm_server() as server:
        cfg = config(DataConfig(dataset=str(small_movielens)), server.base_url, stages=("profiles",),
                     llm={"price_table": prices}, users_per_batch=5)
        # An earlier run's spend in the store's ledger: the artifact's running total must include it.
        with LedgerWriter(tmp_path / "store" / "ledger", "earlier-run", "profiles") as earlier:
            earlier.append({"stage": "profiles", "batch": "0", "model": "llmrec-heuristic", "prompt_tokens": 10,
                            "completion_tokens": 5, "cached": False, "attempt": 1, "outcome": "ok",
                            "cost_usd": 0.25})
        with pytest.raises(AugmentFailed, match=r"budget \$1.5 reached after spending \$[0-9.]+; \d+ of \d+ batches"):
            augment_flow(config=cfg, store_root=str(tmp_path / "store"), out_dir=str(tmp_path / "out"),
                         max_cost_usd=1.5)
    ledger = pd.read_parquet(tmp_path / "out" / "ledger.parquet")  # this run's rows, written though it failed
    per_batch = ledger.groupby("batch")["cost_usd"].sum()
    spent = ledger["cost_usd"].sum()
    assert 0 < spent <= 1.5 + per_batch.max()
    assert len(per_batch) < N_USERS // 5  # it stopped before the end
    assert len(read_ledger(tmp_path / "store" / "ledger")) == len(ledger) + 1
    summary = Artifact.get("augment-cost-summary").data
    assert f"| this run | {spent:.6f} |" in summary and "| budget of this run | $1.5000 |" in summary
    assert f"| {spent + 0.25:.6f} |" in summary  # the ledger's running total: this run plus the earlier one


@pytest.mark.slow
def test_full_augment_on_ml100k_then_rerun_is_free(ml100k_dir, reference_split_dir, tmp_path):
    store, out = str(tmp_path / "store"), tmp_path / "out"
    with start_llm_server() as server:
        cfg = config(DataConfig(dataset="ml-100k", data_dir=ml100k_dir.parent), server.base_url,
                     split=SplitConfig(method="dir", split_dir=reference_split_dir),
                     llm={"max_in_flight": 8}, users_per_batch=100, items_per_batch=200)
        t0 = time.monotonic()
        result = augment_flow(config=cfg, store_root=store, out_dir=str(out))
        first = time.monotonic() - t0
        stats = server.stats()
        got = outputs(out)
        assert result["failed"] == 0
        assert len(got["edges"]) == 943 and got["edges"]["user_id"].nunique() == 943
        assert len(got["profiles"]) == 943 and len(got["attributes"]) == 1682
        train = pd.read_parquet(reference_split_dir / "train.parquet")
        assert got["edges"].merge(train, left_on=["user_id", "pos_item_id"],
                                  right_on=["user_id", "item_id"]).empty
        ledger = pd.read_parquet(out / "ledger.parquet")
        assert int(ledger.loc[~ledger["cached"], "prompt_tokens"].sum()) == stats["prompt_tokens"]

        server.reset()
        t0 = time.monotonic()
        augment_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "out2"))
        second = time.monotonic() - t0
        assert server.stats()["requests"] == 0
    (tmp_path / "timing.json").write_text(json.dumps({"first_s": first, "second_s": second}))
    print(f"augment ML-100K: first run {first:.1f} s, cached re-run {second:.1f} s")


def test_a_batch_past_its_time_limit_is_abandoned_and_a_rerun_keeps_its_answers(small_movielens, tmp_path):
    """A slow (or stuck) batch does not hold the flow for ever: past batch_timeout_s the run fails naming it; what
    the batch still answered is kept, so the re-run asks nothing again."""
    store, data = str(tmp_path / "store"), DataConfig(dataset=str(small_movielens))
    with start_llm_server(latency_ms=1500) as server:  # 30 users at 8 in flight: about 6 s per batch
        cfg = config(data, server.base_url, stages=("profiles",), users_per_batch=30, batch_timeout_s=2)
        with pytest.raises(AugmentFailed, match=r"profiles batch 0 abandoned: no result within "
                                                r"batch_timeout_s=2 s.*profiles batch 1 abandoned"):
            augment_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "out"))
        asked = chat_requests(server.stats())
        assert asked == N_USERS  # the abandoned batches' threads finished their work meanwhile
        server.set_faults()  # no latency
        result = augment_flow(config=cfg.model_copy(update={"augment": cfg.augment.model_copy(
            update={"batch_timeout_s": None})}), store_root=store, out_dir=str(tmp_path / "out2"))
        assert chat_requests(server.stats()) == asked  # nothing asked twice
    assert result["rows"] == {"profiles": N_USERS}


def test_a_crashed_batch_fails_the_run_naming_it(small_movielens, tmp_path, monkeypatch):
    """A batch that raises before recording anything (here: no API key for OpenAI's API) is not a silent success."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("LLMREC_TEST_NO_KEY", raising=False)
    cfg = config(DataConfig(dataset=str(small_movielens)), "unused", stages=("profiles",), users_per_batch=40,
                 llm={"base_url": None, "api_key_env": "LLMREC_TEST_NO_KEY"})
    with pytest.raises(AugmentFailed, match=r"profiles batch 0 crashed: .*LLMConfigError.*no API key") as failed:
        augment_flow(config=cfg, store_root=str(tmp_path / "store"), out_dir=str(tmp_path / "out"))
    assert "profiles batch 1 crashed" in str(failed.value)
    assert "LLMREC_TEST_NO_KEY" in str(failed.value)  # the message says which variable to set
