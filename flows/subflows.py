"""Calling a flow from a flow so that the Prefect UI can list the caller's task runs.

Prefect records where each task run's inputs came from by the identity of the objects passed in, and a subflow
called plainly links what it returns (the object and its first-level members) to its flow run: a task run taking
one of them gets a flow-run input. Prefect 3.8.8's default UI cannot read such an input ("Invalid
TaskInputResponse" in the browser, PrefectHQ/prefect#18680): the caller's whole task-run list comes up empty. So
the subflow is called plainly and those links are dropped from the caller's run context: the caller's task runs
keep plain inputs.

Why not `flow(..., return_state=True).result()`: that reads the value from the state the Prefect API answered.
When the API's answer to the subflow's COMPLETED transition is lost (a timeout or a 503 on a busy server), the
client sends it again and the server rejects the duplicate (`PreventDuplicateTransitions`), answering with the
stored state, which holds no data for a result that is not persisted: `.result()` then raises `MissingResult`
although the subflow completed. The plain call returns the value the subflow returned, whatever the API answered.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.context import FlowRunContext
from prefect.utilities.collections import visit_collection


def call_subflow(flow: Flow[..., Any], **parameters: Any) -> Any:
    """`flow(**parameters)` as a subflow of the running flow (or a flow run of its own outside one), returning its
    result without linking it to the caller's later task runs. A subflow that failed raises its exception here."""
    result = flow(**parameters)
    context = FlowRunContext.get()
    if context is not None:
        visit_collection(result, lambda obj: context.run_results.pop(id(obj), None), max_depth=1)
    return result
