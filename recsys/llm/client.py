"""The one LLM client: OpenAI-compatible chat completions with a response cache, rate limits and one retry layer,
built on `Endpoint`, which every call to an OpenAI-compatible endpoint goes through (embeddings too, in
recsys.embed.remote).

It uses the official `openai` package with only standard parameters (model, messages, temperature, top_p,
max_tokens, and `response_format` in the form `LLMConfig.structured_outputs` names: recsys/llm/structured.py says
which servers take which), so it works unchanged against OpenAI, vLLM, Ollama, llama.cpp and the local test server.
A server that rejects the `response_format` it is sent raises `LLMUnsupportedError` at the first request. The SDK's
own retries are off (`max_retries=0`): tenacity (recsys.llm.retry) is the only retry layer, so attempts, waits
and the usage record of every attempt are all in one place.

A call goes: response cache -> (per attempt) in-flight slot + RPM/TPM budget of the limiter shared by every
client of the same (base_url, model) in the process -> `before_request` hook -> HTTP -> usage event. The hook
(e.g. a limit shared by several processes) is called once per HTTP attempt, never for a cache hit; whatever it
raises ends the call (and is not retried). Retried: 429, 408, 409, 5xx, timeouts, dropped connections and
unparseable answers, with exponential backoff and jitter, and never sooner than the server's Retry-After (a 429
pauses the whole limiter). Not retried: other 4xx (the call's result carries the error). 401/403 and an exhausted
quota raise `LLMAuthError`, since every later call would fail the same way.

The API key is handed to the SDK and to nothing else: it is not in the cache key, a usage event, a log line or an
error string (server messages are scrubbed of it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import openai

from recsys.config import EndpointConfig, LLMConfig
from recsys.llm.cache import ResponseCache, cache_key
from recsys.llm.limits import RateLimiter, announced_limits, shared_limiter
from recsys.llm.pricing import PriceTable, load_price_table
from recsys.llm.retry import AttemptFailed, Retryable, classify, retrying
from recsys.llm.structured import response_format
from recsys.llm.tokens import count_message_tokens, count_tokens

BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"  # local servers ignore the key, but the SDK insists on one


class LLMError(RuntimeError):
    """A problem with the LLM endpoint that no retry will fix."""


class LLMConfigError(LLMError, ValueError):
    """The client cannot be built from the configuration (e.g. no API key for OpenAI's API)."""


class LLMAuthError(LLMError):
    """The endpoint refused the credentials (401/403) or the account has no quota left."""


class LLMUnsupportedError(LLMError):
    """The endpoint rejects a request field (e.g. the `response_format` of `structured_outputs`)."""


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one `chat` call."""

    text: str | None  # the answer, None when every attempt failed
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # served from the response cache (cost 0, no HTTP)
    attempts: int  # HTTP attempts made (0 when cached)
    latency_s: float  # wall time of the whole call, waits included
    error: str | None  # last error when text is None, e.g. "HTTP 500 after 6 attempts"


@dataclass(frozen=True)
class UsageEvent:
    """One HTTP attempt or one cache hit, for the cost ledger."""

    timestamp: float  # Unix time (UTC) at the end of the attempt
    model: str
    prompt_tokens: int  # billed tokens: 0 for a failed attempt
    completion_tokens: int
    cached: bool
    latency_s: float  # this attempt's HTTP time (limiter waits excluded)
    attempt: int  # 1-based HTTP attempt, 0 for a cache hit
    outcome: str  # "ok" | "http_429" | "http_500" | "http_400" | ... | "timeout" | "connection" | "bad_response"
    cost_usd: float | None  # None when the model has no price
    mode: str = "normal"  # "normal" (one request per prompt) or "batch" (Batch API, batch prices)
    stage: str | None = None
    batch: str | None = None
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """A plain dict for the ledger (tags other than stage/batch are kept as `tags`)."""
        row = asdict(self)
        row["retries"] = max(0, self.attempt - 1)
        return row


UsageSink = Callable[[UsageEvent], None]
BeforeRequest = Callable[[], None]  # blocks until one more HTTP request may go out; raises to stop the call
T = TypeVar("T")


class CallFailed(LLMError):
    """Every attempt of one call failed (or one failed for good); the message says why, `attempts` how often."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def resolve_endpoint(cfg: EndpointConfig, api_key: str | None = None) -> tuple[str, str]:
    """(base_url, api_key) from the arguments, the config and the environment (`$OPENAI_BASE_URL`, the variable
    named by `cfg.api_key_env`). A custom base_url without a key gets a placeholder key (local servers need none);
    OpenAI's own API without a key is an error."""
    base_url = cfg.base_url or os.environ.get(BASE_URL_ENV) or None
    key = api_key or os.environ.get(cfg.api_key_env) or None
    if key is None:
        if base_url is None:
            raise LLMConfigError(
                f"no API key: set ${cfg.api_key_env} for OpenAI's API, or set base_url (or ${BASE_URL_ENV}) "
                "to a local OpenAI-compatible server"
            )
        key = LOCAL_PLACEHOLDER_KEY
    return (base_url or OPENAI_BASE_URL).rstrip("/"), key


class Endpoint:
    """One model at one OpenAI-compatible endpoint: the SDK client, the shared limiter, prices, the usage sink and
    the `before_request` hook, and `call`, the only way a request is sent (see the module docstring)."""

    cfg: EndpointConfig
    what = "LLM"  # how retry log lines name the call

    def __init__(self, cfg: EndpointConfig, model: str, *, usage_sink: UsageSink | None = None,
                 api_key: str | None = None, before_request: BeforeRequest | None = None) -> None:
        self.model = model
        self.base_url, self._secret = resolve_endpoint(cfg, api_key)
        self.cfg = cfg
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self._secret, max_retries=0,
                                     timeout=cfg.timeout_s)
        self.limiter: RateLimiter = shared_limiter(self.base_url, model, rpm=cfg.rpm, tpm=cfg.tpm,
                                                   max_in_flight=cfg.max_in_flight)
        self.prices: PriceTable = load_price_table(cfg.price_table)
        self._sink = usage_sink
        self._before_request = before_request

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def call(self, send: Callable[[], tuple[T, int, int]], *, estimate: int, reserve: int, tags: dict[str, str]
             ) -> tuple[T, int, int, int]:
        """(value, prompt_tokens, completion_tokens, attempts) of `send` (one HTTP request and the reading of its
        answer) retried under the limits; `estimate` is the prompt's token count, `reserve` the tokens booked
        per attempt. Raises `CallFailed` when no attempt succeeded, `LLMAuthError` for refused credentials or
        quota."""
        cfg, attempts = self.cfg, 0

        def one_attempt() -> tuple[T, int, int]:
            nonlocal attempts
            attempts += 1
            return self._attempt(send, estimate, reserve, attempts, tags)

        loop = retrying(max_attempts=cfg.max_attempts, initial=cfg.backoff_initial_s, maximum=cfg.backoff_max_s,
                        what=self.what)
        try:
            return (*loop(one_attempt), attempts)
        except Retryable as exc:
            raise CallFailed(f"{exc.description} after {attempts} attempts", attempts) from None
        except AttemptFailed as exc:
            raise CallFailed(exc.description, attempts) from None

    def _attempt(self, send: Callable[[], tuple[T, int, int]], estimate: int, reserve: int, attempt: int,
                 tags: dict[str, str]) -> tuple[T, int, int]:
        """One HTTP request under the limiter, with its usage event; raises `AttemptFailed` on failure."""
        reservation = self.limiter.acquire(reserve)
        actual_tokens: int | None = None
        try:
            if self._before_request is not None:
                self._before_request()  # outside the classifying try: its errors are not HTTP failures
            t0 = time.monotonic()
            try:
                value, pt, ct = send()
            except Exception as exc:
                failure = classify(exc, timeout_s=self.cfg.timeout_s, base_url=self.base_url,
                                   scrub=self._scrub, max_wait_s=self.cfg.backoff_max_s)
                if isinstance(exc, openai.APIStatusError):
                    actual_tokens = estimate  # the server answered at once: nothing was generated
                if failure.retry_after and failure.outcome == "http_429" and failure.retryable:
                    self.limiter.pause(failure.retry_after)  # the whole client backs off, not only this thread
                self.emit(tags, attempt=attempt, outcome=failure.outcome, latency_s=time.monotonic() - t0,
                          error=failure.description)
                if failure.fatal:
                    raise LLMAuthError(failure.description) from None
                if failure.unsupported:
                    raise LLMUnsupportedError(f"{failure.description} (the endpoint does not take what "
                                              f"structured_outputs={getattr(self.cfg, 'structured_outputs', '?')} "
                                              "sends: choose another mode, see README)") from None
                raise failure from None
            actual_tokens = pt + ct
        finally:
            self.limiter.release(reservation, actual_tokens=actual_tokens)
        self.emit(tags, attempt=attempt, outcome="ok", prompt_tokens=pt, completion_tokens=ct,
                  latency_s=time.monotonic() - t0)
        return value, pt, ct

    def adopt_limits(self, headers: Any) -> None:
        """Hold the limiter to the limits an answer's `x-ratelimit-*` headers announce (capped by `rpm_cap` /
        `tpm_cap`), and pause it until an exhausted window resets (at most `backoff_max_s`)."""
        said = announced_limits(headers)
        if said.rpm or said.tpm:
            cap = (self.cfg.rpm_cap, self.cfg.tpm_cap)
            self.limiter.announce(*(min(v, c) if v and c else v for v, c in zip((said.rpm, said.tpm), cap,
                                                                                 strict=True)))
        if said.wait_s:
            self.limiter.pause(min(said.wait_s, self.cfg.backoff_max_s))

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that came from elsewhere (error messages may echo it)."""
        if self._secret and self._secret != LOCAL_PLACEHOLDER_KEY and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def emit(self, tags: dict[str, str], *, attempt: int, outcome: str, latency_s: float, prompt_tokens: int = 0,
             completion_tokens: int = 0, cached: bool = False, error: str | None = None, mode: str = "normal"
             ) -> None:
        """Hand one usage event to the sink (failed attempts cost 0; `mode` "batch" is priced at batch prices)."""
        if self._sink is None:
            return
        cost = (self.prices.cost(self.model, prompt_tokens, completion_tokens, cached=cached, batch=mode == "batch")
                if outcome == "ok" else 0.0)
        self._sink(UsageEvent(
            timestamp=time.time(), model=self.model, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cached=cached, latency_s=latency_s, attempt=attempt,
            outcome=outcome, cost_usd=cost, mode=mode, stage=tags.get("stage"), batch=tags.get("batch"), error=error,
            tags=dict(tags),
        ))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LLMClient(Endpoint):
    """Chat completions through the official `openai` package; thread-safe (call `chat` from many threads).

    The cache is shared by every client (and process) using the same `cache_dir`. `answer_schema` (name, JSON
    schema) is the schema every answer of this client must follow, sent as `response_format` in the form
    `cfg.structured_outputs` names; it is in no cache key (an answer that validates is kept whichever mode
    produced it)."""

    cfg: LLMConfig

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        cache_dir: str | Path,
        usage_sink: UsageSink | None = None,
        api_key: str | None = None,
        before_request: BeforeRequest | None = None,
        answer_schema: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(cfg, cfg.model, usage_sink=usage_sink, api_key=api_key, before_request=before_request)
        self.cache = ResponseCache(cache_dir)
        self.response_format = (response_format(cfg.structured_outputs, *answer_schema) if answer_schema
                                else None)

    def request_body(self, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        """The chat-completions request body of `messages` (what `chat` sends, and one line of a batch file)."""
        body: dict[str, Any] = {"model": self.cfg.model, "messages": [dict(m) for m in messages],
                                "temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
                                "max_tokens": self.cfg.max_tokens}
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body

    # --- cache -------------------------------------------------------------------------------------------------
    def cache_key(self, messages: Sequence[Mapping[str, str]], template_version: str) -> str:
        """The response-cache key of this request under this client's model and sampling parameters."""
        return cache_key(
            model=self.cfg.model,
            messages=messages,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
            template_version=template_version,
        )

    def forget(self, messages: Sequence[Mapping[str, str]], template_version: str) -> bool:
        """Drop a cached answer (one that failed validation), so that asking again really asks; True if cached."""
        return self.cache.forget(self.cache_key(messages, template_version))

    # --- calls -------------------------------------------------------------------------------------------------
    def chat(
        self, messages: list[dict[str, str]], *, template_version: str, tags: dict[str, str] | None = None
    ) -> ChatResult:
        """Answer `messages`: from the cache, or by HTTP with retries. Never raises for a failed call (the result
        has `text=None` and `error`), except `LLMAuthError` for refused credentials or quota."""
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        started = time.monotonic()
        hit = self.cached(messages, template_version=template_version, tags=tags)
        if hit is not None:
            return hit
        key = self.cache_key(messages, template_version)
        estimate = count_message_tokens(messages)

        def send() -> tuple[str, int, int]:
            raw = self._client.chat.completions.with_raw_response.create(**self.request_body(messages))
            self.adopt_limits(raw.headers)
            text, pt, ct = self._read_answer(raw.parse(), estimate)
            # Cache first, before any bookkeeping: an answer paid for is kept even if the process dies now.
            self.cache.put(key, {"text": text, "prompt_tokens": pt, "completion_tokens": ct, "model": self.cfg.model})
            return text, pt, ct

        try:
            text, pt, ct, attempts = self.call(send, estimate=estimate, reserve=estimate + self.cfg.max_tokens,
                                               tags=tags)
        except CallFailed as exc:
            return ChatResult(None, 0, 0, False, exc.attempts, time.monotonic() - started, str(exc))
        return ChatResult(text, pt, ct, False, attempts, time.monotonic() - started, None)

    def cached(self, messages: list[dict[str, str]], *, template_version: str, tags: dict[str, str] | None = None
               ) -> ChatResult | None:
        """The answer to `messages` from the response cache (a cache-hit usage event), or None."""
        started = time.monotonic()
        hit = self.cache.get(self.cache_key(messages, template_version))
        if hit is None:
            return None
        pt, ct = int(hit.get("prompt_tokens", 0)), int(hit.get("completion_tokens", 0))
        self.emit({str(k): str(v) for k, v in (tags or {}).items()}, attempt=0, outcome="ok", prompt_tokens=pt,
                  completion_tokens=ct, cached=True, latency_s=time.monotonic() - started)
        return ChatResult(hit["text"], pt, ct, True, 0, time.monotonic() - started, None)

    @staticmethod
    def _read_answer(response: Any, prompt_estimate: int) -> tuple[str, int, int]:
        """(text, prompt_tokens, completion_tokens) of a completion; `Retryable` when it is not one."""
        try:
            message = response.choices[0].message
        except (AttributeError, IndexError, TypeError):
            raise Retryable("bad_response", "answer is not a chat completion", retryable=True) from None
        text = message.content or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            return text, int(usage.prompt_tokens), int(usage.completion_tokens or 0)
        # Some servers omit usage: fall back to counting, so the ledger and limits still see tokens.
        return text, prompt_estimate, count_tokens(text)

    def close(self) -> None:
        """Close the HTTP connections and the cache handle."""
        super().close()
        self.cache.close()
