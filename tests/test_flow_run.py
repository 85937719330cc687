"""The end-to-end `run` flow on real MovieLens rows against the real local LLM server (a subprocess): the report's
outputs, then the `train` flow with ablation variants on the same store (shared models, no HTTP request), and a
repeat that recomputes nothing."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from flows.run import run_flow
from flows.train import train_flow
from llmsim.launch import start_llm_server
from recsys.config import (
    AugmentConfig,
    DataConfig,
    LLMConfig,
    LLMRecConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from recsys.eval.report import COLUMNS, metrics_frame, metrics_rows, report_markdown, summary_frame

UNCACHED = ("plan-batches", "collect-stage", "close-run")  # bookkeeping tasks with no content key
SUBFLOWS = re.compile(r"^(base|augment|embed)-\d+$")  # the task runs that stand for subflow runs in their parent


def run_config(dataset: str, base_url: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=dataset),
        model=ModelConfig(name="lightgcn", embedding_dim=16, n_layers=2),
        train=TrainConfig(max_epochs=3, patience=2, batch_size=256, lr=0.01, device="cpu"),
        llm=LLMConfig(model="llmrec-heuristic", base_url=base_url, rpm=None, tpm=None, backoff_initial_s=0.05,
                      backoff_max_s=1.0, timeout_s=20.0),
        augment=AugmentConfig(users_per_batch=30, items_per_batch=400),
        llmrec=LLMRecConfig(embedding_dim=16, n_layers=2),
        seeds=(2020, 2021),
    )


def all_task_states(flow_run_id) -> dict[str, str]:
    """Task-run name -> state name over the flow run and all its subflow runs, read back from the Prefect API."""
    with get_client(sync_client=True) as client:
        ids, frontier = [flow_run_id], [flow_run_id]
        while frontier:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [c.id for c in children]
            ids += frontier
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            states = {r.name: r.state.name for r in runs if r.state is not None}
            if all(s not in ("Pending", "Running", "Scheduled") for s in states.values()) \
                    or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def test_report_summary_and_paired_test() -> None:
    rows = []
    for seed, (base, llm) in zip((1, 2, 3), ((0.20, 0.22), (0.21, 0.24), (0.19, 0.22)), strict=True):
        rows += metrics_rows("lightgcn", seed, {"test": {"ndcg@10": base}})
        rows += metrics_rows("llmrec", seed, {"test": {"ndcg@10": llm}})
    frame = metrics_frame(rows)
    assert list(frame.columns) == list(COLUMNS) and set(frame["k"]) == {10}
    s = summary_frame(frame).set_index("variant")
    assert s.at["llmrec", "mean"] == pytest.approx(np.mean([0.22, 0.24, 0.22]))
    assert s.at["llmrec", "rel_vs_baseline"] == pytest.approx(0.68 / 0.60 - 1)
    from scipy.stats import ttest_rel

    assert s.at["llmrec", "p_value"] == pytest.approx(ttest_rel([0.22, 0.24, 0.22], [0.20, 0.21, 0.19]).pvalue)
    md = report_markdown(frame)
    assert "| ndcg@10 | 0.2000 ± 0.0100 | 0.2267 ± 0.0115 | +13.3% |" in md


@pytest.mark.slow
def test_run_then_ablate_shares_models_and_a_repeat_trains_nothing(small_movielens, tmp_path):
    """`run` (LightGCN + llmrec), then `train` with ablation variants on the same store: llmrec is the same cached
    artifact, only the new variants train, no LLM request is made; the same call again is all Cached."""
    store, out = str(tmp_path / "store"), tmp_path / "out"
    with start_llm_server() as server:
        cfg = run_config(str(small_movielens), server.base_url)
        t0 = time.monotonic()
        state = run_flow(config=cfg, store_root=store, out_dir=str(out), return_state=True)
        first = time.monotonic() - t0
        assert state.is_completed(), state.message
        assert server.stats()["chat_ok"] > 0

        metrics = pd.read_parquet(out / "metrics.parquet")
        assert list(metrics.columns) == list(COLUMNS)
        assert set(metrics["variant"]) == {"lightgcn", "llmrec"} and set(metrics["split"]) == {"valid", "test"}
        assert set(metrics["seed"]) == {2020, 2021}
        per = metrics.groupby(["variant", "split", "seed"]).size()
        assert len(per) == 8 and per.nunique() == 1  # every variant x split x seed has the same metrics
        assert metrics["value"].between(0, 1).all()
        assert {"ndcg", "ndcg_official"} <= set(metrics["metric"])
        report = (out / "report.md").read_text()
        assert "lightgcn" in report and "llmrec" in report and "ndcg@10" in report and "p llmrec" in report
        assert (out / "augment" / "augmented_edges.parquet").is_file()
        result = state.result()
        assert set(result["refs"]["features"]) == {"item_text", "user_profile", "item_attr_director",
                                                   "item_attr_country", "item_attr_language"}

        server.reset()
        variants = ["llmrec", "w/o-u-i", "w/o-all"]
        t0 = time.monotonic()
        ablate = train_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "ablate"), variants=variants,
                            return_state=True)
        second = time.monotonic() - t0
        assert ablate.is_completed(), ablate.message
        again = train_flow(config=cfg, store_root=store, out_dir=str(tmp_path / "again"), variants=variants,
                           return_state=True)
        assert again.is_completed(), again.message
        assert server.stats()["requests"] == 0  # augmentation came from the store both times

    ab = pd.read_parquet(tmp_path / "ablate" / "metrics.parquet")
    cells = ab[ab["split"] == "test"].groupby(["variant", "seed"]).size()
    assert set(cells.index) == {(v, s) for v in ["lightgcn", *variants] for s in (2020, 2021)}
    # the baseline and llmrec are the run's own models: the same numbers
    shared = ab[ab["variant"].isin(["lightgcn", "llmrec"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, metrics.astype(shared.dtypes.to_dict()))
    refs = ablate.result()["refs"]["variants"]
    assert refs["llmrec"] == result["refs"]["variants"]["llmrec"]  # one cache key for run and ablate
    assert refs["w/o-u-i"][2020]["train"] != refs["llmrec"][2020]["train"]
    states = all_task_states(ablate.state_details.flow_run_id)
    assert states["train-llmrec-2020"] == states["train-llmrec-2021"] == "Cached"
    assert states["train-llmrec-wo-u-i-2020"] == states["train-llmrec-wo-u-i-2021"] == "Completed"
    # Consistency: LLMRec with every augmentation off, trained through the same tasks and the same TrainConfig
    # object, scores exactly as its backbone baseline on every metric, split and seed.
    off = ab[ab["variant"] == "w/o-all"].drop(columns="variant").reset_index(drop=True)
    base = ab[ab["variant"] == "lightgcn"].drop(columns="variant").reset_index(drop=True)
    pd.testing.assert_frame_equal(off, base, check_exact=False, rtol=0, atol=1e-6)
    report = (tmp_path / "ablate" / "report.md").read_text()
    assert report.splitlines()[2].startswith("**LLM augmentation ")  # the verdict, first, from the numbers
    assert "(llmrec against its backbone lightgcn)" in report and "2 seeds" in report.splitlines()[2]
    assert "## Test by user group (quartiles of training interactions per user)" in report
    assert "| Q1 (" in report and "| Q4 (" in report
    assert "Ablation (paper Table 3)" in report and "| w/o-u-i |" in report and "Cost per LLM strategy" in report
    assert "| u-i edges | 0.000000 | 0." in report and "w/o-u-i | 0." in report  # measured; the local server is free
    assert (tmp_path / "ablate" / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    states = all_task_states(again.state_details.flow_run_id)  # the repeat trains nothing
    keyed = {n: s for n, s in states.items() if not n.startswith(UNCACHED) and not SUBFLOWS.match(n)}
    assert any(n.startswith("train-llmrec-wo") for n in keyed) and any(n.startswith("embed-") for n in keyed)
    assert set(keyed.values()) == {"Cached"}, {n: s for n, s in keyed.items() if s != "Cached"}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again" / "metrics.parquet"), ab)
    with get_client(sync_client=True) as client:
        published = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["llmrec-ablation", "llmrec-report"])))
    assert {a.key for a in published} == {"llmrec-ablation", "llmrec-report"}
    print(f"on {small_movielens.name}: run {first:.1f} s, ablate with a new variant {second:.1f} s")
