"""The cost ledger: round trip, partitions, concurrency, and rows surviving a SIGKILL mid-batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from recsys.costs import totals
from storage.ledger import COLUMNS, LedgerWriter, read_ledger

REPO = Path(__file__).resolve().parents[1]


def _row(i: int, **kw: object) -> dict[str, object]:
    base = {"timestamp": 1_700_000_000.0 + i, "stage": "edges", "batch": str(i % 3), "model": "gpt-4o-mini",
            "prompt_tokens": 100 + i, "completion_tokens": 10, "cached": False, "latency_s": 0.5, "attempt": 1,
            "retries": 0, "outcome": "ok", "cost_usd": 2.1e-5}
    return {**base, **kw}


def test_round_trip_compacts_to_parquet(tmp_path: Path) -> None:
    with LedgerWriter(tmp_path, "run-a", "edges-batch-0") as writer:
        for i in range(5):
            writer.append(_row(i, tags={"stage": "edges"}))
        writer.append(_row(5, cached=True, attempt=0, cost_usd=0.0))
        writer.append(_row(6, outcome="http_500", cost_usd=None))
        assert writer.jsonl_path.exists()
    folder = tmp_path / "flow_run_id=run-a"
    assert [p.suffix for p in folder.iterdir()] == [".parquet"]  # the JSON lines are gone
    frame = read_ledger(tmp_path)
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS and len(frame) == 7
    assert (frame["flow_run_id"] == "run-a").all()
    assert frame["prompt_tokens"].tolist() == [100 + i for i in range(7)]
    assert frame["cached"].dtype == bool and frame["cached"].sum() == 1
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame.loc[0, "timestamp"] == pd.Timestamp(datetime.fromtimestamp(1_700_000_000, UTC))
    assert json.loads(frame.loc[0, "tags"]) == {"stage": "edges"}
    assert pd.isna(frame.loc[6, "cost_usd"])
    summary = totals(frame)
    assert summary["calls"] == 6 and summary["cache_hits"] == 1 and summary["failed_calls"] == 1
    assert summary["cost_usd"] == pytest.approx(5 * 2.1e-5)


def test_partitions_filters_and_open_writers(tmp_path: Path) -> None:
    with LedgerWriter(tmp_path, "run-a", "w") as a:
        a.append(_row(0))
    with LedgerWriter(tmp_path, "run-b", "w") as b:
        b.append(_row(10))
        b.append(_row(20))
    open_writer = LedgerWriter(tmp_path, "run-b", "w")  # same name: a separate file
    open_writer.append(_row(30))
    assert len(read_ledger(tmp_path)) == 4  # the open writer's JSON lines are read too
    assert len(read_ledger(tmp_path, flow_run_id="run-b")) == 3
    since = datetime.fromtimestamp(1_700_000_000 + 15, UTC)
    assert read_ledger(tmp_path, since=since)["prompt_tokens"].tolist() == [120, 130]
    assert len(read_ledger(tmp_path, since=since.isoformat())) == 2
    assert len(read_ledger(tmp_path, since=1_700_000_000 + 25)) == 1
    assert len(read_ledger(tmp_path, since=since + timedelta(days=1))) == 0
    open_writer.close()
    open_writer.close()  # idempotent
    assert len(read_ledger(tmp_path)) == 4


def test_empty_ledger_and_empty_writer(tmp_path: Path) -> None:
    assert read_ledger(tmp_path / "missing").empty
    assert list(read_ledger(tmp_path).columns) == COLUMNS
    with LedgerWriter(tmp_path, "run-a", "nothing") as writer:
        pass
    assert writer.close() is None and not list((tmp_path / "flow_run_id=run-a").iterdir())


def test_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LedgerWriter(tmp_path, "../escape", "w")
    with pytest.raises(ValueError):
        LedgerWriter(tmp_path, "run", "a/b")


def test_concurrent_appends(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path, "run-a", "threads")

    def work(t: int) -> None:
        for i in range(200):
            writer.append(_row(i, batch=f"t{t}", error="x" * 300))  # long lines: interleaving would tear them

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = writer.jsonl_path.read_text().splitlines()
    assert len(lines) == 1600 and all(json.loads(line)["error"] == "x" * 300 for line in lines)
    writer.close()
    frame = read_ledger(tmp_path)
    assert len(frame) == 1600 and frame.groupby("batch").size().eq(200).all()


_CHILD = textwrap.dedent(
    """
    import sys
    from storage.ledger import LedgerWriter
    writer = LedgerWriter(sys.argv[1], "run-crash", "edges")
    i = 0
    while True:
        writer.append({"timestamp": 1.7e9 + i, "stage": "edges", "batch": str(i), "model": "m",
                       "prompt_tokens": i, "completion_tokens": 1, "cached": False, "latency_s": 0.1,
                       "attempt": 1, "retries": 0, "outcome": "ok", "cost_usd": 0.0})
        print(i, flush=True)  # reported only after append() returned
        i += 1
    """
)


def test_rows_survive_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    last = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            last = int(line)
            if last >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-batch: no close(), no compaction
        proc.wait(timeout=10)
    assert last >= 300, "the writer process died before writing"
    assert list((tmp_path / "flow_run_id=run-crash").glob("*.jsonl"))
    frame = read_ledger(tmp_path)
    seen = set(frame["prompt_tokens"].tolist())
    assert set(range(last + 1)) <= seen  # every row the writer had reported is there
    assert len(seen) == len(frame)  # and none twice


def test_torn_line_and_interrupted_compaction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "flow_run_id=run-a"
    with LedgerWriter(tmp_path, "run-a", "done") as writer:
        writer.append(_row(0))
    part = next(folder.glob("*.parquet"))
    # A crash after the Parquet rename but before the delete leaves both: the rows must count once.
    part.with_suffix(".jsonl").write_text(json.dumps({**_row(0), "flow_run_id": "run-a"}) + "\n")
    # A crash in the middle of a write leaves a torn last line.
    torn = folder / "crashed-1-abc.jsonl"
    torn.write_text(json.dumps({**_row(1), "flow_run_id": "run-a"}) + "\n" + '{"timestamp": "2024-01-01T00:')
    frame = read_ledger(tmp_path)
    assert frame["prompt_tokens"].tolist() == [100, 101]
    assert "torn" in caplog.text


def test_storage_does_not_import_recsys() -> None:
    code = "import sys, storage.ledger; sys.exit(any(m.split('.')[0] in {'recsys', 'prefect'} for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
