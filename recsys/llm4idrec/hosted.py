"""Hosted LLM4IDRec through an OpenAI-compatible API: upload the chat JSONL files (`files.create`, purpose
`fine-tune`), create the job (`fine_tuning.jobs.create`), poll it with doubling waits until it ends, then generate
with the fine-tuned model through chat completions (paper §3.3; official code: newlei/LLM4IDRec `predict.py`).

Restart safety: every id is written to the job's record (any object with `record()` and `update(**fields)`,
e.g. storage.batch_jobs.BatchJob) before the step that needs it, so a re-run after a crash neither uploads nor
creates a job twice and resumes polling the job it already created; a job that ended failed or cancelled is
replaced by a new one on the next start (its files are reused).

Every SDK call goes through `call(what, fn)` (default: call `fn` once); pass the retry layer of
recsys.llm.batch.BatchAPI (`BatchAPI.call`) so that a 429 or a dropped connection does not end the stage.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from recsys.augment.parse import InvalidAnswer
from recsys.augment.runner import ChatClient, ItemOutcome, ask_each
from recsys.llm.tokens import count_message_tokens
from recsys.llm4idrec.prompts import PROMPT_VERSION

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
GENERATE_VERSION = f"llm4idrec-generate-{PROMPT_VERSION}"  # the template version of the generation requests
T = TypeVar("T")
Call = Callable[[str, Callable[[], T]], T]


def _direct(what: str, fn: Callable[[], T]) -> T:
    return fn()


class JobRecord(Protocol):
    def record(self) -> dict[str, Any]: ...

    def update(self, **fields: Any) -> dict[str, Any]: ...


class FineTuneFailed(RuntimeError):
    """The job ended failed or cancelled; the message names the job and the endpoint's reason."""


MAX_EPOCHS = 50  # OpenAI's fine-tuning API takes n_epochs from 1 to 50


def hyperparameters(n_records: int, batch_size: int, max_steps: int) -> dict[str, int]:
    """The job's `batch_size` and `n_epochs`: the paper's `max_steps` optimizer steps of `batch_size` examples
    (400 x 32, [IDREC] lora_tuning.sh) over `n_records` training examples, rounded up to whole epochs, from 1 to
    MAX_EPOCHS."""
    epochs = math.ceil(max_steps * batch_size / max(n_records, 1))
    return {"batch_size": batch_size, "n_epochs": min(MAX_EPOCHS, max(1, epochs))}


def trained_tokens_estimate(training: str, n_epochs: int) -> int:
    """Tokens a job trains on: every line's messages counted as a chat prompt (cl100k_base, per-message overhead
    included, so a little above what an endpoint bills), times `n_epochs`. What the budget check prices."""
    lines = [json.loads(line) for line in training.splitlines() if line.strip()]
    return n_epochs * sum(count_message_tokens(line["messages"]) for line in lines)


def start_job(client: Any, record: JobRecord, training: str, validation: str | None, *, model: str,
              hyperparameters: dict[str, Any], suffix: str | None = None, seed: int | None = None,
              call: Call = _direct) -> str:
    """The id of this record's job: created once (files uploaded first), read back from the record after; a job
    the record saw fail or be cancelled is replaced by a new one (listed in the record's `replaced_jobs`)."""
    rec = record.record()
    if rec.get("job_id") and rec.get("status") not in ("failed", "cancelled"):
        return str(rec["job_id"])
    if rec.get("job_id"):
        rec = record.update(replaced_jobs=[*rec.get("replaced_jobs", []), rec["job_id"]], job_id=None, status=None)
    if not rec.get("training_file"):
        rec = record.update(training_file=call("files.create", lambda: client.files.create(
            file=("train.jsonl", training.encode()), purpose="fine-tune")).id)
    if validation and not rec.get("validation_file"):
        rec = record.update(validation_file=call("files.create", lambda: client.files.create(
            file=("valid.jsonl", validation.encode()), purpose="fine-tune")).id)
    job = call("fine_tuning.jobs.create", lambda: client.fine_tuning.jobs.create(
        model=model, training_file=rec["training_file"], validation_file=rec.get("validation_file"), suffix=suffix,
        seed=seed, hyperparameters=hyperparameters))
    record.update(job_id=job.id, status=job.status)
    return str(job.id)


def wait_job(client: Any, record: JobRecord, *, poll_s: float, poll_max_s: float,
             sleep: Callable[[float], None] = time.sleep, on_status: Callable[[Any], None] | None = None,
             call: Call = _direct) -> Any:
    """Poll the record's job, waiting `poll_s` doubled up to `poll_max_s` between checks, until it ends; the status
    is written to the record at each check. Returns the succeeded job; raises FineTuneFailed otherwise."""
    job_id = record.record()["job_id"]
    wait = poll_s
    while True:
        job = call("fine_tuning.jobs.retrieve", lambda: client.fine_tuning.jobs.retrieve(job_id))
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


def _text(answer: str, user_id: int) -> dict[str, str]:
    if not answer.strip():
        raise InvalidAnswer("empty answer: no item IDs")
    return {"text": answer}


def generate_hosted(client: ChatClient, prompts: Mapping[int, str], *, max_reasks: int, max_workers: int,
                    tags: dict[str, str]) -> list[ItemOutcome]:
    """One outcome per user of `prompts` (user_id -> LLM4IDRec prompt), in its order: the fine-tuned model's
    answer as `value["text"]`, kept whatever it lists (parsing counts what it drops); an empty answer is re-asked
    (recsys/augment/runner.py `ask_each`), a call that fails after the client's retries fails the user."""
    return ask_each(client, list(prompts), key=lambda u: u, skip=lambda u: None,
                    messages=lambda u: [{"role": "user", "content": prompts[u]}], validate=_text,
                    template_version=GENERATE_VERSION, max_reasks=max_reasks, max_workers=max_workers, tags=tags)
