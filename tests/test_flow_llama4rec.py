"""The `llama4rec` flow end to end: a real Prefect run against the real local server (a subprocess) on 12 real
MovieLens users; a repeated run asks nothing; the server's answers to the ranking and pairwise prompts fail
validation when it is told to invent candidates; `llmrec llama4rec` reports a bad option in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import flows.cli as cli
from flows.llama4rec import llama4rec_estimate_flow, llama4rec_flow
from recsys.augment.pairwise import PairContext, pairwise_messages, validate_pairwise
from recsys.augment.parse import InvalidAnswer
from recsys.augment.prompts import ItemText, UserContext
from recsys.augment.ranking import RANKING_VERSION, RankingContext, ranking_messages, validate_ranking
from recsys.config import (
    AugmentConfig,
    CandidateConfig,
    DataConfig,
    Llama4RecConfig,
    Llama4RecRunConfig,
    LLMConfig,
    ModelConfig,
    RankingLLMConfig,
    TrainConfig,
)
from recsys.llama4rec.variants import VARIANTS
from recsys.llm.client import LLMClient
from storage.ledger import read_ledger

N_USERS = 12


@pytest.fixture(scope="module")
def tiny_movielens(tmp_path_factory, ml100k_dir) -> Path:
    from recsys.data.movielens import load_ml100k

    ds = load_ml100k(ml100k_dir)
    inter = ds.interactions[ds.interactions["user_id"] <= N_USERS]
    folder = tmp_path_factory.mktemp("ml-tiny")
    inter.to_parquet(folder / "interactions.parquet", index=False)
    ds.items[ds.items["item_id"].isin(inter["item_id"])].to_parquet(folder / "items.parquet", index=False)
    return folder


def config(dataset: Path, base_url: str) -> Llama4RecRunConfig:
    return Llama4RecRunConfig(
        data=DataConfig(dataset=str(dataset)), model=ModelConfig(name="mf", embedding_dim=8),
        train=TrainConfig(max_epochs=3, device="cpu"), candidates=CandidateConfig(n_candidates=5),
        llm=RankingLLMConfig(model="llmrec-heuristic", base_url=base_url, rpm=None, tpm=None,
                             backoff_initial_s=0.05, backoff_max_s=1.0, timeout_s=120.0),
        augment=AugmentConfig(users_per_batch=10), llama4rec=Llama4RecConfig(pairs_per_user=2, max_history=5))


def test_flow_runs_every_variant_and_a_rerun_asks_nothing(tiny_movielens, llm_server, tmp_path) -> None:
    cfg, store, out = config(tiny_movielens, llm_server.base_url), str(tmp_path / "store"), tmp_path / "out"
    before = llm_server.stats()["requests"]
    estimate = {r["stage"]: r for r in llama4rec_estimate_flow(config=cfg, store_root=store)}
    assert llm_server.stats()["requests"] == before  # the estimate sends nothing
    assert set(estimate) == {"pairwise", "ranking, plain prompt", "ranking, augmented prompt"}
    result = llama4rec_flow(config=cfg, store_root=store, out_dir=str(out))
    asked = llm_server.stats()["requests"]
    # A pairwise prompt per user; 4 (backbone, prompt) sets x 2 splits x a ranking prompt per user, some identical
    # (cache hits), and a retry where the loaded server answers late.
    assert N_USERS < asked <= N_USERS * 9 * 2
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["variant"]) == {v.name for v in VARIANTS}
    assert set(metrics["group"]) == {"all", "head", "tail"} and set(metrics["metric"]) == {"hit", "ndcg"}
    assert metrics["value"].between(0, 1).all()
    test_all = metrics.query("split == 'test' and group == 'all'").set_index(["variant", "metric", "k"])["value"]
    assert len(test_all) == len(VARIANTS) * 4
    selection = pd.read_parquet(out / "selection.parquet").set_index("variant")
    assert selection.loc["llama4rec", "alpha1"] in cfg.llama4rec.alpha_grid
    assert selection.loc["w/o-AA", "alpha"] in cfg.llama4rec.alpha_grid
    lines = (out / "instructions.jsonl").read_text().splitlines()
    assert lines and all([m["role"] for m in json.loads(line)["messages"]] == ["system", "user", "assistant"]
                         for line in lines)
    ledger = pd.read_parquet(out / "ledger.parquet")
    assert set(ledger["stage"]) == {"pairwise", "ranking"} and (ledger["outcome"] == "ok").any()
    assert pd.read_parquet(out / "augment_failures.parquet").empty  # every prompt was answered in the end
    # The estimate against what was sent: the pairwise prompts exactly; the rankings at most what was estimated
    # (the backbone on D's lists stand in for the one on D', whose identical lists come from the cache) and at
    # least the backbone on D's share (one of the two sets per prompt form).
    sent = ledger[(ledger["outcome"] == "ok") & ~ledger["cached"]]
    pairwise = sent[sent["stage"] == "pairwise"]
    assert len(pairwise) == estimate["pairwise"]["prompts"] == N_USERS
    assert pairwise["prompt_tokens"].sum() == estimate["pairwise"]["input_tokens"]
    ranking_sent = sent.loc[sent["stage"] == "ranking", "prompt_tokens"].sum()
    ranking_estimate = sum(r["input_tokens"] for stage, r in estimate.items() if stage.startswith("ranking"))
    assert ranking_estimate / 2 <= ranking_sent <= ranking_estimate, (ranking_estimate, ranking_sent)
    report = (out / "report.md").read_text()
    verdict = report.splitlines()[2]  # against the backbone, from the numbers (on this tiny data it may score 0)
    assert verdict.startswith("**Llama4Rec") and "not evaluated" not in verdict, verdict
    assert "| mf | llama4rec |" in report and "| lightgcn | Llama4Rec | 0.0647 |" in report
    assert "| ranking | augmented |" in report and "| pairwise |" in report

    again = llama4rec_flow(config=cfg, store_root=store, out_dir=str(out))
    assert llm_server.stats()["requests"] == asked  # every batch and stage came from the store
    pd.testing.assert_frame_equal(again["metrics"], result["metrics"])
    assert "No LLM request in this run" in again["report"]
    pairwise_again = llama4rec_estimate_flow(config=cfg, store_root=store)[0]
    assert (pairwise_again["cached"], pairwise_again["input_tokens"]) == (N_USERS, 0)  # answered: free
    assert not read_ledger(again["ledger"]).empty  # the first run's calls stay in the store's ledger


def test_server_answers_that_invent_candidates_fail_validation(llm_server, tmp_path) -> None:
    movies = [ItemText(i, f"Movie {i}", 1990 + i, "Drama") for i in range(1, 6)]
    user = UserContext(1, movies[:1], movies[1:], frozenset({1}))
    ranking = RankingContext(user)
    pairs = PairContext(UserContext(1, movies[:1], [], frozenset({1})), ((movies[1], movies[2]),))
    cfg = LLMConfig(model="llmrec-heuristic", base_url=llm_server.base_url, rpm=None, tpm=None, max_attempts=1)
    with LLMClient(cfg, cache_dir=tmp_path / "cache") as client:
        answer = client.chat(ranking_messages(ranking), template_version=RANKING_VERSION).text
        assert validate_ranking(answer, ranking)["completed"] == 0
    llm_server.set_faults(out_of_candidates_rate=1.0)
    try:
        with LLMClient(cfg, cache_dir=tmp_path / "faulty") as client:
            with pytest.raises(InvalidAnswer, match="ranking names 4, which is not a candidate index"):
                validate_ranking(client.chat(ranking_messages(ranking), template_version=RANKING_VERSION).text,
                                 ranking)
            with pytest.raises(InvalidAnswer, match="'C' is not 'A' or 'B'"):
                validate_pairwise(client.chat(pairwise_messages(pairs), template_version="p").text, pairs)
    finally:
        llm_server.set_faults()


def test_cli_reports_a_bad_option_in_one_line(tmp_path) -> None:
    res = CliRunner().invoke(cli.app, ["llama4rec", "--k-prime", "4", "--base-url", "http://127.0.0.1:9/v1",
                                       "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert "must not exceed k'" in res.output and "Traceback" not in res.output
