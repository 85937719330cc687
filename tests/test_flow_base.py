"""The `base` flow as a real Prefect run: outputs, cross-run caching on content keys, and rebuilds."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.base import base_flow
from recsys.config import BaseRunConfig, CandidateConfig, DataConfig, ModelConfig, TrainConfig
from storage.store import ArtifactStore

STAGES = ("load-dataset", "split", "train", "evaluate", "candidates")


def checkerboard(folder: Path, n_users: int = 40, n_items: int = 30, per_user: int = 10) -> Path:
    """Two user groups, each interacting only with its own half of the items (raw ids offset to test mapping)."""
    rng = np.random.default_rng(0)
    rows = []
    half = n_items // 2
    for u in range(n_users):
        group = u % 2
        items = rng.choice(half, size=per_user, replace=False) + group * half
        rows += [(1000 + u, 500 + int(i), t) for t, i in enumerate(items)]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "interactions.csv", index=False)
    titles = pd.DataFrame({"item_id": 500 + np.arange(n_items), "title": [f"Item {i}" for i in range(n_items)]})
    titles.to_csv(folder / "items.csv", index=False)
    return folder


def task_states(flow_run_id, expected: int) -> dict[str, str]:
    """Task-run state names by task name, read back from the Prefect API (waits for state events to land)."""
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flt)
            states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state is not None}
            final = [s for s in states.values() if s not in ("Pending", "Running", "Scheduled")]
            if len(final) >= expected or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def run(config: BaseRunConfig, store: Path, out: Path) -> tuple[dict, dict[str, str]]:
    state = base_flow(config=config, store_root=str(store), out_dir=str(out), return_state=True)
    assert state.is_completed(), state.message
    return state.result(), task_states(state.state_details.flow_run_id, expected=len(STAGES) + 1)


@pytest.fixture
def config(tmp_path) -> BaseRunConfig:
    return BaseRunConfig(
        data=DataConfig(dataset=str(checkerboard(tmp_path / "data"))),
        model=ModelConfig(name="mf", embedding_dim=16),
        train=TrainConfig(max_epochs=4, patience=2, batch_size=64, lr=0.01, device="cpu"),
        candidates=CandidateConfig(n_candidates=5),
    )


def test_base_flow_writes_outputs_then_caches_every_stage(config, tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    result, states = run(config, store, out)
    assert {states[s] for s in STAGES} == {"Completed"}

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["model"] == "mf" and 1 <= doc["best_epoch"] <= 4 and doc["seconds_per_epoch"] > 0
    for k in (10, 20, 50):
        assert 0.0 <= doc["test"][f"recall@{k}"] <= 1.0 and 0.0 <= doc["test"][f"ndcg@{k}"] <= 1.0
    assert "precision@20" in doc["test"] and "recall@20" in doc["valid"]

    cands = pd.read_parquet(out / "candidates.parquet")
    assert list(cands.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(cands["user_id"]) == set(range(1000, 1040))  # raw ids, every user
    assert (cands.groupby("user_id")["rank"].apply(list) == pd.Series([[1, 2, 3, 4, 5]] * 40).values).all()
    train = ArtifactStore(store).read_table(result["refs"]["split"], "train")
    seen = set(zip(train["user_id"], train["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(cands["user_id"], cands["item_id"], strict=True))

    # Same inputs, new flow run: every stage is served from its persisted result.
    result2, states2 = run(config, store, tmp_path / "out2")
    assert {s: states2[s] for s in STAGES} == dict.fromkeys(STAGES, "Cached")
    assert result2["refs"] == result["refs"]
    assert json.loads((tmp_path / "out2" / "metrics.json").read_text()) == doc

    # A changed training parameter re-runs training and what follows it, not the data stages.
    longer = config.model_copy(update={"train": config.train.model_copy(update={"max_epochs": 5})})
    result3, states3 = run(longer, store, tmp_path / "out3")
    assert states3["load-dataset"] == "Cached" and states3["split"] == "Cached"
    assert states3["train"] == "Completed" and states3["candidates"] == "Completed"
    assert result3["refs"]["train"] != result["refs"]["train"]


def test_deleted_artifact_is_rebuilt_not_served_stale(config, tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    result, _ = run(config, store, out)
    shutil.rmtree(ArtifactStore(store).folder(result["refs"]["candidates"]))
    result2, states = run(config, store, tmp_path / "out2")
    assert states["candidates"] == "Completed" and states["train"] == "Cached"
    assert ArtifactStore(store).exists(result2["refs"]["candidates"])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "candidates.parquet"),
                                  pd.read_parquet(tmp_path / "out2" / "candidates.parquet"))


def test_data_is_keyed_by_its_bytes_not_its_path(config, tmp_path, monkeypatch):
    store = tmp_path / "store"
    result, _ = run(config, store, tmp_path / "out")
    # The same files, copied elsewhere and named by a relative path: the same dataset, nothing runs again.
    shutil.copytree(config.data.dataset, tmp_path / "copy" / "data")
    monkeypatch.chdir(tmp_path / "copy")
    moved = config.model_copy(update={"data": DataConfig(dataset="data")})
    result2, states = run(moved, store, tmp_path / "out2")
    assert {s: states[s] for s in STAGES} == dict.fromkeys(STAGES, "Cached")
    assert result2["refs"] == result["refs"]
    # One edited byte (same size, same name): a new dataset, and everything after it is built again.
    csv = tmp_path / "copy" / "data" / "interactions.csv"
    text = csv.read_text()
    csv.write_text(text.replace("1000,", "1001,", 1))
    result3, states3 = run(moved, store, tmp_path / "out3")
    assert states3["load-dataset"] == "Completed" and states3["split"] == "Completed"
    assert result3["refs"]["dataset"] != result["refs"]["dataset"]


def progress_artifacts(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))


def test_training_epochs_show_as_a_progress_artifact(config, tmp_path):
    """The UI shows how far training is: a progress artifact on the flow run, at 100 % when it ended, saying how
    many epochs ran of the most allowed and the best one."""
    state = base_flow(config=config, store_root=str(tmp_path / "store"), return_state=True)
    assert state.is_completed(), state.message
    [art] = progress_artifacts(state.state_details.flow_run_id)
    fit = ArtifactStore(tmp_path / "store").read_json(state.result()["refs"]["train"], "fit")
    assert art.key.startswith("progress-epochs-train-") and art.data == 100.0
    assert (f"training epochs — {fit['epochs_run']} of at most 4 epochs, best epoch {fit['best_epoch']}"
            in art.description), art.description
