"""Files and the Batch API of the local server, in OpenAI's wire format.

`/v1/files` keeps uploaded files in memory for any purpose (batch input, fine-tuning data, ...): upload
(multipart `file` + `purpose`), list, retrieve, download (`/content`) and delete. `/v1/batches` runs a batch of
chat completions from an uploaded JSONL file: each line `{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}` is answered as the chat endpoint would answer it (same heuristics,
structured-output rules and answer faults; the HTTP faults do not apply inside a batch). A batch goes
validating -> in_progress -> (after `batch_duration_s`) finalizing -> completed, with an output file of the 200
answers and an error file of the rest. Faults: `batch_error_rate` answers a share of the requests with an error,
`batch_expire_after` makes the batch expire with only that share answered (the others are `batch_expired`
errors), as OpenAI does when a batch outlives its 24 h window. `/admin/stats` counts files_created,
batches_created and batch_requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from llmsim.faults import Fault

router = APIRouter()
CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class StoredFile:
    """An uploaded (or generated) file."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass
class Batch:
    """One batch and its state (OpenAI's batch object)."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, ...
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    task: asyncio.Task | None = None

    def to_json(self) -> dict[str, Any]:
        stamps = {f"{name}_at": self.times.get(name) for name in (
            "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "expires_at": self.created_at + 86_400, **stamps,
                "request_counts": dict(self.counts), "metadata": self.metadata}

    def enter(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _sim(request: Request) -> Any:
    return request.app.state.simulator


Sim = Annotated[Any, Depends(_sim)]


def _not_found(what: str, ident: str) -> JSONResponse:
    from llmsim.app import openai_error

    return openai_error(404, f"No such {what}: {ident}", "invalid_request_error", "not_found")


def _bad(message: str, param: str | None = None) -> JSONResponse:
    from llmsim.app import openai_error

    return openai_error(400, message, "invalid_request_error", "invalid_request", param=param)


def _page(items: list[Any], limit: int, after: str | None) -> dict[str, Any]:
    """An OpenAI list page of `items` (newest first) after the id `after`."""
    ids = [item.id for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start:start + limit]
    return {"object": "list", "data": [item.to_json() for item in page],
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
            "has_more": start + limit < len(items)}


# --- files -----------------------------------------------------------------------------------------------------------
@router.post("/v1/files")
async def upload_file(sim: Sim, file: UploadFile, purpose: Annotated[str, Form()]) -> Response:
    if not purpose.strip():
        return _bad("purpose must not be empty", "purpose")
    stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", file.filename or "upload", purpose, await file.read())
    sim.files[stored.id] = stored
    sim.stats.count("files_created")
    return JSONResponse(stored.to_json())


@router.get("/v1/files")
async def list_files(sim: Sim, purpose: str | None = None, limit: int = 10_000, after: str | None = None
                     ) -> dict[str, Any]:
    files = [f for f in reversed(sim.files.values()) if purpose is None or f.purpose == purpose]
    return _page(files, limit, after)


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, sim: Sim) -> Response:
    stored = sim.files.get(file_id)
    return JSONResponse(stored.to_json()) if stored else _not_found("File", file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, sim: Sim) -> Response:
    stored = sim.files.get(file_id)
    if stored is None:
        return _not_found("File", file_id)
    return Response(stored.content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, sim: Sim) -> Response:
    if sim.files.pop(file_id, None) is None:
        return _not_found("File", file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


# --- batches ---------------------------------------------------------------------------------------------------------
@router.post("/v1/batches")
async def create_batch(body: BatchCreate, sim: Sim) -> Response:
    if body.endpoint != CHAT_URL:
        return _bad(f"this server runs batches of {CHAT_URL} only", "endpoint")
    if body.completion_window != "24h":
        return _bad("completion_window must be 24h", "completion_window")
    source = sim.files.get(body.input_file_id)
    if source is None:
        return _not_found("File", body.input_file_id)
    if source.purpose != "batch":
        return _bad(f"file {source.id} has purpose {source.purpose!r}, not 'batch'", "input_file_id")
    batch = Batch(f"batch_{uuid.uuid4().hex[:24]}", source.id, body.endpoint, body.completion_window, body.metadata)
    sim.batches[batch.id] = batch
    sim.stats.count("batches_created")
    batch.task = asyncio.get_running_loop().create_task(_run(batch, source.content, sim))
    return JSONResponse(batch.to_json())


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, sim: Sim) -> Response:
    batch = sim.batches.get(batch_id)
    return JSONResponse(batch.to_json()) if batch else _not_found("Batch", batch_id)


@router.get("/v1/batches")
async def list_batches(sim: Sim, limit: int = 20, after: str | None = None) -> dict[str, Any]:
    return _page(list(reversed(sim.batches.values())), limit, after)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, sim: Sim) -> Response:
    batch = sim.batches.get(batch_id)
    if batch is None:
        return _not_found("Batch", batch_id)
    if batch.status not in TERMINAL and batch.task is not None:
        batch.enter("cancelling")
        batch.task.cancel()
        batch.enter("cancelled")
    return JSONResponse(batch.to_json())


def _lines(content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The requests of a batch input file, and what is wrong with it (OpenAI's batch `errors` entries)."""
    requests, errors, seen = [], [], set()
    for n, line in enumerate(content.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            errors.append({"code": "invalid_json_line", "message": "not JSON", "line": n})
            continue
        if not isinstance(item, dict) or item.get("url") != CHAT_URL or item.get("method") != "POST" or not (
                isinstance(item.get("custom_id"), str) and isinstance(item.get("body"), dict)):
            errors.append({"code": "invalid_request", "message": "needs custom_id, method POST, url "
                           f"{CHAT_URL} and a body", "line": n})
        elif item["custom_id"] in seen:
            errors.append({"code": "duplicate_custom_id", "message": item["custom_id"], "line": n})
        else:
            seen.add(item["custom_id"])
            requests.append(item)
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "the input file holds no request", "line": None})
    return requests, errors


async def _answer_line(item: dict[str, Any], sim: Any) -> tuple[int, dict[str, Any]]:
    """(status, body) of one batch request, as the chat endpoint would answer it."""
    from llmsim.app import BadRequest, ChatRequest, UnsupportedFormat, complete, parse_chat

    sim.stats.count("batch_requests")
    decision = sim.injector.decide_batch_line()
    if decision.fault is Fault.ERROR:
        return 500, {"error": {"message": "The server had an error processing this request (injected fault).",
                               "type": "server_error", "param": None, "code": None}}
    try:
        body = ChatRequest.model_validate(item["body"])
        messages, prompt = parse_chat(body)
        answer, _ = await complete(body, messages, prompt, decision, sim)
    except (ValidationError, BadRequest) as exc:
        return 400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}}
    except UnsupportedFormat as exc:
        return 500, {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
    return 200, answer


def _store(sim: Any, name: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", name, "batch_output",
                        "".join(json.dumps(line) + "\n" for line in lines).encode())
    sim.files[stored.id] = stored
    return stored.id


async def _run(batch: Batch, content: bytes, sim: Any) -> None:
    """Validate, wait `batch_duration_s`, answer every request, write the output and error files."""
    with contextlib.suppress(asyncio.CancelledError):
        requests, errors = _lines(content)
        if errors:
            batch.errors = errors
            batch.enter("failed")
            return
        batch.counts["total"] = len(requests)
        batch.enter("in_progress")
        config = sim.injector.config
        await asyncio.sleep(config.batch_duration_s)
        expire = config.batch_expire_after
        n_answered = len(requests) if expire is None else int(expire * len(requests))
        output, failed = [], []
        for i, item in enumerate(requests):
            request_id = f"req_{uuid.uuid4().hex[:24]}"
            line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": item["custom_id"]}
            if i >= n_answered:
                failed.append({**line, "response": None, "error": {
                    "code": "batch_expired", "message": "This request could not be executed before the completion "
                                                        "window expired."}})
                continue
            status, body = await _answer_line(item, sim)
            response = {"status_code": status, "request_id": request_id, "body": body}
            (output if status == 200 else failed).append({**line, "response": response, "error": None})
        batch.enter("finalizing")
        batch.counts.update(completed=len(output), failed=len(failed))
        batch.output_file_id = _store(sim, f"{batch.id}_output.jsonl", output)
        batch.error_file_id = _store(sim, f"{batch.id}_error.jsonl", failed)
        batch.enter("expired" if expire is not None else "completed")
