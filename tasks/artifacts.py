"""Keyed Prefect artifacts of a run, one card per key.

Prefect keeps every version of a keyed artifact, and a re-run of a flow run (the UI's Retry, `llmrec rerun`) adds
a new version beside the old one on the same flow run's Artifacts tab: two cards with one key, told apart only by
their time. `replace_earlier` deletes this flow run's earlier versions of a key before the new one is created, so
the flow run shows the latest only; other flow runs' versions (the key's history on the Artifacts page) stay.
"""

from __future__ import annotations

import logging
import re
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.runtime import flow_run

log = logging.getLogger(__name__)

_NOT_KEY = re.compile(r"[^a-z0-9]+")


def artifact_key(text: str) -> str:
    """`text` as a Prefect artifact key (lowercase letters, digits and dashes): 'Train-LLMRec 2020' ->
    'train-llmrec-2020'."""
    return _NOT_KEY.sub("-", text.lower()).strip("-") or "artifact"


def current_flow_run_id() -> uuid.UUID | None:
    """The flow run this code runs in (also inside one of its task runs), or None outside a run."""
    run_id = flow_run.id
    return uuid.UUID(str(run_id)) if run_id else None


def root_flow_run_id() -> uuid.UUID | None:
    """The flow run at the top of this one's subflow chain (this one when it has no parent), or None outside a
    run: the run a user started and looks at."""
    if current_flow_run_id() is None:
        return None
    return uuid.UUID(str(flow_run.root_flow_run_id))


def replace_earlier(key: str, run_id: uuid.UUID | None = None) -> None:
    """Delete the versions of artifact `key` that flow run `run_id` (default: this one) got before (an earlier
    attempt, or an earlier call in this attempt); outside a flow run, nothing. A failure to reach the API is
    logged, never raised: an extra card is better than a failed run."""
    run_id = run_id or current_flow_run_id()
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            earlier = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            for artifact in earlier:
                client.delete_artifact(artifact.id)
    except Exception as exc:  # the API is unreachable or refused: keep the old card
        log.warning("could not remove earlier versions of artifact %r: %s", key, exc)
