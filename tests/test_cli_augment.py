"""`llmrec llm-server` and `llmrec augment` as a user runs them: two processes talking HTTP on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from llmsim.launch import start_llm_server
from tests.conftest import REPO, SMALL_USERS


@pytest.mark.slow
def test_cli_server_and_augment(small_movielens, tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "llm-server", "--port", "0"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line, deadline = "", time.monotonic() + 60
        while "listening on" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"no startup line from the server: {line!r}"
        out = tmp_path / "out"
        env = {**os.environ, "LLMREC_STORE": str(tmp_path / "store"), "OPENAI_API_KEY": "sk-cli-test-secret-0000"}
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "augment", "--base-url", f"{match.group(1)}/v1",
             "--model", "llmrec-heuristic", "--stages", "profiles,attributes", "--dataset", str(small_movielens),
             "--base-model", "mf", "--epochs", "2", "--rpm", "0", "--tpm", "0", "--out", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    profiles = pd.read_parquet(out / "user_profiles.parquet")
    attributes = pd.read_parquet(out / "item_attributes.parquet")
    items = pd.read_parquet(small_movielens / "items.parquet")
    assert sorted(profiles["user_id"]) == list(range(1, SMALL_USERS + 1))
    assert set(attributes["item_id"]) == set(items["item_id"])
    assert profiles["age"].between(5, 100).all() and profiles["gender"].isin(["male", "female"]).all()
    # The run's ledger rows: in the store's ledger (all runs) and beside the outputs (this run).
    assert list((tmp_path / "store" / "ledger").rglob("*.parquet"))
    assert len(pd.read_parquet(out / "ledger.parquet")) > 0
    # The API key is read from the environment and written nowhere.
    written = [p for p in [*out.rglob("*"), *(tmp_path / "store").rglob("*")] if p.is_file()]
    assert not [p for p in written if b"sk-cli-test-secret" in p.read_bytes()]
    assert "sk-cli-test-secret" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_failed_batches_end_in_one_line_without_a_traceback(small_movielens, tmp_path):
    """A batch-mode run whose every line the server refuses: the failed batches' task runs and the flow run fail,
    and the command says so in one `error:` line with exit code 2; no traceback reaches the console."""
    with start_llm_server(structured_outputs="json_object", batch_duration_s=0.2) as server:
        env = {**os.environ, "LLMREC_STORE": str(tmp_path / "store"), "OPENAI_API_KEY": "sk-local"}
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "augment", "--base-url", server.base_url, "--mode", "batch",
             "--model", "llmrec-heuristic", "--stages", "profiles", "--dataset", str(small_movielens),
             "--base-model", "mf", "--epochs", "2", "--rpm", "0", "--tpm", "0", "--out", str(tmp_path / "out")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "items failed" in errors[0], output[-3000:]
    assert "most often: no answer after 3 batches (last: HTTP 500: response_format json_schema is not supported" in (
        errors[0]), errors[0]  # the cause, in the one line
