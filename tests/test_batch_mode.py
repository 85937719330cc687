"""The Batch API mode, the cost estimate and trial samples, end to end: the `augment` flow against the local
server's /v1/files and /v1/batches on the first 60 users of ML-100K (profiles: no embedding model needed).

One server and one artifact store serve the module (the base model is trained once); each test asks with its own
sampling temperature, so no test finds another's answers in the shared response cache. The server's counters
(`/admin/stats`: batches_created, batch_requests, requests) are the ground truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.augment import AugmentFailed, augment_flow, estimate_flow
from flows.cli import app
from flows.runners import prefect_api_url
from llmsim.launch import LLMServer, start_llm_server
from recsys.config import AugmentConfig, AugmentRunConfig, DataConfig, LLMConfig, ModelConfig, TrainConfig
from recsys.llm.limits import clear_shared_limiters
from storage.batch_jobs import BatchJob
from tests.conftest import REPO
from tests.conftest import SMALL_USERS as N_USERS

PRICES = {"gpt-4o-mini": (0.15, 0.60)}  # USD per 1M tokens, normal requests (batch: half)


def augment(**kwargs: Any) -> dict[str, Any]:
    """`augment_flow` on gpt-4o-mini prices at the local server, which costs nothing: no budget needed."""
    return augment_flow(allow_unbounded_spend=True, **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with start_llm_server(batch_duration_s=0.2) as started:
        yield started


@pytest.fixture()
def sim(server: LLMServer) -> Iterator[LLMServer]:
    clear_shared_limiters()
    server.set_faults(batch_duration_s=0.2)
    server.reset()
    try:
        yield server
    finally:
        server.set_faults(batch_duration_s=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("batch-store"))


def config(data: Path, server: LLMServer, temperature: float, llm: dict | None = None, **augment: Any
           ) -> AugmentRunConfig:
    return AugmentRunConfig(
        data=DataConfig(dataset=str(data)), model=ModelConfig(name="mf", embedding_dim=16),
        train=TrainConfig(max_epochs=2, device="cpu"),
        llm=LLMConfig(**{"model": "gpt-4o-mini", "base_url": server.base_url, "rpm": None, "tpm": None,
                         "temperature": temperature, "backoff_initial_s": 0.05, "backoff_max_s": 1.0, **(llm or {})}),
        augment=AugmentConfig(**{"stages": ("profiles",), "users_per_batch": N_USERS, "items_per_batch": 400,
                                 "mode": "batch", "batch_poll_s": 0.1, "batch_poll_max_s": 0.5, **augment}),
    )


def test_files_endpoint_takes_any_purpose(sim: LLMServer, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    data = b'{"messages": [{"role": "user", "content": "hi"}]}\n'
    tuned = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    batch = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert (tuned.purpose, tuned.bytes, tuned.filename) == ("fine-tune", len(data), "train.jsonl")
    assert client.files.retrieve(tuned.id).id == tuned.id
    assert client.files.content(tuned.id).read() == data
    assert {f.id for f in client.files.list(purpose="fine-tune").data} == {tuned.id}
    assert {tuned.id, batch.id} <= {f.id for f in client.files.list().data}
    assert client.files.delete(tuned.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(tuned.id)
    assert sim.stats()["files_created"] == 2


def test_partial_errors_go_to_follow_up_batches(small_movielens: Path, sim: LLMServer, store: str,
                                                tmp_path: Path) -> None:
    """20 % of the batch's requests fail: each round resubmits only what is unanswered, every user ends answered,
    and every answer is a ledger row at batch prices."""
    sim.set_faults(batch_duration_s=0.2, batch_error_rate=0.2, seed=5)
    result = augment(config=config(small_movielens, sim, 0.61, batch_rounds=5), store_root=store,
                          out_dir=str(tmp_path / "out"))
    stats = sim.stats()
    assert result["failed"] == 0 and result["rows"] == {"profiles": N_USERS}
    assert 2 <= stats["batches_created"] <= 5 and stats["requests"] == 0  # no normal request
    assert stats["batch_requests"] == stats["chat_ok"] + stats["by_status"].get("500", 0) + (
        stats["batch_requests"] - stats["chat_ok"])
    ledger = pd.read_parquet(tmp_path / "out" / "ledger.parquet")
    paid = ledger[ledger["outcome"] == "ok"]
    assert (ledger["mode"] == "batch").all() and len(paid) == N_USERS
    assert len(ledger) == stats["batch_requests"]  # one row per batch request, failed ones cost 0
    inp, out = PRICES["gpt-4o-mini"]
    expected = (paid["prompt_tokens"] * inp + paid["completion_tokens"] * out) / 2e6
    assert paid["cost_usd"].to_numpy() == pytest.approx(expected.to_numpy())
    assert (ledger.loc[ledger["outcome"] != "ok", "cost_usd"] == 0).all()


def test_expired_batch_then_normal_requests(small_movielens: Path, sim: LLMServer, store: str,
                                            tmp_path: Path) -> None:
    """The batch expires with half its requests answered; with batch_followup "normal" the other half is asked
    by normal requests, priced at normal prices."""
    sim.set_faults(batch_duration_s=0.2, batch_expire_after=0.5)
    result = augment(config=config(small_movielens, sim, 0.62, batch_followup="normal"), store_root=store,
                          out_dir=str(tmp_path / "out"))
    stats = sim.stats()
    assert result["failed"] == 0 and stats["batches_created"] == 1
    assert stats["requests"] == N_USERS // 2  # the expired half, over HTTP
    ledger = pd.read_parquet(tmp_path / "out" / "ledger.parquet")
    paid = ledger[(ledger["outcome"] == "ok") & ~ledger["cached"]]
    assert paid.groupby("mode").size().to_dict() == {"batch": N_USERS // 2, "normal": N_USERS // 2}


@pytest.mark.slow
def test_killed_while_polling_resumes_without_a_second_batch(small_movielens: Path, sim: LLMServer, store: str,
                                                             tmp_path: Path) -> None:
    """SIGKILL while the flow polls its batch; the re-run finds the persisted batch id, polls it, and creates no
    second batch; no user is lost."""
    sim.set_faults(batch_duration_s=4.0)
    cfg = config(small_movielens, sim, 0.63)
    out = tmp_path / "out"
    script = ("import sys; from flows.augment import augment_flow; from recsys.config import AugmentRunConfig; "
              "augment_flow(config=AugmentRunConfig.model_validate_json(sys.argv[1]), store_root=sys.argv[2], "
              "out_dir=sys.argv[3], allow_unbounded_spend=True)")
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url()}  # this session's Prefect API: no second server
    proc = subprocess.Popen([sys.executable, "-c", script, cfg.model_dump_json(), store, str(out)], cwd=REPO,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while sim.stats()["batches_created"] == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # polling
        assert proc.poll() is None, "the flow ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    (job,) = [BatchJob(p) for p in (Path(store) / "batch-jobs" / "profiles").iterdir()
              if BatchJob(p).record().get("endpoint") == sim.base_url and BatchJob(p).record().get("batch_id")
              and not BatchJob(p).record().get("downloaded")]
    assert sim.stats()["batches_created"] == 1

    result = augment(config=cfg, store_root=store, out_dir=str(out))
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batch_requests"] == N_USERS  # resumed, not resubmitted
    assert result["failed"] == 0 and result["rows"] == {"profiles": N_USERS}
    assert job.record()["downloaded"] and len(pd.read_parquet(out / "user_profiles.parquet")) == N_USERS


def test_estimate_sends_nothing_and_matches_what_is_sent(small_movielens: Path, sim: LLMServer, store: str,
                                                         tmp_path: Path) -> None:
    """--estimate makes no request; its input tokens are what the ledger records once the prompts are sent. A
    trial on 20 users, then the full run: the full run asks only the 40 others."""
    cfg = config(small_movielens, sim, 0.64, mode="normal")
    cli = CliRunner().invoke(app, ["augment", "--estimate", "--dataset", str(small_movielens), "--base-model", "mf",
                                   "--epochs", "2", "--stages", "profiles", "--base-url", sim.base_url, "--store",
                                   store])
    assert cli.exit_code == 0, cli.output
    assert "nothing was sent" in cli.output and "profiles" in cli.output and sim.stats()["requests"] == 0
    (estimate,) = estimate_flow(config=cfg, store_root=store)
    assert (estimate["items"], estimate["prompts"], estimate["cached"]) == (N_USERS, N_USERS, 0)
    assert sim.stats()["requests"] == 0

    trial = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"sample_users": 20})})
    assert augment(config=trial, store_root=store, out_dir=str(tmp_path / "trial"))["rows"] == {"profiles": 20}
    assert sim.stats()["requests"] == 20
    sim.reset()
    full = augment(config=cfg, store_root=store, out_dir=str(tmp_path / "full"))
    assert full["rows"] == {"profiles": N_USERS} and sim.stats()["requests"] == N_USERS - 20
    sent = pd.concat([pd.read_parquet(tmp_path / run / "ledger.parquet") for run in ("trial", "full")])
    sent = sent[~sent["cached"] & (sent["outcome"] == "ok")]
    assert int(sent["prompt_tokens"].sum()) == estimate["input_tokens"]  # same tokenizer, no re-ask here
    assert estimate["usd"] == pytest.approx(2 * estimate["usd_batch"])


def test_estimate_needs_no_api_key(small_movielens: Path, store: str, tmp_path: Path, monkeypatch) -> None:
    """OpenAI's API, no key and no base URL: `augment --estimate` and `run --estimate` price the prompts (they send
    nothing); `augment` itself stops with one line before any work."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    data = ["--dataset", str(small_movielens), "--epochs", "2", "--model", "gpt-4o-mini"]
    for command in (["augment", "--base-model", "mf", "--stages", "profiles"], ["run", "--device", "cpu"]):
        cli = CliRunner().invoke(app, [*command, "--estimate", *data, "--store", store])
        assert cli.exit_code == 0, cli.output
        assert "gpt-4o-mini (nothing was sent)" in cli.output and "profiles" in cli.output
        assert "not-needed" not in cli.output

    fresh = tmp_path / "store"
    cli = CliRunner().invoke(app, ["augment", "--base-model", "mf", "--stages", "profiles", "--max-cost-usd", "1",
                                   *data, "--store", str(fresh)])
    assert cli.exit_code == 2
    (line,) = cli.stdout.strip().splitlines()
    assert line.startswith("error: no API key: set $OPENAI_API_KEY") and "Traceback" not in cli.output
    assert not fresh.exists()  # nothing loaded or trained


def test_a_batch_refused_as_a_whole_fails_the_run(small_movielens: Path, sim: LLMServer, store: str,
                                                  tmp_path: Path) -> None:
    """A server without the form of response_format the batch lines carry refuses each line: the run fails
    naming the reason for every user, after the follow-up batches."""
    sim.set_faults(batch_duration_s=0.2, structured_outputs="json_object")
    with pytest.raises(AugmentFailed, match="60 items failed"):
        augment(config=config(small_movielens, sim, 0.65, batch_rounds=2), store_root=store,
                     out_dir=str(tmp_path / "out"))
    failures = pd.read_parquet(tmp_path / "out" / "augment_failures.parquet")
    assert len(failures) == N_USERS and failures["reason"].str.contains("no answer after 2 batches").all()
    assert failures["reason"].str.contains("response_format json_schema is not supported").all()
    assert sim.stats()["batches_created"] == 2  # the same requests again: a new batch, not the first one's results

    sim.set_faults(batch_duration_s=0.2)  # the server takes the format again: a re-run asks anew and succeeds
    result = augment(config=config(small_movielens, sim, 0.65, batch_rounds=2), store_root=store,
                          out_dir=str(tmp_path / "out"))
    assert result["failed"] == 0 and sim.stats()["batches_created"] == 3
