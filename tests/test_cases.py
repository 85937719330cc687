"""The failing cases of ../shared/cases (CASES.md), each run through `llmrec` as a user runs it, reading the case's
files where they lie: the expected message or value, then the option that makes the case run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import flows.base  # noqa: F401  Prefect binds its console log to sys.stderr on import: before CliRunner swaps it
import flows.cli as cli
from tests.conftest import REPO, data_dir, shared_dir

CASES = shared_dir() / "cases"


@pytest.fixture(scope="module")
def cases() -> Path:
    if not (CASES / "CASES.md").is_file():
        pytest.skip(f"the shared cases are not at {CASES}")
    return CASES


def llmrec(tmp_path: Path, *args: str):
    """`llmrec ARGS --store <tmp>` in this process (its Prefect server is the test session's)."""
    return CliRunner().invoke(cli.app, [*args, "--store", str(tmp_path / "store")],
                              env={"LLMREC_DATA_DIR": str(data_dir())})


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.slow
def test_sparse_users_name_the_file_the_count_and_the_split_that_fits(cases, tmp_path):
    """As a user runs it: its own process, a fresh Prefect home, none of the test session's Prefect settings."""
    data = cases / "sparse-users" / "interactions.csv"
    env = {k: v for k, v in os.environ.items() if k not in cli.PREFECT_DEFAULTS}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), LLMREC_STORE=str(tmp_path / "store"))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "base", "--dataset", str(data), "--out",
                           str(tmp_path / "a")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc.stdout)
    assert str(data) in line and "3 of 3 users have fewer than 10 interactions" in line
    assert "--split loo" in line and "3 of 3 users have the 3 interactions it needs" in line
    # Prefect's log: no traceback, and no telemetry it cannot send (off by default)
    assert "Traceback" not in proc.stderr and "telemetry" not in proc.stderr.lower(), proc.stderr

    res = llmrec(tmp_path, "base", "--dataset", str(data), "--split", "loo", "--epochs", "2", "--device", "cpu",
                 "--out", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert doc["users"]["valid"]["evaluated"] == doc["users"]["test"]["evaluated"] == 3


def test_cold_user_in_test_is_named_and_left_out_of_the_metrics(cases, tmp_path, caplog, ml100k_dir):
    split = cases / "cold-user-in-test" / "split"
    with caplog.at_level(logging.WARNING):
        res = llmrec(tmp_path, "base", "--split-dir", str(split), "--epochs", "2", "--device", "cpu", "--out",
                     str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    warning = next(r.getMessage() for r in caplog.records if "cold users" in r.getMessage())
    assert "1 of 16 user(s) in test" in warning and "e.g. user 99" in warning and str(split / "test.csv") in warning
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert doc["users"]["test"] == {"evaluated": 15, "cold": 1, "cold_excluded": 1}
    assert doc["users"]["valid"] == {"evaluated": 15, "cold": 0, "cold_excluded": 0}

    res = llmrec(tmp_path, "base", "--split-dir", str(split), "--cold-users", "keep", "--epochs", "2", "--device",
                 "cpu", "--out", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    kept = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert kept["users"]["test"] == {"evaluated": 16, "cold": 1, "cold_excluded": 0}
    assert kept["valid"] == doc["valid"]  # the same model: only who is counted on test differs
    assert kept["test"] != doc["test"]


def test_valid_equal_to_test_is_refused_naming_both_files(cases, tmp_path):
    split = cases / "valid-equals-test" / "split"
    res = llmrec(tmp_path, "base", "--split-dir", str(split), "--epochs", "2", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    line = one_error_line(res.stdout)
    assert str(split / "valid.csv") in line and str(split / "test.csv") in line and "share 15" in line
    assert "--split-overlap drop" in line
    assert not (tmp_path / "a" / "metrics.json").exists()  # never a silent 0.0

    # Dropping the shared pairs from the later part leaves test empty: refused as well, naming test.csv.
    res = llmrec(tmp_path, "base", "--split-dir", str(split), "--split-overlap", "drop", "--epochs", "2", "--out",
                 str(tmp_path / "b"))
    assert res.exit_code == 2
    line = one_error_line(res.stdout)
    assert "the test split has no pairs" in line and str(split / "test.csv") in line


def refused_without_item_text(tmp_path: Path, folder: Path, args: list[str], llm_server) -> list[int]:
    """`llmrec ARGS` on the case's interactions alone: one line, exit code 2, no request. Returns the item ids."""
    llm_server.reset()
    res = llmrec(tmp_path, *args, "--out", str(tmp_path / "a"))
    assert res.exit_code == 2, res.output
    line = one_error_line(res.stdout)
    assert "24 of 24 items" in line and "have no text" in line and "--items FILE" in line and str(folder) in line
    assert llm_server.stats()["requests"] == 0
    return sorted(int(i) for i in pd.read_csv(folder / "interactions.csv")["item_id"].unique())


def titles(path: Path, ids: list[int]) -> Path:
    """An item table at `path` with a title for each of `ids`."""
    pd.DataFrame({"item_id": ids, "title": [f"Film {i} (1999)" for i in ids]}).to_csv(path, index=False)
    return path


def test_items_without_text_stop_before_the_first_llm_call(cases, tmp_path, llm_server):
    folder = cases / "items-without-text"
    args = ["augment", "--dataset", str(folder), "--base-url", llm_server.base_url, "--model", "llmrec-heuristic",
            "--stages", "attributes", "--rpm", "0", "--tpm", "0", "--base-model", "mf", "--epochs", "2"]
    ids = refused_without_item_text(tmp_path, folder, args, llm_server)

    # An item table with titles for 20 of the 24 items: the 4 others go to augment_failures, never to the model.
    table = titles(tmp_path / "items.csv", ids[:20])
    res = llmrec(tmp_path, *args, "--items", str(table), "--out", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    assert "not asked (no text, too few candidates): 4" in " ".join(res.stdout.split())
    failures = pd.read_parquet(tmp_path / "b" / "augment_failures.parquet")
    assert set(failures["key"]) == set(ids[20:]) and set(failures["stage"]) == {"attributes"}
    assert failures["reason"].str.startswith("not asked: no item text").all() and (failures["asks"] == 0).all()
    attributes = pd.read_parquet(tmp_path / "b" / "item_attributes.parquet")
    assert set(attributes["item_id"]) == set(ids[:20])


def test_items_without_text_stop_llama4rec_before_the_first_llm_call(cases, tmp_path, llm_server):
    """Llama4Rec's ranking prompt shows every item of a list: no title for some items is refused as well as for
    all; with a title for each, the run goes through."""
    folder = cases / "items-without-text"
    args = ["llama4rec", "--dataset", str(folder), "--base-url", llm_server.base_url, "--model", "llmrec-heuristic",
            "--backbone", "mf", "--epochs", "2", "--device", "cpu", "--pairs-per-user", "1"]
    ids = refused_without_item_text(tmp_path, folder, args, llm_server)

    table = titles(tmp_path / "items.csv", ids[:20])
    res = llmrec(tmp_path, *args, "--items", str(table), "--out", str(tmp_path / "b"))
    assert res.exit_code == 2, res.output
    line = one_error_line(res.stdout)
    assert "4 of 24 items" in line and f"e.g. item {ids[20]}" in line and "--items FILE" in line
    assert llm_server.stats()["requests"] == 0 and not (tmp_path / "b").exists()

    res = llmrec(tmp_path, *args, "--items", str(titles(table, ids)), "--out", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    assert llm_server.stats()["requests"] > 0 and (tmp_path / "c" / "report.md").is_file()
