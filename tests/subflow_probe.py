"""A flow calling a subflow through `flows.subflows.call_subflow` and passing its result to a task, for
tests/test_prefect_server.py. Run as `python -m tests.subflow_probe`, it runs `parent` against $PREFECT_API_URL,
prints the result as JSON and leaves with `os._exit`: the events the run queued for an API that carries no
websocket (the test's proxy) are dropped, not retried for minutes at interpreter exit."""

from __future__ import annotations

import json
import os
import sys

from prefect import flow, task

from flows.subflows import call_subflow


@task
def echo(value: dict[str, str]) -> dict[str, str]:
    return dict(value)


@flow
def child() -> dict[str, str]:
    return {"answer": "from the child"}


@flow
def parent() -> dict[str, str]:
    return echo(call_subflow(child))


if __name__ == "__main__":
    print(json.dumps(parent()), flush=True)
    sys.stderr.flush()
    os._exit(0)
