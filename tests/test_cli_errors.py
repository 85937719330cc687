"""The command line on a busy machine: Prefect's API out of reach is one line with exit code 2 that says what to do,
an expected failure shows its traceback only with --debug, and Prefect's defaults for the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

import flows.base  # noqa: F401  Prefect binds its console log to sys.stderr on import: before CliRunner swaps it
import flows.cli as cli
from recsys.data.errors import DataError
from tests.conftest import REPO


def toy_dataset(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(1, 4) for i in range(1, 3)))
    return path


def test_temporary_server_too_slow_says_how_to_wait_longer_or_use_a_server(tmp_path):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0",
           "PREFECT_HOME": str(tmp_path / "prefect"), "LLMREC_STORE": str(tmp_path / "store")}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "base", "--dataset", str(toy_dataset(tmp_path))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith("error: the temporary Prefect server did not answer within 0 s")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in line and "prefect server start" in line
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unreachable_prefect_server_is_one_line(tmp_path):
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        res = CliRunner().invoke(cli.app, ["base", "--dataset", str(toy_dataset(tmp_path)), "--store",
                                           str(tmp_path / "store")])
    assert res.exit_code == 2
    (line,) = res.stdout.strip().splitlines()
    assert line.startswith("error: Failed to reach API at http://127.0.0.1:9/api")
    assert "no Prefect server answers at PREFECT_API_URL" in line and "prefect server" in line


def test_debug_shows_the_traceback_of_an_expected_failure(tmp_path):
    args = ["base", "--dataset", str(toy_dataset(tmp_path)), "--store", str(tmp_path / "store")]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 2 and "2 interactions each" in res.stdout and res.exception.__class__ is SystemExit
    res = CliRunner().invoke(cli.app, ["--debug", *args])
    assert res.exit_code == 1 and isinstance(res.exception, DataError)


def test_split_and_split_dir_exclude_each_other(tmp_path):
    res = CliRunner().invoke(cli.app, ["base", "--split", "loo", "--split-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--split and --split-dir exclude each other" in res.stdout


@pytest.mark.parametrize("name", sorted(cli.PREFECT_DEFAULTS))
def test_prefect_defaults_apply_unless_set(monkeypatch, tmp_path, name):
    monkeypatch.delenv(name, raising=False)
    CliRunner().invoke(cli.app, ["cost", "--ledger", str(tmp_path)])
    assert os.environ[name] == cli.PREFECT_DEFAULTS[name]
    monkeypatch.setenv(name, "7")
    CliRunner().invoke(cli.app, ["cost", "--ledger", str(tmp_path)])
    assert os.environ[name] == "7"
