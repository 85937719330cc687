"""Calling a flow from a flow so that the Prefect UI can list the caller's task runs.

Prefect records where each task run's inputs came from by the identity of the objects passed in, and a subflow
called plainly links what it returns (the object and its first-level members) to its flow run: a task run taking
one of them gets a flow-run input. Prefect 3.8.8's default UI cannot read such an input ("Invalid
TaskInputResponse" in the browser, PrefectHQ/prefect#18680): the caller's whole task-run list comes up empty. Called
with `return_state=True`, the subflow's result is read from its final state and linked to nothing, so the caller's
task runs keep plain inputs. A subflow that failed raises its exception here as a plain call would.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow


def call_subflow(flow: Flow[..., Any], **parameters: Any) -> Any:
    """`flow(**parameters)` as a subflow of the running flow (or a flow run of its own outside one), returning its
    result without linking it to the caller's later task runs."""
    return flow(**parameters, return_state=True).result()
