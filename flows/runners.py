"""Task runners from `RunnerConfig`: a thread pool in the flow's process, or a Dask cluster.

Prefect sets a task runner on the flow object, so a flow is run on another runner through `with_runner(flow, cfg)`
(`flow.with_options(task_runner=...)`). The runner decides only where task runs execute: every content key and
cache key is computed from the tasks' inputs, which never include the runner, so outputs are the same on any.

Every Dask worker process talks to the Prefect API itself. A LocalCluster started here is given this process's
API (`PREFECT_API_URL`, or else the temporary server this process runs when no server is configured), because on
its own each worker process would boot a temporary server of its own: tens of seconds per worker, all on one
SQLite file, and Prefect 3.8.8 can fail a task run with "Server process did not start" when two threads of one
worker start it at once. Workers of an existing cluster (`dask_address`) need `PREFECT_API_URL` pointing at a
running server (`prefect server start`) in their own environment.

The Dask runner turns off the statistical profiler of every worker it uses (`flows.dask_workers`): on Python 3.11
that profiler can freeze a worker process for good.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect import Flow
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from recsys.config import RunnerConfig

F = TypeVar("F", bound=Flow[Any, Any])


def prefect_api_url() -> str:
    """The Prefect API this process uses: the configured one, else its temporary server (started if need be)."""
    configured = PREFECT_API_URL.value()
    if configured:
        return str(configured)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the same per-process instance Prefect's own client starts and uses
    server.start()
    return str(server.api_url)


def worker_env() -> dict[str, str]:
    """Environment for local Dask worker processes: share this process's Prefect API."""
    return {"PREFECT_API_URL": prefect_api_url()}


def task_runner(cfg: RunnerConfig) -> TaskRunner[Any]:
    """The Prefect task runner `cfg` describes (a new instance: runners are entered once per flow run)."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.threads)
    from flows.dask_workers import LlmrecDaskTaskRunner  # deferred: importing dask.distributed costs a second

    if cfg.dask_address:
        return LlmrecDaskTaskRunner(address=cfg.dask_address)
    return LlmrecDaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.dask_workers,
        "threads_per_worker": cfg.dask_threads_per_worker,
        "processes": True,  # the point of Dask here: batches in other processes (or machines)
        # No dashboard pages; the scheduler still serves /health on port 8787 (or a free one), on all interfaces.
        "dashboard_address": None,
        "env": worker_env(),
    })


def with_runner(flow: F, cfg: RunnerConfig) -> F:
    """`flow` with its task runs on the runner `cfg` describes."""
    return flow.with_options(task_runner=task_runner(cfg))


def runner_kind(runner: TaskRunner[Any]) -> str:
    """The `RunnerConfig.kind` a task runner is: "threads", "dask" (prefect-dask's runner or a subclass, such as
    llmrec's), or its class name for any other runner."""
    names = {cls.__name__ for cls in type(runner).__mro__}
    if "DaskTaskRunner" in names:  # by name: no need to import dask.distributed to ask
        return "dask"
    return "threads" if isinstance(runner, ThreadPoolTaskRunner) else type(runner).__name__
