"""What llmrec changes on the Dask workers its task runner uses: their statistical profiler is turned off.

Why. A Dask worker samples the stacks of its running tasks every 10 ms with `sys._current_frames()`. On
Python 3.11 that call can deadlock the whole process (python/cpython#106883, dask/distributed#8616): it holds the
interpreter's thread-list lock while it allocates frame objects, an allocation can start the garbage collector,
a finalizer run by the collector can hand the GIL to another thread, and when that thread is starting or ending a
thread (our batches do: each one runs its requests on a thread pool) it waits for the thread-list lock while
holding the GIL. Every thread of the worker then waits for ever, answers unread in its sockets. Python 3.12 no
longer collects garbage inside that allocation. The profiler only feeds the dashboard's profile page, so it is
turned off on every Python version.

This module imports `distributed`, which takes about a second; it is imported only when a Dask runner is used.
"""

from __future__ import annotations

from typing import Any

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin
from prefect_dask import DaskTaskRunner
from prefect_dask.client import PrefectDaskClient

PROFILER_CALLBACKS = ("profile", "profile-cycle")  # Worker.periodic_callbacks of distributed's profiler


class NoWorkerProfiler(WorkerPlugin):
    """Stops a worker's statistical profiler (see the module docstring). Registered on a cluster, it runs on every
    worker there now and on every worker that joins later, before that worker starts its periodic callbacks."""

    name = "llmrec-no-worker-profiler"
    idempotent = True  # registering it again (another flow run on the same cluster) changes nothing

    def setup(self, worker: Worker) -> None:
        for name in PROFILER_CALLBACKS:
            callback = worker.periodic_callbacks.pop(name, None)
            if callback is not None:
                callback.stop()


class LlmrecDaskTaskRunner(DaskTaskRunner):
    """prefect-dask's DaskTaskRunner whose cluster's workers run without the statistical profiler: the plugin is
    registered when the runner's client connects, before the first task run is submitted."""

    @property
    def client(self) -> PrefectDaskClient:
        connecting = self._client is None
        client: PrefectDaskClient = super().client
        if connecting:
            client.register_plugin(NoWorkerProfiler())
        return client


def profiler_running(dask_worker: Any) -> bool:
    """Whether a worker's statistical profiler is scheduled (for `Client.run`, which passes `dask_worker`)."""
    return any(name in dask_worker.periodic_callbacks for name in PROFILER_CALLBACKS)
