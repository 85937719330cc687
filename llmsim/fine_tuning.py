"""The fine-tuning jobs API of the local server, in OpenAI's wire format (`/v1/fine_tuning/jobs`).

A job names an uploaded training file (purpose `fine-tune`, chat-format JSONL: every line a `messages` list of
system/user/assistant messages with string content and at least one assistant message) and optionally a
validation file. It goes validating_files -> queued -> running -> (after `fine_tune_duration_s`) succeeded, with
`fine_tuned_model` "ft:<model>:llmsim:<suffix>:<id>" and `trained_tokens` counted with cl100k_base over every line
times n_epochs. A file that breaks the format rules fails the job at validation (`error.code` invalid_file_format,
the first bad line in the message), as OpenAI does. Faults: `fine_tune_fail` fails every job while running
(`error.code` training_failed), `fine_tune_duration_s` makes a job as slow as wanted. Events list each state
change. `/admin/stats` counts fine_tuning_jobs_created.

Before a job succeeds, the server counts item co-occurrences in its LLM4IDRec training records (llmsim/idrec.py)
and keeps them in memory under the job's `fine_tuned_model` (`Simulator.idrec_models`), so chat completions with
that model answer LLM4IDRec prompts from them; they are lost when the server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from llmsim import idrec
from llmsim.batches import Sim, _bad, _not_found, _page
from recsys.llm.tokens import count_tokens
from recsys.llm4idrec.jsonl import format_errors

router = APIRouter()
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class Job:
    """One fine-tuning job (OpenAI's fine_tuning.job object) and its events."""

    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]
    metadata: dict[str, str] | None
    status: str = "validating_files"
    created_at: int = field(default_factory=lambda: int(time.time()))
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "fine_tuning.job", "model": self.model, "created_at": self.created_at,
                "finished_at": self.finished_at, "fine_tuned_model": self.fine_tuned_model,
                "organization_id": "org-llmsim", "result_files": [], "status": self.status,
                "validation_file": self.validation_file, "training_file": self.training_file,
                "hyperparameters": self.hyperparameters, "trained_tokens": self.trained_tokens,
                "error": self.error, "seed": self.seed, "suffix": self.suffix, "metadata": self.metadata,
                "estimated_finish": None, "integrations": []}

    def enter(self, status: str, message: str) -> None:
        self.status = status
        self.events.insert(0, {"id": f"ftevent-{uuid.uuid4().hex[:24]}", "object": "fine_tuning.job.event",
                               "created_at": int(time.time()), "level": "error" if status == "failed" else "info",
                               "message": message, "type": "message", "data": {}})
        if status in TERMINAL:
            self.finished_at = int(time.time())


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    hyperparameters: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


def _tokens(content: bytes) -> int:
    return sum(count_tokens(m["content"]) for line in content.decode().splitlines() if line.strip()
               for m in json.loads(line)["messages"])


@router.post("/v1/fine_tuning/jobs")
async def create_job(body: JobCreate, sim: Sim) -> Response:
    files = {}
    for param in ("training_file", "validation_file"):
        ident = getattr(body, param)
        if ident is None:
            continue
        stored = sim.files.get(ident)
        if stored is None:
            return _not_found("File", ident)
        if stored.purpose != "fine-tune":
            return _bad(f"file {ident} has purpose {stored.purpose!r}, not 'fine-tune'", param)
        files[param] = stored
    hyper = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0, **(body.hyperparameters or {})}
    job = Job(f"ftjob-{uuid.uuid4().hex[:24]}", body.model, body.training_file, body.validation_file, body.suffix,
              body.seed if body.seed is not None else 0, hyper, body.metadata)
    job.enter("validating_files", "Validating training file")
    sim.fine_tuning_jobs[job.id] = job
    sim.stats.count("fine_tuning_jobs_created")
    job.task = asyncio.get_running_loop().create_task(_run(job, {k: f.content for k, f in files.items()}, sim))
    return JSONResponse(job.to_json())


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(sim: Sim, limit: int = 20, after: str | None = None) -> dict[str, Any]:
    return _page(list(reversed(sim.fine_tuning_jobs.values())), limit, after)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str, sim: Sim) -> Response:
    job = sim.fine_tuning_jobs.get(job_id)
    return JSONResponse(job.to_json()) if job else _not_found("Fine-tuning job", job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(job_id: str, sim: Sim, limit: int = 20) -> Response:
    job = sim.fine_tuning_jobs.get(job_id)
    if job is None:
        return _not_found("Fine-tuning job", job_id)
    return JSONResponse({"object": "list", "data": job.events[:limit], "has_more": len(job.events) > limit})


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, sim: Sim) -> Response:
    job = sim.fine_tuning_jobs.get(job_id)
    if job is None:
        return _not_found("Fine-tuning job", job_id)
    if job.status not in TERMINAL and job.task is not None:
        job.task.cancel()
        job.enter("cancelled", "Job cancelled")
    return JSONResponse(job.to_json())


async def _run(job: Job, contents: dict[str, bytes], sim: Any) -> None:
    """Validate the files, wait `fine_tune_duration_s`, then succeed (or fail, with the `fine_tune_fail` fault)."""
    with contextlib.suppress(asyncio.CancelledError):
        for param, content in contents.items():
            if errors := format_errors(content.decode("utf-8", errors="replace"), max_errors=1):
                job.error = {"code": "invalid_file_format", "param": param,
                             "message": f"{param} {getattr(job, param)}: {errors[0]}"}
                job.enter("failed", job.error["message"])
                return
        job.enter("queued", "Files validated, job queued")
        job.enter("running", "Fine-tuning job started")
        config = sim.injector.config
        await asyncio.sleep(config.fine_tune_duration_s)
        if config.fine_tune_fail:
            job.error = {"code": "training_failed", "param": None,
                         "message": "The job failed during training (injected fault)."}
            job.enter("failed", job.error["message"])
            return
        job.trained_tokens = _tokens(contents["training_file"]) * int(job.hyperparameters.get("n_epochs") or 1)
        model = await asyncio.to_thread(idrec.learn, contents["training_file"])
        job.fine_tuned_model = f"ft:{job.model}:llmsim:{job.suffix or 'model'}:{job.id[6:14]}"
        if model is not None:  # registered before the job says succeeded, so the model answers at once
            sim.idrec_models[job.fine_tuned_model] = model
            job.enter("running", f"Learned item co-occurrences from {model.examples} LLM4IDRec examples "
                                 f"({model.items.size} items, {model.answer_length} items per answer)")
        job.enter("succeeded", f"New fine-tuned model created: {job.fine_tuned_model}")
