"""`llmrec cost`: ledger rows written by the real LedgerWriter, grouped, totalled, filtered and plotted."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from recsys.costs import cost_by, cumulative_spend, parse_since, spend_plot_png
from storage.ledger import LedgerWriter, read_ledger

DAY1 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def write_runs(ledger: Path) -> None:
    """Two flow runs on two days: paid calls, a failed attempt, cache hits, an embedding call, an unpriced call."""
    rows = {
        "run-1": [("edges", "gpt-4o-mini", 100, 20, False, "ok", 0.003, 0),
                  ("edges", "gpt-4o-mini", 0, 0, False, "http_500", 0.0, 1),
                  ("profiles", "gpt-4o-mini", 80, 40, False, "ok", 0.002, 2),
                  ("profiles", "gpt-4o-mini", 80, 40, True, "ok", 0.0, 3)],
        "run-2": [("attributes", "gpt-4o", 300, 90, False, "ok", 0.011, 0),
                  ("embed", "text-embedding-3-small", 500, 0, False, "ok", 0.00001, 1),
                  ("attributes", "my-local-model", 50, 10, False, "ok", None, 2)],
    }
    for run, day in (("run-1", DAY1), ("run-2", DAY2)):
        with LedgerWriter(ledger, run, "w", flow_run_name=f"{run}-name" if run == "run-1" else None) as writer:
            for stage, model, pt, ct, cached, outcome, usd, minute in rows[run]:
                writer.append({"timestamp": day + timedelta(minutes=minute), "stage": stage, "batch": "0",
                               "model": model, "prompt_tokens": pt, "completion_tokens": ct, "cached": cached,
                               "latency_s": 0.1, "attempt": 0 if cached else 1, "outcome": outcome,
                               "cost_usd": usd})


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    write_runs(tmp_path / "store" / "ledger")
    return tmp_path / "store"


def test_groups_and_total_agree_with_the_rows(store: Path) -> None:
    rows = read_ledger(store / "ledger")
    for by, column in (("stage", "stage"), ("model", "model"), ("flow-run", "flow_run_id")):
        table = cost_by(rows, by).set_index("group")
        assert list(table.index[:-1]) == sorted(rows[column].unique()) and table.index[-1] == "total"
        http = rows[~rows["cached"]]
        for name, part in http.groupby(column):
            assert table.loc[name, "calls"] == len(part)
            assert table.loc[name, "cost_usd"] == pytest.approx(part["cost_usd"].fillna(0).sum())
        assert table.loc["total", "calls"] == len(http) == table["calls"].iloc[:-1].sum()
        assert table.loc["total", "cache_hits"] == int(rows["cached"].sum()) == 1
        assert table.loc["total", "failed_calls"] == 1 and table.loc["total", "unpriced"] == 1
        assert table.loc["total", "prompt_tokens"] == http["prompt_tokens"].sum()
    by_day = cost_by(rows, "day").set_index("group")
    assert list(by_day.index) == ["2026-03-01", "2026-03-02", "total"]
    assert by_day.loc["2026-03-02", "cost_usd"] == pytest.approx(0.011 + 0.00001)


def test_cumulative_spend_per_stage(store: Path) -> None:
    spend = cumulative_spend(read_ledger(store / "ledger"))
    last = spend.groupby("stage")["cumulative_usd"].last()
    assert last["edges"] == pytest.approx(0.003) and last["attributes"] == pytest.approx(0.011)
    assert spend.groupby("stage")["cumulative_usd"].apply(lambda s: s.is_monotonic_increasing).all()


def test_since_parsing() -> None:
    assert parse_since("2026-03-02") == pd.Timestamp("2026-03-02T00:00:00Z")
    assert parse_since("2026-03-02T10:30:00+02:00") == pd.Timestamp("2026-03-02T08:30:00Z")
    with pytest.raises(ValueError, match=r"--since: 'last week' is not a date; use YYYY-MM-DD"):
        parse_since("last week")
    with pytest.raises(ValueError, match="unknown grouping 'week'"):
        cost_by(pd.DataFrame(), "week")


def test_cli_table_since_and_plot(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["cost", "--store", str(store), "--by", "flow-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    total = next(line for line in lines if "total" in line)
    assert "0.016010" in total  # 0.003 + 0.002 + 0.011 + 0.00001; the unpriced call adds nothing
    assert any("run-1" in line and "run-1-name" in line for line in lines)  # the run's name beside its id
    assert any("run-2" in line for line in lines)  # rows written without a name: the id alone
    assert "unpriced" in result.output
    assert list(cost_by(read_ledger(store / "ledger"), "flow-run")["name"]) == ["run-1-name", "", ""]

    later = runner.invoke(app, ["cost", "--ledger", str(store / "ledger"), "--since", "2026-03-02", "--by", "stage"])
    assert later.exit_code == 0, later.output
    assert "edges" not in later.output and "attributes" in later.output

    plot = tmp_path / "plots" / "spend.png"
    drawn = runner.invoke(app, ["cost", "--store", str(store), "--plot", str(plot)])
    assert drawn.exit_code == 0, drawn.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(plot.read_bytes()) > 10_000
    assert [p.name for p in plot.parent.iterdir()] == ["spend.png"]  # written atomically: no temporary left


def test_cli_errors_name_the_problem(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["--store", str(tmp_path / "nowhere")], f"no cost ledger at {tmp_path / 'nowhere' / 'ledger'}"),
        (["--ledger", str(tmp_path)], "holds no flow_run_id=* partition"),
        (["--store", str(store), "--since", "tomorrow"], "'tomorrow' is not a date"),
        (["--store", str(store), "--since", "2030-01-01"], "no ledger rows since 2030-01-01 in"),
        (["--store", str(store), "--by", "week"], "'week' is not one of"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["cost", *args], terminal_width=300)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def test_plot_of_no_paid_rows_says_so(tmp_path: Path) -> None:
    """A free model's ledger is drawn as the words "no paid calls", not as flat lines on a ±0.04 axis."""
    assert spend_plot_png(read_ledger(Path("/nonexistent")))[:4] == b"\x89PNG"
    with LedgerWriter(tmp_path / "ledger", "free-run", "w") as writer:
        for minute in range(3):
            writer.append({"timestamp": DAY1 + timedelta(minutes=minute), "stage": "profiles", "batch": "0",
                           "model": "llmrec-heuristic", "prompt_tokens": 90, "completion_tokens": 30,
                           "cached": False, "attempt": 1, "outcome": "ok", "cost_usd": 0.0})
    plot = tmp_path / "free.png"
    result = CliRunner().invoke(app, ["cost", "--ledger", str(tmp_path / "ledger"), "--plot", str(plot)],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "no paid calls: 3 calls, all to free models: llmrec-heuristic" in " ".join(result.output.split())
    free = plt.imread(plot)  # the words alone on white: no axes, no lines
    paid = plt.imread(io.BytesIO(spend_plot_png(read_ledger(Path(str(tmp_path / "ledger"))).assign(cost_usd=0.5))))
    ink = (free[..., :3] < 0.5).all(axis=-1).mean()
    assert 0 < ink < (paid[..., :3] < 0.5).all(axis=-1).mean()
