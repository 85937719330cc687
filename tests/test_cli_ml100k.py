"""`llmrec base` end to end on real MovieLens 100K with the shared reference split, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_llmrec_base_on_reference_split(ml100k_dir, reference_split_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "LLMREC_DATA_DIR": str(ml100k_dir.parent), "LLMREC_STORE": str(tmp_path / "store")}
    cmd = [sys.executable, "-m", "flows.cli", "base", "--model", "mf", "--epochs", "3",
           "--split-dir", str(reference_split_dir), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recall@20" in proc.stdout  # the metrics table
    assert f"split from {reference_split_dir}; its users and items are those of dataset ml-100k" in " ".join(
        proc.stderr.split())

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["model"] == "mf" and 1 <= doc["best_epoch"] <= 3
    assert set(doc["test"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@20"}
    assert doc["test"]["recall@20"] > 0.05  # far above random (20/1682 items ~ 0.012) after 3 epochs

    cands = pd.read_parquet(out / "candidates.parquet")
    assert cands["user_id"].nunique() == 943 and len(cands) == 943 * 10
    train = pd.read_parquet(reference_split_dir / "train.parquet")
    leaked = cands.merge(train, on=["user_id", "item_id"])
    assert leaked.empty, "a training item was proposed as a candidate"
    assert cands["item_id"].between(1, 1682).all()


def test_bad_dataset_path_gives_one_clear_error(tmp_path):
    env = {**os.environ, "LLMREC_STORE": str(tmp_path / "store")}
    missing = tmp_path / "nope.csv"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "base", "--dataset", str(missing), "--out",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    # stdout holds one clear line; stderr holds Prefect's log of the failed task run.
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("error:") and str(missing) in proc.stdout and "Traceback" not in proc.stdout
    assert not (tmp_path / "out" / "metrics.json").exists()
