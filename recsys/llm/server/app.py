"""The local OpenAI-compatible HTTP server: /v1/models, /v1/chat/completions, /v1/embeddings, plus /admin/*.

This server is not a language model. It answers the project's three augmentation prompts with transparent,
deterministic heuristics (recsys/llm/server/heuristics.py) and embeds text with a small local sentence-embedding
model, so that the whole pipeline (client, retries, rate limits, caching, parsing) runs and is tested offline over
real HTTP. Faults (rate limits, errors, hangs, malformed answers, dropped connections) are injected on demand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from recsys.llm.server import heuristics as h
from recsys.llm.server.embedder import AsyncEmbedder
from recsys.llm.server.faults import Decision, Fault, FaultConfig, FaultInjector
from recsys.llm.tokens import count_message_tokens, count_tokens

MODEL_ID = "llmrec-heuristic"
MODEL_DESCRIPTION = ("This server is not a language model: it answers with transparent heuristics "
                     "(sentence-embedding similarity, genre counts, title patterns).")
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


def canonical_hash(messages: Any) -> str:
    """sha256 of the canonical JSON of the messages (the key of `prompt_answer_counts`)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
            }


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


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _abort_connection(request: Request) -> bool:
    """Close the TCP connection without any response. uvicorn's receive callable is a bound method of its
    request cycle, which holds the transport; returns False when that is not reachable (another server)."""
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


async def _broken_body() -> AsyncIterator[bytes]:
    yield b"{"
    raise ConnectionAbortedError("dropped by fault injection")


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


def create_app(faults: FaultConfig | None = None, *, embedder: AsyncEmbedder | None = None,
               preload: bool = False) -> FastAPI:
    """The ASGI app. `faults` are the initial fault settings (replaceable via POST /admin/faults); `preload` loads
    the embedding model in the background at startup instead of on the first request that needs it."""
    injector = FaultInjector(faults)
    stats = Stats()
    embed = embedder or AsyncEmbedder()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Warm the tokenizer off the event loop, so the first request does not pay for loading it.
        warm = [asyncio.get_running_loop().run_in_executor(None, count_tokens, "warm up")]
        if preload:
            warm.append(asyncio.ensure_future(embed.warm_up()))
        try:
            yield
        finally:
            for task in warm:
                task.cancel()
            embed.shutdown()

    app = FastAPI(title="llmrec local LLM server", description=MODEL_DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.injector = injector
    app.state.stats = stats
    app.state.embedder = embed

    async def front_faults(request: Request, decision: Decision) -> Response | None:
        """Apply the faults that replace the answer (429, 500, drop) and the delays; None: go on and answer."""
        if decision.fault is Fault.RATE_LIMITED:
            stats.finish("429", decision.fault.value)
            return openai_error(429, f"Rate limit reached: {injector.config.rpm_limit} requests per minute. "
                                     f"Please try again in {decision.retry_after_s}s.",
                                "rate_limit_error", "rate_limit_exceeded",
                                headers={"Retry-After": str(decision.retry_after_s),
                                         "Retry-After-Ms": str(decision.retry_after_s * 1000)})
        if decision.fault is Fault.DROP:
            stats.finish("dropped", decision.fault.value)
            if _abort_connection(request):
                await asyncio.sleep(0)  # let the server register the lost connection before the (ignored) reply
                return Response(status_code=500)
            # Fallback: announce a body and break off after one byte; the client still gets no usable answer.
            return StreamingResponse(_broken_body(), media_type="application/json",
                                     headers={"Content-Length": "1000"})
        if decision.latency_s or decision.hang_s:
            await asyncio.sleep(decision.latency_s + decision.hang_s)
            if await request.is_disconnected():  # the client gave up (timeout): nobody to answer
                stats.finish("disconnected", "hang" if decision.hang_s else None)
                return Response(status_code=499)
        if decision.fault in (Fault.ERROR, Fault.FAIL_MATCH):
            stats.finish("500", decision.fault.value)
            return openai_error(500, "The server had an error while processing your request (injected fault).",
                                "server_error", None)
        return None

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        stats.finish("400")
        return openai_error(400, str(exc), "invalid_request_error", "invalid_request", param=exc.param)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        stats.finish("500", "internal")
        return openai_error(500, f"internal error in the local server: {type(exc).__name__}: {exc}", "server_error")

    # --- OpenAI endpoints ----------------------------------------------------------------------------------------
    def model_entry(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmrec",
                "description": MODEL_DESCRIPTION}

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_entry(MODEL_ID)]})

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> JSONResponse:
        return JSONResponse(model_entry(model_id))  # any model name is accepted

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        stats.start()
        body = await _json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise BadRequest("'messages' must be a non-empty list of objects with a 'role'", "messages")
        if body.get("stream"):
            raise BadRequest("streaming is not supported by the local server", "stream")
        if body.get("n") not in (None, 1):
            raise BadRequest("only n=1 is supported", "n")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest("max_tokens must be a positive integer", "max_tokens")
        try:
            prompt = h.parse_prompt(messages)
        except h.PromptError as exc:
            raise BadRequest(str(exc), "messages") from exc

        decision = injector.decide("\n".join(h.message_text(m) for m in messages), chat=True)
        early = await front_faults(request, decision)
        if early is not None:
            return early

        fault: str | None = None
        if decision.malformed:
            text, fault = h.non_json_answer(decision.draw), "malformed"
        elif isinstance(prompt, h.EdgesPrompt):
            texts = [item.text for item in prompt.history] + [item.text for item in prompt.candidates]
            vectors = await embed.embed(texts)
            n_hist = len(prompt.history)
            liked, disliked = h.edge_choice(vectors[:n_hist], vectors[n_hist:])
            if decision.out_of_candidates:
                text, fault = h.out_of_candidates_answer(len(prompt.candidates), disliked, decision.draw), \
                    "out_of_candidates"
            else:
                text = h.edges_answer(liked, disliked)
        elif isinstance(prompt, h.AttributesPrompt):
            text = h.attributes_answer(prompt)
        else:
            text = h.profile_answer(prompt)

        finish_reason = "stop"
        completion_tokens = count_tokens(text)
        if max_tokens is not None and completion_tokens > max_tokens:
            text, finish_reason = _truncate(text, max_tokens), "length"
            completion_tokens = count_tokens(text)
            fault = fault or "truncated"

        if await request.is_disconnected():  # e.g. a slow first model load outlived the client's timeout
            stats.finish("disconnected", "hang" if decision.hang_s else None)
            return Response(status_code=499)
        prompt_tokens = _prompt_tokens(messages)
        stats.chat_answered(prompt_tokens, completion_tokens, None if fault else canonical_hash(messages))
        stats.finish("200", fault, "hang" if decision.hang_s else None)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": MODEL_ID,
        })

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        stats.start()
        body = await _json_body(request)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("'input' must be a string or a non-empty list of strings (token arrays are not "
                             "supported)", "input")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise BadRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", "input")
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
        dim = embed.embedder.dim
        if body.get("dimensions") not in (None, dim):
            raise BadRequest(f"this model only produces {dim}-dimensional vectors", "dimensions")

        decision = injector.decide("\n".join(texts), chat=False)
        early = await front_faults(request, decision)
        if early is not None:
            return early

        vectors = await embed.embed(texts)
        if await request.is_disconnected():
            stats.finish("disconnected", "hang" if decision.hang_s else None)
            return Response(status_code=499)
        tokens = sum(count_tokens(t) for t in texts)
        stats.embedded(tokens)
        stats.finish("200", "hang" if decision.hang_s else None)
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
                               if encoding_format == "base64" else v.tolist())}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": body.get("model") or MODEL_ID,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # --- admin ---------------------------------------------------------------------------------------------------
    @app.get("/admin/stats")
    async def admin_stats() -> JSONResponse:
        snapshot = stats.snapshot()
        snapshot["embedding_cache"] = embed.embedder.cache_info()
        snapshot["embedding_model_loaded"] = embed.embedder.loaded
        return JSONResponse(snapshot)

    @app.post("/admin/reset")
    async def admin_reset() -> JSONResponse:
        stats.reset()
        return JSONResponse({"ok": True})

    @app.get("/admin/faults")
    async def admin_get_faults() -> JSONResponse:
        return JSONResponse(injector.config.model_dump())

    @app.post("/admin/faults")
    async def admin_set_faults(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"{}")
            config = injector.update(**body)
        except Exception as exc:  # invalid JSON or settings: say why, keep the old settings
            return openai_error(400, f"invalid fault settings: {exc}", "invalid_request_error", "invalid_faults")
        return JSONResponse(config.model_dump())

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not 0): asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every keep-alive request waits ~40 ms (Nagle's algorithm against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, faults: FaultConfig | None = None, *, preload: bool = False,
          log_level: str = "warning") -> None:
    """Run the server in this process until SIGTERM/SIGINT. Prints `llmrec-llm-server listening on
    http://HOST:PORT` once the socket accepts connections (with the real port when `port` is 0)."""
    import uvicorn

    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(faults, preload=preload), log_level=log_level, access_log=False,
                            lifespan="on", timeout_keep_alive=75, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"llmrec-llm-server listening on http://{shown_host}:{bound_port}", flush=True)
    with contextlib.closing(sock):
        server.run(sockets=[sock])
