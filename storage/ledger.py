"""The cost ledger: one row per LLM HTTP attempt or cache hit, partitioned by flow run.

Layout: `<root>/flow_run_id=<id>/<name>-<unique>.jsonl` while a writer is open, `<same stem>.parquet` after it
closed. Rows are plain dicts (this layer knows nothing of LLM clients).

Crash safety: each row is appended to the writer's own JSON-lines file and flushed at once, so a process killed
with SIGKILL loses no row it had appended (the OS holds the written bytes). `close()` compacts the file into a
Parquet part, written under a temporary name and renamed, and only then deletes the JSON lines. A reader unions
Parquet parts and left-over JSON lines, skipping a JSON-lines file whose Parquet part already exists (a crash
between the rename and the delete) and a torn last line (a crash in the middle of a write).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from storage.atomic import atomic_path

log = logging.getLogger(__name__)

PARTITION = "flow_run_id"
STORE_LEDGER_DIR = "ledger"  # <store>/ledger: the one ledger every run writes to and `llmrec cost` reads
COLUMNS = [
    "timestamp", "flow_run_id", "stage", "batch", "model", "prompt_tokens", "completion_tokens", "cached",
    "latency_s", "attempt", "retries", "outcome", "cost_usd", "mode", "flow_run_name",
]
_INT_COLUMNS = ["prompt_tokens", "completion_tokens", "attempt", "retries"]
_FLOAT_COLUMNS = ["latency_s", "cost_usd"]
_STR_COLUMNS = ["flow_run_id", "stage", "batch", "model", "outcome", "mode", "flow_run_name"]
DEFAULT_MODE = "normal"  # rows written before the Batch API mode existed were normal requests
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check(name: str, what: str) -> str:
    name = str(name)
    if not _SAFE.match(name):
        raise ValueError(f"bad ledger {what} {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _iso(value: Any) -> str:
    """A timestamp as ISO 8601 UTC: from Unix seconds, a datetime, or a string (kept)."""
    if value is None:
        return datetime.now(UTC).isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    """JSON-safe values; nested dicts (e.g. tags) become JSON strings so Parquet parts stay flat."""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class LedgerWriter:
    """Appends ledger rows for one flow run; thread-safe; use as a context manager or call `close()`.

    `name` tells writers apart (e.g. the task run); a random suffix keeps two writers with the same name apart.
    `flow_run_name` (the run's readable name, for `llmrec cost --by flow-run`) is written into every row."""

    def __init__(self, root: str | Path, flow_run_id: str, name: str, *, flow_run_name: str | None = None,
                 fsync: bool = False) -> None:
        self.flow_run_id = _check(flow_run_id, "flow_run_id")
        self.flow_run_name = flow_run_name
        self.folder = Path(root) / f"{PARTITION}={self.flow_run_id}"
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{_check(name, 'writer name')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.jsonl_path = self.folder / f"{stem}.jsonl"
        self.parquet_path = self.folder / f"{stem}.parquet"
        self._fsync = fsync  # survive power loss too, at a cost per row; a killed process needs only the flush
        self._lock = threading.Lock()
        self._file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the writer's life)
        self.rows_written = 0

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (a dict of plain values) and flush it to the OS before returning."""
        record = {str(k): _plain(v) for k, v in row.items()}
        record["timestamp"] = _iso(row.get("timestamp"))
        record[PARTITION] = self.flow_run_id
        if self.flow_run_name is not None:
            record["flow_run_name"] = self.flow_run_name
        line = json.dumps(record, default=str, allow_nan=True) + "\n"
        with self._lock:
            if self._file.closed:
                raise ValueError("ledger writer is closed")
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self.rows_written += 1

    def close(self) -> Path | None:
        """Compact the rows into a Parquet part (atomically) and remove the JSON lines; returns the part's path
        (None when no row was written). Idempotent."""
        with self._lock:
            if self._file.closed:
                return self.parquet_path if self.parquet_path.exists() else None
            self._file.close()
            rows = _read_jsonl(self.jsonl_path)
            if rows:
                frame = _normalise(pd.DataFrame(rows))
                with atomic_path(self.parquet_path) as tmp:
                    frame.to_parquet(tmp, index=False)
            self.jsonl_path.unlink(missing_ok=True)
            return self.parquet_path if rows else None

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a JSON-lines file; an unreadable line (torn by a crash) is skipped with a warning."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:  # compacted by its writer while we listed the folder
        return rows
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("ledger %s: skipping unreadable line %d (torn write)", path, n)
    return rows


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Every standard column present, in order, with stable dtypes; extra columns kept after them."""
    frame = frame.copy()
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    # Rows from other writers may carry Unix seconds or datetimes: make every value an ISO string first.
    stamps = frame["timestamp"].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else _iso(v))
    frame["timestamp"] = pd.to_datetime(stamps, utc=True, format="ISO8601")
    for col in _INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in _FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["mode"] = frame["mode"].fillna(DEFAULT_MODE)
    for col in _STR_COLUMNS:
        frame[col] = frame[col].astype("string")
    frame["cached"] = frame["cached"].astype("boolean").fillna(False).astype(bool)
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[COLUMNS + extra]


def read_ledger(
    root: str | Path, since: datetime | str | float | None = None, *, flow_run_id: str | None = None
) -> pd.DataFrame:
    """All ledger rows under `root` (Parquet parts plus JSON lines of open or crashed writers), optionally only
    those of one flow run and those at or after `since` (a datetime, ISO string or Unix seconds); sorted by time."""
    root = Path(root)
    pattern = f"{PARTITION}={_check(flow_run_id, 'flow_run_id')}" if flow_run_id else f"{PARTITION}=*"
    frames: list[pd.DataFrame] = []
    for folder in sorted(root.glob(pattern)) if root.is_dir() else []:
        for part in sorted(folder.glob("*.parquet")):
            frames.append(_normalise(pd.read_parquet(part)))
        for jsonl in sorted(folder.glob("*.jsonl")):
            if jsonl.with_suffix(".parquet").exists():
                continue  # compacted; only the delete was lost
            rows = _read_jsonl(jsonl)
            if rows:
                frames.append(_normalise(pd.DataFrame(rows)))
    frames = [f for f in frames if len(f)]
    if not frames:
        return _normalise(pd.DataFrame(columns=COLUMNS))
    frame = _normalise(pd.concat(frames, ignore_index=True))
    if since is not None:
        cutoff = pd.Timestamp(_iso(since) if isinstance(since, int | float) else since)
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
        frame = frame[frame["timestamp"] >= cutoff]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def store_ledger_root(store_root: str | Path) -> Path:
    """Where the runs using the artifact store `store_root` keep their ledger."""
    return Path(store_root).expanduser() / STORE_LEDGER_DIR


class LedgerNotFound(FileNotFoundError):
    """A ledger folder holds no ledger partition."""


def read_ledgers(roots: list[str | Path], since: datetime | str | float | None = None) -> pd.DataFrame:
    """The rows of several ledgers together (see `read_ledger`); raises `LedgerNotFound` naming the folder when
    one of them holds no `flow_run_id=*` partition at all."""
    frames = []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir() or not any(root.glob(f"{PARTITION}=*")):
            state = "is not a folder" if not root.is_dir() else f"holds no {PARTITION}=* partition"
            raise LedgerNotFound(f"no cost ledger at {root}: it {state} (runs write to <store>/{STORE_LEDGER_DIR})")
        frames.append(read_ledger(root, since))
    frames = [f for f in frames if len(f)]
    if not frames:
        return _normalise(pd.DataFrame(columns=COLUMNS))
    frame = _normalise(pd.concat(frames, ignore_index=True))
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
