"""Operations on a Prefect server: re-run a failed flow run of a deployment and say what it executed.

`rerun` does what `prefect flow-run retry` (or the UI's Retry button) does: it sets the failed run back to
Scheduled, so a worker of its work pool runs it again under the SAME flow-run id. Task runs whose results were
persisted come back `Cached` (every llmrec stage is keyed on its content, and a retry of the same run also reuses
results), so only the failed work is executed again: for the `augment` flow, only the failed LLM batches, and
within them only the items the response cache does not already hold.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Scheduled

RERUNNABLE = (StateType.FAILED, StateType.CRASHED)


class OpsError(RuntimeError):
    """An operation on the Prefect server cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class TaskRunLine:
    """One task run of the re-run attempt: where it ran, its name, its final state, and whether it executed."""

    flow_run: str
    name: str
    state: str

    @property
    def cached(self) -> bool:
        """Served from a persisted result instead of executing."""
        return self.state == "Cached"


@dataclass
class RerunReport:
    """What `rerun` did: the flow run, the state it left, and (after waiting) how the new attempt ended."""

    flow_run_id: str
    flow_run_name: str
    previous_state: str
    final_state: str | None = None
    run_count: int | None = None
    task_runs: list[TaskRunLine] = field(default_factory=list)

    @property
    def executed(self) -> list[TaskRunLine]:
        return [t for t in self.task_runs if not t.cached]

    @property
    def cached(self) -> list[TaskRunLine]:
        return [t for t in self.task_runs if t.cached]


def api_url() -> str:
    """The configured Prefect server API, or a clear error: re-running needs a server that workers poll."""
    url = PREFECT_API_URL.value()
    if not url:
        raise OpsError("PREFECT_API_URL is not set, so there is no Prefect server to re-run on: start one with "
                       "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return str(url)


def _connect(client: SyncPrefectClient, url: str) -> None:
    problem = client.api_healthcheck()
    if problem is not None:
        raise OpsError(f"no Prefect server answers at {url} ({type(problem).__name__}: {problem}); "
                       "is `prefect server start` running, and is PREFECT_API_URL right?")


def _read_run(client: SyncPrefectClient, flow_run_id: str, url: str) -> FlowRun:
    try:
        run_uuid = uuid.UUID(flow_run_id)
    except ValueError:
        raise OpsError(f"{flow_run_id!r} is not a flow-run id (a UUID; `prefect flow-run ls` lists them)") from None
    try:
        return client.read_flow_run(run_uuid)
    except ObjectNotFound:
        raise OpsError(f"no flow run {flow_run_id} on the Prefect server at {url}") from None


def _state_name(run: FlowRun) -> str:
    return run.state.name if run.state else "unknown"


def _attempt_task_runs(client: SyncPrefectClient, run: FlowRun, label: str) -> list[TaskRunLine]:
    """Task runs of `run`'s latest attempt, with those of its subflows (a subflow's own placeholder task run is
    replaced by the subflow's task runs)."""
    ours = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            if t.flow_run_run_count == run.run_count]
    ids = {t.id for t in ours}
    children = [c for c in client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        if c.parent_task_run_id in ids]
    placeholders = {c.parent_task_run_id for c in children}
    lines = [TaskRunLine(label, t.name, t.state.name if t.state else "unknown")
             for t in sorted(ours, key=lambda t: (t.start_time or t.expected_start_time or t.created, t.name))
             if t.id not in placeholders]
    for child in children:
        lines += _attempt_task_runs(client, child, f"{label}/{child.name}")
    return lines


def run_progress(client: SyncPrefectClient, run: FlowRun, since: datetime) -> dict[str, tuple[str, float]]:
    """artifact key -> (description, percent) of the progress artifacts (tasks/progress.py) that `run` and its
    subflow runs, at any depth, created or updated since `since`."""
    ids, frontier = [run.id], [run.id]
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
        frontier = [c.id for c in children if c.id not in ids]
        ids += frontier
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=ids), type=ArtifactFilterType(any_=["progress"])))
    return {a.key or str(a.id): (a.description or a.key or "", float(a.data))  # type: ignore[arg-type]
            for a in sorted(artifacts, key=lambda a: a.created or since)
            if (a.updated or a.created or since) >= since}


ProgressSink = Callable[[str, dict[str, tuple[str, float]]], None]  # (flow-run state, run_progress(...))


def rerun(flow_run_id: str, *, wait: bool = False, timeout_s: float = 3600.0, poll_s: float = 1.0,
          on_progress: ProgressSink | None = None) -> RerunReport:
    """Schedule the Failed or Crashed deployment run `flow_run_id` again (as `prefect flow-run retry`); with
    `wait`, return once the new attempt has ended, listing its task runs (executed or Cached), and meanwhile pass
    the run's state and the progress of its phases (`run_progress`) to `on_progress` at every poll."""
    url = api_url()
    with get_client(sync_client=True) as client:
        _connect(client, url)
        run = _read_run(client, flow_run_id, url)
        previous = _state_name(run)
        if run.state is None or run.state.type not in RERUNNABLE:
            raise OpsError(f"flow run {flow_run_id} ({run.name}) is {previous}: only Failed or Crashed runs can "
                           "be re-run")
        if run.deployment_id is None:
            raise OpsError(f"flow run {flow_run_id} ({run.name}) was not started from a deployment, so no worker "
                           "can run it again: call the flow again instead (its finished tasks come from the cache)")
        result = client.set_flow_run_state(run.id, Scheduled(message="Re-run by llmrec rerun"), force=True)
        if result.status == SetStateStatus.ABORT:
            reason = getattr(result.details, "reason", result.details)
            raise OpsError(f"the server refused to re-schedule flow run {flow_run_id}: {reason}")
        report = RerunReport(str(run.id), run.name, previous)
        if not wait:
            return report
        deadline = time.monotonic() + timeout_s
        since = datetime.now(UTC)
        while True:
            now = client.read_flow_run(run.id)
            if on_progress is not None:
                on_progress(_state_name(now), run_progress(client, now, since))
            if now.state is not None and now.state.is_final() and now.run_count > run.run_count:
                break
            if time.monotonic() > deadline:
                raise OpsError(f"flow run {flow_run_id} did not finish within {timeout_s:.0f} s (now "
                               f"{_state_name(now)}); is a worker polling work pool {run.work_pool_name!r}?")
            time.sleep(poll_s)
        report.final_state = _state_name(now)
        report.run_count = now.run_count
        report.task_runs = _attempt_task_runs(client, now, now.name)
        return report


def rerun_summary(report: RerunReport) -> dict[str, Any]:
    """Counts for printing or logging: task runs executed, served from cache, and failed again."""
    return {"executed": len(report.executed), "cached": len(report.cached),
            "failed": sum(t.state in ("Failed", "Crashed") for t in report.task_runs)}
