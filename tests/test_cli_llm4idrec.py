"""`llmrec llm4idrec` wiring: options reach the flow's config; a missing base model or a bad option is one line
and exit code 2."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

import flows.cli as cli
import flows.llm4idrec


def test_options_reach_the_flow_config(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []

    def fake(config, store_root, out_dir, **budget):
        calls.append({"config": config, "store": store_root, "out": out_dir, **budget})
        return {}

    monkeypatch.setattr(flows.llm4idrec, "llm4idrec_flow", fake)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    res = CliRunner().invoke(cli.app, ["llm4idrec", "--base-model", str(model), "--sample-users", "30", "--steps",
                                       "50", "--samples", "both", "--max-base-rank", "100", "--seeds", "3",
                                       "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    (call,) = calls
    cfg = call["config"].llm4idrec
    assert (cfg.base_model, cfg.sample_users, cfg.max_steps, cfg.samples, cfg.max_base_rank) == (
        str(model), 30, 50, "both", 100)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lr, cfg.batch_size * cfg.grad_accumulation) == (8, 32, 1e-3, 32)
    assert call["config"].seeds == (2020, 2021, 2022) and call["out"] == str(tmp_path / "o")


def test_missing_base_model_is_one_line_and_exit_2(tmp_path) -> None:
    res = CliRunner().invoke(cli.app, ["llm4idrec", "--base-model", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: base model not found: {tmp_path / 'none.gguf'}"]


def test_hosted_options_and_budget(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.llm4idrec, "llm4idrec_flow", lambda **kw: calls.append(kw) or {"cost_usd": 0.25})
    args = ["llm4idrec", "--backend", "hosted", "--base-model", "gpt-4o-mini-2024-07-18", "--base-url",
            "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s")]
    res = CliRunner().invoke(cli.app, args)  # a priced model and no budget: refused before any work
    assert res.exit_code == 2 and not calls
    assert res.output.strip().startswith("error: model 'gpt-4o-mini-2024-07-18' costs $0.15 / $0.6 per 1M")
    res = CliRunner().invoke(cli.app, [*args, "--max-cost-usd", "2.5"])
    assert res.exit_code == 0, res.output
    (call,) = calls
    cfg = call["config"]
    assert (cfg.llm4idrec.backend, cfg.llm4idrec.base_model, cfg.endpoint.base_url) == (
        "hosted", "gpt-4o-mini-2024-07-18", "http://127.0.0.1:9/v1")
    assert call["max_cost_usd"] == 2.5 and not call["allow_unbounded_spend"]
    assert "this run spent $0.250000" in res.output
