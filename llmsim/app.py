"""The local OpenAI-compatible HTTP server: /v1/models, /v1/chat/completions, /v1/embeddings, /v1/files,
/v1/batches (the Batch API, llmsim/batches.py), /v1/fine_tuning/jobs (llmsim/fine_tuning.py), plus /admin/*.

This server is not a language model. It answers the project's prompts (LLMRec's three augmentations,
llmsim/heuristics.py; Llama4Rec's ranking and pairwise prompts, llmsim/ranking.py; LLM4IDRec's generation prompts,
from item co-occurrences counted in a fine-tuning job's training file, llmsim/idrec.py) with transparent,
deterministic heuristics and embeds text with a small local sentence-embedding model, so that the whole pipeline
(client, retries, rate limits, caching, parsing) runs and is tested offline over real HTTP. Faults (rate limits,
errors, hangs, malformed answers, dropped connections) are injected on demand.

Structured outputs: the server takes one `response_format` form (`FaultConfig.structured_outputs`, default
json_schema) and answers any other with HTTP 500, as llama.cpp's server does; a request without one is always
taken. With a schema, answers are constrained as a grammar-constrained decoder would constrain them: the
malformed fault cannot turn them into prose, no wrapping is added, and every answer is checked against the schema;
with json_object (no schema), a malformed answer is a JSON object of the wrong shape. An index outside the
candidate list still gets through: a schema cannot know the candidates.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jsonschema
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from llmsim import MODEL_ID, idrec, ranking
from llmsim import heuristics as h
from llmsim.embedder import AsyncEmbedder
from llmsim.faults import Decision, Fault, FaultConfig, FaultInjector
from recsys.llm.cache import prompt_hash
from recsys.llm.structured import format_mode, request_schema
from recsys.llm.tokens import count_message_tokens, count_tokens

MODEL_DESCRIPTION = ("This server is not a language model: it answers with transparent heuristics "
                     "(sentence-embedding similarity, genre counts, title patterns).")
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


class Stats:
    """Request counters, updated from the event loop and read by admin calls; a lock keeps snapshots consistent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.requests = 0
            self.in_flight = 0
            self.by_status: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.chat_ok = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.embedding_tokens = 0
            self.prompt_answer_counts: Counter[str] = Counter()
            self.files_created = 0
            self.batches_created = 0
            self.batch_requests = 0
            self.fine_tuning_jobs_created = 0

    def start(self) -> None:
        """Count an arriving API request."""
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def finish(self, status: str, *faults: str | None) -> None:
        """Record the outcome of one API request: an HTTP status, "dropped" (closed unanswered) or "disconnected"
        (the client left before the answer), and the injected faults it met (None entries are ignored)."""
        with self._lock:
            self.in_flight -= 1
            self.by_status[status] += 1
            for fault in faults:
                if fault:
                    self.faults[fault] += 1

    def chat_answered(self, prompt_tokens: int, completion_tokens: int, prompt_hash: str | None) -> None:
        """A 200 chat answer; `prompt_hash` is given only when the content is a genuine (valid) answer."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if prompt_hash is not None:
                self.chat_ok += 1
                self.prompt_answer_counts[prompt_hash] += 1

    def count(self, name: str) -> None:
        """Add one to the counter `name` (files_created, batches_created, batch_requests)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def embedded(self, tokens: int) -> None:
        """Count the tokens of a 200 embeddings answer."""
        with self._lock:
            self.embedding_tokens += tokens

    def snapshot(self) -> dict[str, Any]:
        """The /admin/stats body."""
        with self._lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "by_status": dict(self.by_status),
                "faults": dict(self.faults),
                "chat_ok": self.chat_ok,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "embedding_tokens": self.embedding_tokens,
                "prompt_answer_counts": dict(self.prompt_answer_counts),
                "files_created": self.files_created,
                "batches_created": self.batches_created,
                "batch_requests": self.batch_requests,
                "fine_tuning_jobs_created": self.fine_tuning_jobs_created,
            }


# --- request bodies (fields the server does not use are accepted and ignored, as OpenAI's API does) ----------------
class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    stream: Literal[False] | None = None  # streaming is not supported
    n: Literal[1] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    # A string or a list of strings (token arrays are not supported).
    input: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
                     Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


@dataclass
class Simulator:
    """The server's state: fault settings, counters and the embedding model."""

    injector: FaultInjector
    stats: Stats
    embedder: AsyncEmbedder
    preload: bool
    files: dict[str, Any] = field(default_factory=dict)  # file id -> llmsim.batches.StoredFile
    batches: dict[str, Any] = field(default_factory=dict)  # batch id -> llmsim.batches.Batch
    fine_tuning_jobs: dict[str, Any] = field(default_factory=dict)  # job id -> llmsim.fine_tuning.Job
    # fine_tuned_model id -> what it learned from its training file; in memory only, lost when the server restarts
    idrec_models: dict[str, idrec.IDRecModel] = field(default_factory=dict)


def _simulator(request: Request) -> Simulator:
    return request.app.state.simulator


Sim = Annotated[Simulator, Depends(_simulator)]
AnyPrompt = h.Prompt | ranking.Prompt | idrec.IDRecPrompt
router = APIRouter()


# --- errors ----------------------------------------------------------------------------------------------------------
def openai_error(status: int, message: str, type_: str, code: str | None = None, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response in OpenAI's JSON shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class BadRequest(Exception):
    """A request the server rejects with HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    _simulator(request).stats.finish("400")
    return openai_error(400, str(exc), "invalid_request_error", "invalid_request", param=exc.param)


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that does not fit its request model (counted like any other 400)."""
    stats = _simulator(request).stats
    stats.start()
    stats.finish("400")
    error = exc.errors()[0]
    where = [] if error["type"] == "json_invalid" else [str(part) for part in error["loc"][1:]]  # after "body"
    return openai_error(400, f"{'.'.join(where) or 'body'}: {error['msg']}", "invalid_request_error",
                        "invalid_request", param=where[0] if where else None)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    _simulator(request).stats.finish("500", "internal")
    return openai_error(500, f"internal error in the local server: {type(exc).__name__}: {exc}", "server_error")


# --- faults ----------------------------------------------------------------------------------------------------------
class DroppedResponse(Response):
    """Headers and the first byte of a body announced as 1000 bytes, then nothing: the ASGI server closes the
    connection and the client gets no usable answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})


def _hang(decision: Decision) -> str | None:
    return "hang" if decision.hang_s else None


def _gone(sim: Simulator, decision: Decision) -> Response:
    """The client left (e.g. timed out) before the answer: nobody to answer."""
    sim.stats.finish("disconnected", _hang(decision))
    return Response(status_code=499)


async def _front_faults(request: Request, sim: Simulator, decision: Decision) -> Response | None:
    """The response when a fault replaces the answer (429, a dropped connection, 500) or the client left during the
    injected delay; None: go on and answer."""
    fault = decision.fault
    if fault is Fault.RETRY_AFTER:
        sim.stats.finish("429", fault.value)
        return openai_error(429, "You exceeded your current quota (injected fault).", "rate_limit_error",
                            "rate_limit_exceeded", headers={"Retry-After": str(sim.injector.config.retry_after)})
    if fault is Fault.RATE_LIMITED:
        sim.stats.finish("429", fault.value)
        wait = decision.retry_after_s
        return openai_error(429, f"Rate limit reached: {sim.injector.config.rpm_limit} requests or "
                                 f"{sim.injector.config.tpm_limit} tokens per minute. Please try again in {wait}s.",
                            "rate_limit_error", "rate_limit_exceeded",
                            headers={"Retry-After": str(wait), "Retry-After-Ms": str(wait * 1000),
                                     **sim.injector.limit_headers()})
    if fault is Fault.DROP:
        sim.stats.finish("dropped", fault.value)
        return DroppedResponse()
    if decision.latency_s or decision.hang_s:
        await asyncio.sleep(decision.latency_s + decision.hang_s)
        if await request.is_disconnected():
            return _gone(sim, decision)
    if fault in (Fault.ERROR, Fault.FAIL_MATCH):
        sim.stats.finish("500", fault.value)
        return openai_error(500, "The server had an error while processing your request (injected fault).",
                            "server_error", None)
    return None


# --- OpenAI endpoints ------------------------------------------------------------------------------------------------
def _model_entry(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmrec", "description": MODEL_DESCRIPTION}


@router.get("/v1/models")
async def list_models(sim: Sim) -> dict[str, Any]:
    """The server's model and the fine-tuned models of this server's succeeded jobs."""
    tuned = [job.fine_tuned_model for job in sim.fine_tuning_jobs.values() if job.fine_tuned_model]
    return {"object": "list", "data": [_model_entry(m) for m in (MODEL_ID, *tuned)]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str) -> dict[str, Any]:
    return _model_entry(model_id)  # any model name is accepted


def _truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` with at most `max_tokens` tokens (what a real API returns at the limit)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    try:
        return count_message_tokens(messages)
    except Exception:  # exotic content (lists of parts): count the text instead of failing the request
        return 3 + sum(3 + count_tokens(h.message_text(m)) for m in messages)


class UnsupportedFormat(Exception):
    """A `response_format` this server does not take (answered with HTTP 500, as llama.cpp's server does)."""


def _format(body: ChatRequest, prompt: AnyPrompt, sim: Simulator) -> tuple[str, dict[str, Any] | None]:
    """(mode, JSON schema or None) of the request's `response_format`; raises BadRequest for one that is no known
    form or for any form with an LLM4IDRec prompt (answered as plain text), UnsupportedFormat for a form other than
    the server's."""
    try:
        mode = format_mode(body.response_format)
    except ValueError as exc:
        raise BadRequest(str(exc), "response_format") from None
    served = sim.injector.config.structured_outputs
    if mode not in ("none", served):
        raise UnsupportedFormat(f"response_format {mode} is not supported by this server (it takes {served}; "
                                f"the type field was {body.response_format.get('type')!r})")
    if mode != "none" and isinstance(prompt, idrec.IDRecPrompt):
        raise BadRequest("an LLM4IDRec prompt is answered as a plain i<id> list: send no response_format",
                         "response_format")
    return mode, request_schema(body.response_format)


async def _answer(body: ChatRequest, messages: list[dict[str, Any]], prompt: AnyPrompt, decision: Decision,
                  sim: Simulator, mode: str) -> tuple[str, str | None]:
    """The answer's text and the fault it carries (None: a genuine answer), as decoding in `mode` allows."""
    if decision.malformed and mode == "none":
        return h.non_json_answer(decision.draw), "malformed"
    if decision.malformed and mode == "json_object":
        return h.json_non_answer(decision.draw), "malformed"
    if isinstance(prompt, idrec.IDRecPrompt):
        how = idrec.sampling(body.temperature, body.top_p, body.seed, messages)
        text, fault = idrec.answer(prompt, sim.idrec_models.get(body.model or MODEL_ID), how), None
    else:
        text, fault = await _genuine(prompt, decision, sim.embedder)
    if decision.wrapped and mode == "none":
        return h.wrapped_answer(text, decision.draw), fault or "wrapped"
    return text, fault


async def _genuine(prompt: h.Prompt | ranking.Prompt, decision: Decision, embedder: AsyncEmbedder
                   ) -> tuple[str, str | None]:
    if isinstance(prompt, ranking.RankingPrompt | ranking.PairwisePrompt):
        return await ranking.answer(prompt, decision, embedder)
    if isinstance(prompt, h.AttributesPrompt):
        return h.attributes_answer(prompt), None
    if isinstance(prompt, h.ProfilePrompt):
        return h.profile_answer(prompt), None
    if decision.first_listed:
        return h.first_listed_answer(len(prompt.candidates)), "first_listed"
    vectors = await embedder.embed([item.text for item in (*prompt.history, *prompt.candidates)])
    liked, disliked = h.edge_choice(vectors[:len(prompt.history)], vectors[len(prompt.history):])
    if decision.out_of_candidates:
        return h.out_of_candidates_answer(len(prompt.candidates), disliked, decision.draw), "out_of_candidates"
    return h.edges_answer(liked, disliked), None


async def complete(body: ChatRequest, messages: list[dict[str, Any]], prompt: AnyPrompt,
                   decision: Decision, sim: Simulator) -> tuple[dict[str, Any], str | None]:
    """The chat.completion object answering `prompt` and the fault it carries; counted in the stats. Raises
    BadRequest / UnsupportedFormat for a `response_format` the server does not take."""
    mode, schema = _format(body, prompt, sim)
    text, fault = await _answer(body, messages, prompt, decision, sim, mode)
    max_tokens, finish_reason = body.max_completion_tokens or body.max_tokens, "stop"
    if max_tokens is not None and count_tokens(text) > max_tokens:
        text, finish_reason, fault = _truncate(text, max_tokens), "length", fault or "truncated"
    if schema is not None and finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema)  # a constrained decoder's answer always fits its schema
    prompt_tokens, completion_tokens = _prompt_tokens(messages), count_tokens(text)
    genuine = fault is None or fault == "wrapped"  # a wrapped answer is still the answer
    sim.stats.chat_answered(prompt_tokens, completion_tokens, prompt_hash(messages) if genuine else None)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": body.model or MODEL_ID,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": MODEL_ID,
    }, fault


def parse_chat(body: ChatRequest) -> tuple[list[dict[str, Any]], AnyPrompt]:
    """The request's messages as dicts and the prompt they hold; raises BadRequest."""
    messages = [m.model_dump(exclude_unset=True) for m in body.messages]
    try:
        return messages, (ranking.parse_prompt(messages) or idrec.parse_prompt(messages)
                          or h.parse_prompt(messages))
    except h.PromptError as exc:
        raise BadRequest(str(exc), "messages") from exc


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, sim: Sim) -> Response:
    sim.stats.start()
    messages, prompt = parse_chat(body)
    weight = _prompt_tokens(messages) + (body.max_completion_tokens or body.max_tokens or 0)
    decision = sim.injector.decide("\n".join(h.message_text(m) for m in messages), chat=True, tokens=weight)
    if (early := await _front_faults(request, sim, decision)) is not None:
        return early
    try:
        answer, fault = await complete(body, messages, prompt, decision, sim)
    except UnsupportedFormat as exc:
        sim.stats.finish("500", "unsupported_format")
        return openai_error(500, str(exc), "server_error")
    if await request.is_disconnected():  # e.g. a slow first model load outlived the client's timeout
        return _gone(sim, decision)
    sim.stats.finish("200", fault, _hang(decision))
    return JSONResponse(answer, headers=sim.injector.limit_headers())


def _vector(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return vector.tolist()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request, sim: Sim) -> Response:
    sim.stats.start()
    texts = body.input
    dim = sim.embedder.embedder.dim
    if body.dimensions not in (None, dim):
        raise BadRequest(f"this model only produces {dim}-dimensional vectors", "dimensions")
    decision = sim.injector.decide("\n".join(texts), chat=False)
    if (early := await _front_faults(request, sim, decision)) is not None:
        return early
    vectors = await sim.embedder.embed(texts)
    if await request.is_disconnected():
        return _gone(sim, decision)
    tokens = sum(count_tokens(t) for t in texts)
    sim.stats.embedded(tokens)
    sim.stats.finish("200", _hang(decision))
    data = [{"object": "embedding", "index": i, "embedding": _vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": body.model or MODEL_ID,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


# --- admin -----------------------------------------------------------------------------------------------------------
@router.get("/admin/stats")
async def admin_stats(sim: Sim) -> dict[str, Any]:
    return {**sim.stats.snapshot(), "embedding_cache": sim.embedder.embedder.cache_info(),
            "embedding_model_loaded": sim.embedder.embedder.loaded}


@router.post("/admin/reset")
async def admin_reset(sim: Sim) -> dict[str, bool]:
    sim.stats.reset()
    return {"ok": True}


@router.get("/admin/faults")
async def admin_get_faults(sim: Sim) -> dict[str, Any]:
    return sim.injector.config.model_dump()


@router.post("/admin/faults")
async def admin_set_faults(request: Request, sim: Sim) -> Response:
    """Replace every fault setting (unnamed ones go back to off); invalid settings keep the old ones."""
    try:
        config = FaultConfig.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        return openai_error(400, f"invalid fault settings: {exc}", "invalid_request_error", "invalid_faults")
    sim.injector.replace(config)
    return JSONResponse(config.model_dump())


# --- the app ---------------------------------------------------------------------------------------------------------
@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    sim: Simulator = app.state.simulator
    # Warm the tokenizer off the event loop, so the first request does not pay for loading it.
    warm = [asyncio.get_running_loop().run_in_executor(None, count_tokens, "warm up")]
    if sim.preload:
        warm.append(asyncio.ensure_future(sim.embedder.warm_up()))
    try:
        yield
    finally:
        for task in warm:
            task.cancel()
        sim.embedder.shutdown()


def create_app(faults: FaultConfig | None = None, *, embedder: AsyncEmbedder | None = None,
               preload: bool = False) -> FastAPI:
    """The ASGI app. `faults` are the initial fault settings (replaceable via POST /admin/faults); `preload` loads
    the embedding model in the background at startup instead of on the first request that needs it."""
    app = FastAPI(title="llmrec local LLM server", description=MODEL_DESCRIPTION, lifespan=_lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={BadRequest: _bad_request, RequestValidationError: _invalid_body,
                                      Exception: _internal_error})
    app.state.simulator = Simulator(FaultInjector(faults), Stats(), embedder or AsyncEmbedder(), preload)
    from llmsim.batches import router as batch_router  # it imports this module's chat answer
    from llmsim.fine_tuning import router as fine_tuning_router

    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(fine_tuning_router)
    return app
