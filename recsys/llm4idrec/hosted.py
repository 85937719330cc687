"""Hosted fine-tuning through an OpenAI-compatible API: upload the chat JSONL files (`files.create`, purpose
`fine-tune`), create the job (`fine_tuning.jobs.create`) and poll it with doubling waits until it ends.

Restart safety: every id is written to the job's record (any object with `record()` and `update(**fields)`,
e.g. storage.batch_jobs.BatchJob) before the step that needs it, so a re-run after a crash neither uploads nor
creates a job twice and resumes polling the job it already created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class JobRecord(Protocol):
    def record(self) -> dict[str, Any]: ...

    def update(self, **fields: Any) -> dict[str, Any]: ...


class FineTuneFailed(RuntimeError):
    """The job ended failed or cancelled; the message names the job and the endpoint's reason."""


def start_job(client: Any, record: JobRecord, training: str, validation: str | None, *, model: str,
              hyperparameters: dict[str, Any], suffix: str | None = None, seed: int | None = None) -> str:
    """The id of this record's job: created once (files uploaded first), read back from the record after."""
    rec = record.record()
    if rec.get("job_id"):
        return str(rec["job_id"])
    if not rec.get("training_file"):
        rec = record.update(training_file=client.files.create(
            file=("train.jsonl", training.encode()), purpose="fine-tune").id)
    if validation and not rec.get("validation_file"):
        rec = record.update(validation_file=client.files.create(
            file=("valid.jsonl", validation.encode()), purpose="fine-tune").id)
    job = client.fine_tuning.jobs.create(model=model, training_file=rec["training_file"],
                                         validation_file=rec.get("validation_file"), suffix=suffix, seed=seed,
                                         hyperparameters=hyperparameters)
    record.update(job_id=job.id, status=job.status)
    return str(job.id)


def wait_job(client: Any, record: JobRecord, *, poll_s: float, poll_max_s: float,
             sleep: Callable[[float], None] = time.sleep, on_status: Callable[[Any], None] | None = None) -> Any:
    """Poll the record's job, waiting `poll_s` doubled up to `poll_max_s` between checks, until it ends; the status
    is written to the record at each check. Returns the succeeded job; raises FineTuneFailed otherwise."""
    job_id = record.record()["job_id"]
    wait = poll_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        record.update(status=job.status)
        if on_status is not None:
            on_status(job)
        if job.status in TERMINAL:
            break
        sleep(wait)
        wait = min(wait * 2, poll_max_s)
    if job.status != "succeeded":
        reason = getattr(job.error, "message", None) if job.error else None
        raise FineTuneFailed(f"fine-tuning job {job_id} {job.status}: {reason or 'no reason given'}")
    record.update(fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens)
    return job
