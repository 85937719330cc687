"""How far a long phase of a run is (training epochs, LLM batches, embedding batches): done of total and an ETA,
where people look — a rich progress bar on the terminal the run was started from, and a Prefect progress artifact
on the run, which the UI shows on the run's Artifacts tab (and `llmrec rerun --wait` reads).

Bars are drawn only when stderr is a terminal (a worker's flow runs have none: the artifact is their progress);
all phases of one process share one rich display, so concurrent task runs each get a line. Each artifact update
is also an event `llmrec.progress` about the root run, which `prefect deployment run --watch` prints as a line of
text (it prints no artifact's content, and no log of a subflow). The artifact belongs
to the root flow run (the one a user started; the base model's epochs inside the `augment` flow's `base` subflow
show on the `augment` run), is keyed (`progress-<phase>`), updated at most every `MIN_UPDATE_S` seconds and once
more when the phase ends; a re-run replaces the root run's earlier card of the same key (tasks/artifacts.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from types import TracebackType

from prefect.artifacts import update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.events import emit_event
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tasks.artifacts import artifact_key, current_flow_run_id, replace_earlier, root_flow_run_id

log = logging.getLogger(__name__)

MIN_UPDATE_S = 2.0  # Prefect API calls per phase: at most one every this many seconds, plus the last


def duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '1 h 02 min'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Terminal:
    """One rich Progress display per process, started with its first phase and stopped with its last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._phases = 0

    def add(self, description: str, total: int | None) -> TaskID | None:
        if not sys.stderr.isatty():
            return None
        with self._lock:
            if self._progress is None:
                self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                          console=Console(stderr=True), transient=False)
                self._progress.start()
            self._phases += 1
            return self._progress.add_task(description, total=total)

    def update(self, task: TaskID | None, **fields: object) -> None:
        with self._lock:
            if task is not None and self._progress is not None:
                self._progress.update(task, **fields)  # type: ignore[arg-type]

    def remove(self, task: TaskID | None) -> None:
        with self._lock:
            if task is None or self._progress is None:
                return
            self._phases -= 1
            if self._phases == 0:
                self._progress.stop()
                self._progress = None


_TERMINAL = _Terminal()


class PhaseProgress:
    """Progress of one phase: `update(done)` as units finish, `close()` (or the end of a `with` block) at the end.

    `what` names the phase ("profiles: LLM batches"); `unit` the things counted ("batches"); `total` may be set
    later by `update(..., total=n)`. With `at_most`, total is an upper bound (epochs under early stopping) and the
    ETA says so. Never raises for the Prefect API: progress must not fail a run.
    """

    def __init__(self, phase: str, what: str, total: int | None, unit: str, *, at_most: bool = False) -> None:
        self.key = f"progress-{artifact_key(phase)}"
        self.what, self.unit, self.total, self.at_most = what, unit, total, at_most
        self.done, self.detail = 0, ""
        self.started = time.monotonic()
        self._last_sent = -float("inf")
        self._artifact: uuid.UUID | None = None
        self._closed = self._complete = False
        self._bar = _TERMINAL.add(what, total)
        self._run = root_flow_run_id() if current_flow_run_id() is not None else None
        if self._run is not None:
            self._send(force=True, create=True)

    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first unit or without a total)."""
        if not self.done or not self.total:
            return None
        return (time.monotonic() - self.started) / self.done * max(0, self.total - self.done)

    def describe(self) -> str:
        """'profiles: LLM batches — 7 of 19 batches, 1 failed; 1 min 10 s elapsed, ETA 2 min 00 s'."""
        total = "?" if self.total is None else f"{'at most ' if self.at_most else ''}{self.total}"
        text = f"{self.what} — {self.done} of {total} {self.unit}"
        text += f", {self.detail}" if self.detail else ""
        text += f"; {duration(time.monotonic() - self.started)} elapsed"
        eta = self.eta()
        if self._closed:
            text += ", finished" if self._complete else ""
        elif eta is not None:
            text += f", ETA {'≤ ' if self.at_most else ''}{duration(eta)}"
        return text

    def percent(self) -> float:
        if self._closed and self._complete:
            return 100.0
        return 0.0 if not self.total else min(100.0, 100.0 * self.done / self.total)

    def update(self, done: int, detail: str = "", *, total: int | None = None) -> None:
        """`done` units finished so far; `detail` is said after the count (failures, the best epoch, ...)."""
        self.done, self.detail = done, detail
        if total is not None:
            self.total = total
        _TERMINAL.update(self._bar, completed=done, total=self.total)
        self._send()

    def close(self, detail: str | None = None, *, complete: bool = True) -> None:
        """The phase ended: a last artifact update, at 100 % when `complete` (also an early end that is a normal
        one, as early stopping), else where it stopped (an error, a budget)."""
        if self._closed:
            return
        self._closed, self._complete = True, complete
        if detail is not None:
            self.detail = detail
        # A phase that ended before its upper bound (early stopping) shows a full bar at what it did.
        _TERMINAL.update(self._bar, completed=self.done, total=self.done if complete and self.at_most else self.total)
        _TERMINAL.remove(self._bar)
        self._send(force=True)

    def _send(self, *, force: bool = False, create: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < MIN_UPDATE_S:
            return
        self._last_sent = now
        try:
            if create:
                replace_earlier(self.key, self._run)
                with get_client(sync_client=True) as client:
                    self._artifact = client.create_artifact(ArtifactCreate(
                        key=self.key, type="progress", description=self.describe(), data=self.percent(),
                        flow_run_id=self._run)).id
            elif self._artifact is not None:
                update_progress_artifact(self._artifact, self.percent(), description=self.describe())
            # An event about the root run: `prefect deployment run --watch` prints it as one line of text.
            emit_event("llmrec.progress", resource={"prefect.resource.id": f"llmrec.{self.key}",
                                                    "prefect.resource.name": self.describe()},
                       related=[{"prefect.resource.id": f"prefect.flow-run.{self._run}",
                                 "prefect.resource.role": "flow-run"}])
        except Exception as exc:  # the API is unreachable: the terminal bar and the logs still tell
            log.warning("progress artifact %s not updated: %s", self.key, exc)

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.close(f"{self.detail + '; ' if self.detail else ''}stopped by {type(exc).__name__}", complete=False)
