"""`llmrec run` wiring: with no --base-url it starts the local LLM server, says so, hands its URL to the flow and
stops it afterwards; with a URL it starts nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import flows.cli as cli
import flows.run
import flows.tune
from recsys.ablations import VARIANTS
from recsys.config import LLMConfig, RunConfig


def test_local_llm_server_starts_answers_and_stops() -> None:
    with cli.local_llm_server() as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/models", timeout=2)


def fake_flow(calls: list[dict[str, Any]]):
    def run_flow(config: RunConfig, store_root: str | None, out_dir: str, base_url: str | None,
                 variants: list[str], max_cost_usd: float | None, allow_unbounded_spend: bool) -> dict:
        alive = httpx.get(f"{base_url}/models", timeout=10).status_code if "127.0.0.1" in str(base_url) else None
        calls.append({"config": config, "base_url": base_url, "out": out_dir, "alive": alive, "variants": variants,
                      "store": store_root, "budget": (max_cost_usd, allow_unbounded_spend)})
        return {"report": "# fake report"}
    return run_flow


def test_run_without_url_starts_and_stops_the_local_server(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.run, "run_flow", fake_flow(calls))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    res = CliRunner().invoke(cli.app, ["run", "--seeds", "3", "--epochs", "5", "--out", str(tmp_path / "o"),
                                       "--store", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "starting the local LLM server" in res.output and "fake report" in res.output
    (call,) = calls
    cfg: RunConfig = call["config"]
    assert call["alive"] == 200 and cfg.llm.model == "llmrec-heuristic"
    assert cfg.seeds == (2020, 2021, 2022) and cfg.train.max_epochs == 5
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{call['base_url']}/models", timeout=2)  # stopped at the end


def test_run_with_url_starts_nothing(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.run, "run_flow", fake_flow(calls))
    started = []
    monkeypatch.setattr(cli, "local_llm_server", lambda: started.append(1))
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMREC_STORE", str(tmp_path / "store"))
    args = ["run", "--base-url", "http://example.invalid/v1", "--out", str(tmp_path / "o")]
    refused = CliRunner().invoke(cli.app, args)  # gpt-4o-mini is priced: no budget, no run
    assert refused.exit_code == 2 and "no budget: set max_cost_usd (`--max-cost-usd`)" in refused.output
    assert not calls and len(refused.output.strip().splitlines()) <= 3  # one message, no traceback
    res = CliRunner().invoke(cli.app, [*args, "--max-cost-usd", "2.5"])
    assert res.exit_code == 0, res.output
    assert calls[0]["budget"] == (2.5, False)
    assert calls[0]["config"].data.data_dir == tmp_path / "data" and calls[0]["store"] == str(tmp_path / "store")
    assert not started and "local LLM server" not in res.output
    assert calls[0]["base_url"] == "http://example.invalid/v1" and calls[0]["config"].llm.model == LLMConfig().model
    assert calls[0]["variants"] == ["llmrec"]


def test_ablate_trains_every_variant_by_default_and_checks_names(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.run, "run_flow", fake_flow(calls))
    url = ["--base-url", "http://example.invalid/v1", "--out", str(tmp_path / "o"), "--allow-unbounded-spend"]
    res = CliRunner().invoke(cli.app, ["ablate", "--seeds", "2", *url])
    assert res.exit_code == 0, res.output
    assert calls[0]["variants"] == list(VARIANTS) and calls[0]["config"].seeds == (2020, 2021)
    res = CliRunner().invoke(cli.app, ["ablate", "--variants", "w/o-u, llmrec", *url])
    assert res.exit_code == 0, res.output
    assert calls[1]["variants"] == ["w/o-u", "llmrec"] and calls[1]["budget"] == (None, True)
    res = CliRunner().invoke(cli.app, ["run", "--variants", "llmrec,w/o-everything", *url])
    assert res.exit_code == 2 and "w/o-everything" in res.output and "w/o-u&i" in res.output
    assert len(calls) == 2  # a bad name stops before any flow runs


def test_run_config_file_and_tune(monkeypatch, tmp_path) -> None:
    """`run --config` trains the file's configuration (--seeds may change it, options that set one may not);
    `tune` is `run` with trials, into runs/tune by default."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.run, "run_flow", fake_flow(calls))
    chosen = RunConfig(llm=LLMConfig(model="some-model"), seeds=(7,))
    path = tmp_path / "best_config.json"
    path.write_text('{"config": ' + chosen.model_dump_json() + "}")
    url = ["--base-url", "http://example.invalid/v1", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli.app, ["run", "--config", str(path), *url])
    assert res.exit_code == 0, res.output
    assert calls[0]["config"].llm.model == "some-model" and calls[0]["config"].seeds == (7,)
    res = CliRunner().invoke(cli.app, ["run", "--config", str(path), "--seeds", "2", *url])
    assert res.exit_code == 0 and calls[1]["config"].seeds == (2020, 2021)
    res = CliRunner().invoke(cli.app, ["run", "--config", str(path), "--dataset", "x", "--epochs", "3", *url])
    assert res.exit_code == 2 and "do not combine it with --dataset, --epochs" in res.output
    path.write_text('{"config": {"seeds": "many"}}')
    res = CliRunner().invoke(cli.app, ["run", "--config", str(path), *url])
    assert res.exit_code == 2 and "is not a run configuration" in res.output
    assert len(calls) == 2

    tuned: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.tune, "tune_flow", lambda **kw: tuned.append(kw) or {"report": "# tuned"})
    res = CliRunner().invoke(cli.app, ["tune", "--base-url", "http://example.invalid/v1", "--max-train-per-user",
                                       "5", "--trial-timeout", "60", "--max-cost-usd", "3"])
    assert res.exit_code == 0, res.output
    (call,) = tuned
    assert call["max_cost_usd"] == 3.0 and call["allow_unbounded_spend"] is False
    assert call["tune"].trials == 20 and call["tune"].trial_timeout_s == 60 and call["out_dir"] == "runs/tune"
    assert call["config"].split.max_train_per_user == 5 and len(call["config"].seeds) == 5
