"""OpenAI's Batch API: requests as JSONL, upload, batch, status, results; and a chat client that answers from the
results of batches (or defers the question to the next batch).

A batch request line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` with the body
`LLMClient.request_body` builds (so a batch asks exactly what normal mode asks, `response_format` included), and
its custom_id is the request's response-cache key: an answer from a batch lands in the response cache under the
key normal mode looks up. An output line holds `response.body` (a chat completion) for status 200; the error file
holds the rest (`response.status_code` >= 400, or `error.code`, e.g. `batch_expired`).

`DeferredChat` is how the augmentors (unchanged) run in batch mode: it answers from the batches' results and the
response cache; any other question is recorded as pending (for the next batch) and gets no answer, or, when it
has an HTTP fallback, is asked as a normal request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from recsys.llm.client import ChatResult, LLMClient, resolve_endpoint
from recsys.llm.retry import AttemptFailed, Retryable, classify, retrying

CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
JOB_METADATA = "llmrec_job"  # the batch's metadata key naming the job, so a restart finds a batch it created


class BatchAPIError(RuntimeError):
    """A Batch API call failed after its retries, or a batch failed as a whole (its input was refused)."""


@dataclass(frozen=True)
class BatchAnswer:
    """One result line: the answer (text and usage) or why there is none."""

    custom_id: str
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None  # e.g. "HTTP 500: ...", "batch_expired: ..."


def request_line(custom_id: str, body: Mapping[str, Any]) -> str:
    """One JSONL line of a batch input file."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": dict(body)},
                      sort_keys=True) + "\n"


def read_results(text: str) -> list[BatchAnswer]:
    """The lines of a batch output or error file; a line that is not JSON is skipped."""
    out = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            out.append(_answer(item))
    return out


def _answer(item: dict[str, Any]) -> BatchAnswer:
    custom_id, response, error = item["custom_id"], item.get("response") or {}, item.get("error")
    status, body = response.get("status_code"), response.get("body") or {}
    if error or status != 200:
        detail = error or body.get("error") or {}
        code = detail.get("code") if isinstance(detail, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        what = f"HTTP {status}" if status else (code or "error")
        return BatchAnswer(custom_id, None, 0, 0, f"{what}: {message}" if message else what)
    try:
        text = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return BatchAnswer(custom_id, None, 0, 0, "answer is not a chat completion")
    usage = body.get("usage") or {}
    return BatchAnswer(custom_id, text, int(usage.get("prompt_tokens") or 0),
                       int(usage.get("completion_tokens") or 0), None)


class BatchAPI:
    """The Batch API calls of one endpoint (files.create, batches.create/retrieve/list, files.content), each
    retried by the one retry layer (recsys/llm/retry.py); `call` puts other SDK calls (fine-tuning jobs) under
    the same layer. The API key is resolved as for chat and never shown."""

    def __init__(self, cfg: Any, *, max_attempts: int | None = None) -> None:
        self.cfg = cfg
        self.base_url, secret = resolve_endpoint(cfg)
        self._client = openai.OpenAI(base_url=self.base_url, api_key=secret, max_retries=0, timeout=cfg.timeout_s)
        self._secret = secret
        self._attempts = max_attempts or cfg.max_attempts

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client (no retries of its own: send its calls through `call`)."""
        return self._client

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """`fn()` (one SDK call, named `what` in logs and errors) under the retry layer; BatchAPIError when no
        attempt succeeded."""
        def attempt() -> Any:
            try:
                return fn()
            except Exception as exc:
                raise classify(exc, timeout_s=self.cfg.timeout_s, base_url=self.base_url,
                               scrub=lambda t: t.replace(self._secret, "***"),
                               max_wait_s=self.cfg.backoff_max_s) from None

        loop = retrying(max_attempts=self._attempts, initial=self.cfg.backoff_initial_s,
                        maximum=self.cfg.backoff_max_s, what=what)
        try:
            return loop(attempt)
        except (Retryable, AttemptFailed) as exc:
            raise BatchAPIError(f"{what} at {self.base_url} failed: {exc.description}") from None

    def upload(self, path: Path) -> str:
        """files.create(purpose="batch"); the file's id."""
        def send() -> Any:
            with open(path, "rb") as f:
                return self._client.files.create(file=(path.name, f), purpose="batch")
        return str(self.call("Batch API files.create", send).id)

    def create(self, input_file_id: str, job: str, window: str) -> str:
        """batches.create for chat completions, its metadata naming `job`; the batch's id."""
        batch = self.call("Batch API batches.create", lambda: self._client.batches.create(
            input_file_id=input_file_id, endpoint=CHAT_URL, completion_window=window,  # type: ignore[arg-type]
            metadata={JOB_METADATA: job}))
        return str(batch.id)

    def find(self, input_file_id: str, job: str) -> str | None:
        """The id of a batch already created for `job` from `input_file_id` (the newest 100 batches are looked
        at), or None."""
        page = self.call("Batch API batches.list", lambda: self._client.batches.list(limit=100))
        for batch in page.data:
            if batch.input_file_id == input_file_id and (batch.metadata or {}).get(JOB_METADATA) == job:
                return str(batch.id)
        return None

    def status(self, batch_id: str) -> dict[str, Any]:
        """batches.retrieve as a plain dict (status, output_file_id, error_file_id, request_counts, errors)."""
        return self.call("Batch API batches.retrieve", lambda: self._client.batches.retrieve(batch_id)).model_dump()

    def content(self, file_id: str) -> str:
        """files.content: a file's text."""
        return self.call("Batch API files.content", lambda: self._client.files.content(file_id)).text

    def close(self) -> None:
        self._client.close()


class DeferredChat:
    """A chat client for the augmentors in batch mode. `chat` answers from `answers` (the results of this run's
    batches, by cache key), then from the response cache; otherwise, with `http`, it asks `client` as a normal
    request, and without, it records the request in `pending` and answers nothing (error: why). `forget` drops a
    rejected answer from the response cache only: this run's batch results stay, so the next pass builds the same
    corrections and asks only what is new. `built` keeps the messages of every question, answered or not."""

    def __init__(self, client: LLMClient, answers: Mapping[str, str], errors: Mapping[str, str], *, http: bool,
                 rounds: int) -> None:
        self.client = client
        self.answers, self.errors = answers, errors
        self.http, self.rounds = http, rounds
        self.pending: dict[str, dict[str, Any]] = {}  # cache key -> request body
        self.built: dict[str, list[dict[str, str]]] = {}  # cache key -> messages, of every question asked
        self.hits = 0  # questions answered from the batches' results or the response cache
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], *, template_version: str, tags: dict[str, str] | None = None
             ) -> ChatResult:
        key = self.client.cache_key(messages, template_version)
        with self._lock:
            self.built[key] = messages
        if key in self.answers:
            self._count_hit()
            return ChatResult(self.answers[key], 0, 0, True, 0, 0.0, None)
        if self.http:
            return self.client.chat(messages, template_version=template_version, tags=tags)
        hit = self.client.cached(messages, template_version=template_version, tags=tags)
        if hit is not None:
            self._count_hit()
            return hit
        with self._lock:
            self.pending[key] = self.client.request_body(messages)
        last = self.errors.get(key)
        return ChatResult(None, 0, 0, False, 0, 0.0, f"no answer after {self.rounds} batches" + (
            f" (last: {last})" if last else "") if self.rounds else "not asked yet (waiting for a batch)")

    def _count_hit(self) -> None:
        with self._lock:
            self.hits += 1

    def forget(self, messages: list[dict[str, str]], template_version: str) -> bool:
        return self.client.forget(messages, template_version)


def pending_lines(pending: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The batch input lines of pending requests, sorted by custom_id (the same requests give the same file)."""
    return [request_line(key, pending[key]) for key in sorted(pending)]


def merge_results(results: Iterable[BatchAnswer]) -> tuple[dict[str, str], dict[str, str]]:
    """(answer text, error) by custom_id over batches in order: a later answer replaces an earlier error."""
    answers: dict[str, str] = {}
    errors: dict[str, str] = {}
    for result in results:
        if result.text is not None:
            answers[result.custom_id] = result.text
            errors.pop(result.custom_id, None)
        elif result.custom_id not in answers:
            errors[result.custom_id] = result.error or "no answer"
    return answers, errors
