"""Prefect task: copy a run's user-facing outputs from the store into its output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from recsys.config import BaseRunConfig
from storage.atomic import write_json
from storage.store import ArtifactStore, export_file


def metrics_document(fit: dict[str, Any], metrics: dict[str, dict[str, float]],
                     users: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The `metrics.json` shape automation depends on: model, best_epoch, seconds_per_epoch, valid, test, and per
    part the users evaluated and the cold users (no training interaction) left out."""
    return {
        "model": fit["model"],
        "best_epoch": fit["best_epoch"],
        "seconds_per_epoch": fit["seconds_per_epoch"],
        "epochs_run": fit["epochs_run"],
        "device": fit["device"],
        "valid": metrics["valid"],
        "test": metrics["test"],
        "users": users,
    }


@task(name="export-base")
def export_base(store_root: str, refs: dict[str, str], config: BaseRunConfig, out_dir: str) -> dict[str, Any]:
    """Write metrics.json, candidates.parquet, history.parquet and config.json into `out_dir` atomically."""
    store = ArtifactStore(store_root)
    out = Path(out_dir).expanduser()
    doc = metrics_document(store.read_json(refs["train"], "fit"), store.read_json(refs["evaluate"], "metrics"),
                           store.read_json(refs["evaluate"], "users"))
    export_file(store.path_of(refs["candidates"], "candidates"), out / "candidates.parquet")
    export_file(store.path_of(refs["train"], "history"), out / "history.parquet")
    write_json(out / "config.json", {"config": config.model_dump(mode="json"), "artifacts": refs,
                                     "store": str(store.root)})
    write_json(out / "metrics.json", doc)  # last: its presence means the folder is complete
    return doc
