"""The split, evaluation and item options shared by the commands keep one name and meaning on `llama4rec` and
`llm4idrec` too: each reaches the flow's config (the flow function is replaced by one that records its call)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import flows.cli as cli
import flows.llama4rec
import flows.llm4idrec

SHARED = ["--split-overlap", "drop", "--cold-users", "keep", "--max-train-per-user", "5"]


@pytest.fixture
def llama4rec_calls(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.llama4rec, "run_llama4rec", lambda **kw: calls.append(kw) or {"report": "# report"})
    return calls


@pytest.fixture
def llm4idrec_calls(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.llm4idrec, "llm4idrec_flow", lambda **kw: calls.append(kw) or {})
    return calls


def llama4rec(tmp_path, *args: str):
    return CliRunner().invoke(cli.app, ["llama4rec", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                        "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s"), *args])


def llm4idrec(tmp_path, *args: str):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    return CliRunner().invoke(cli.app, ["llm4idrec", "--base-model", str(model), "--out", str(tmp_path / "o"),
                                        "--store", str(tmp_path / "s"), *args])


def test_llama4rec_takes_the_shared_options(llama4rec_calls, tmp_path) -> None:
    items = tmp_path / "items.csv"
    res = llama4rec(tmp_path, "--items", str(items), *SHARED)
    assert res.exit_code == 0, res.output
    config = llama4rec_calls[-1]["config"]
    assert config.data.items_path == items
    assert (config.split.method, config.split.overlap, config.split.max_train_per_user) == ("loo", "drop", 5)
    assert config.eval.cold_users == "keep"

    res = llama4rec(tmp_path)  # the defaults: the paper's leave-one-out, shared pairs refused, cold users left out
    assert res.exit_code == 0, res.output
    config = llama4rec_calls[-1]["config"]
    assert (config.split.method, config.split.overlap, config.split.max_train_per_user) == ("loo", "error", None)
    assert (config.eval.cold_users, config.data.items_path) == ("exclude", None)

    res = llama4rec(tmp_path, "--split", "temporal")
    assert res.exit_code == 0 and llama4rec_calls[-1]["config"].split.method == "temporal"
    res = llama4rec(tmp_path, "--split-dir", str(tmp_path), "--split-overlap", "drop")
    assert res.exit_code == 0, res.output
    split = llama4rec_calls[-1]["config"].split
    assert (split.method, split.split_dir, split.overlap) == ("dir", tmp_path, "drop")


def test_llm4idrec_takes_the_shared_options(llm4idrec_calls, tmp_path) -> None:
    res = llm4idrec(tmp_path, "--split", "loo", *SHARED)
    assert res.exit_code == 0, res.output
    config = llm4idrec_calls[-1]["config"]
    assert (config.split.method, config.split.overlap, config.split.max_train_per_user) == ("loo", "drop", 5)
    assert config.eval.cold_users == "keep"

    res = llm4idrec(tmp_path)
    assert res.exit_code == 0, res.output
    config = llm4idrec_calls[-1]["config"]
    assert (config.split.method, config.split.overlap, config.eval.cold_users) == ("random", "error", "exclude")

    res = llm4idrec(tmp_path, "--split-dir", str(tmp_path), "--split-overlap", "drop")
    assert res.exit_code == 0, res.output
    assert llm4idrec_calls[-1]["config"].split.split_dir == tmp_path


@pytest.mark.parametrize("command", ["llama4rec", "llm4idrec"])
def test_split_and_split_dir_exclude_each_other(command, llama4rec_calls, llm4idrec_calls, tmp_path) -> None:
    res = (llama4rec if command == "llama4rec" else llm4idrec)(tmp_path, "--split", "loo", "--split-dir",
                                                               str(tmp_path))
    assert res.exit_code == 2 and "--split and --split-dir exclude each other" in res.stdout
    assert not llama4rec_calls and not llm4idrec_calls


def test_llm4idrec_has_no_items_option(tmp_path) -> None:
    """LLM4IDRec reads ids only: an item table would be silently unused, so the option is not offered."""
    res = llm4idrec(tmp_path, "--items", str(tmp_path / "items.csv"))
    assert res.exit_code == 2 and "No such option: --items" in res.output
