"""The one LLM client: OpenAI-compatible chat completions with a response cache, rate limits and one retry layer.

It uses the official `openai` package with only standard parameters (model, messages, temperature, top_p,
max_tokens), so it works unchanged against OpenAI, vLLM, Ollama, llama.cpp and the local test server. The SDK's
own retries are off (`max_retries=0`): tenacity here is the only retry layer, so attempts, waits and the usage
record of every attempt are all in one place.

A call goes: response cache -> (per attempt) in-flight slot + RPM/TPM budget -> `before_request` hook -> HTTP ->
usage event. The hook (e.g. a limit shared by several processes) is called once per HTTP attempt, never for a
cache hit; whatever it raises ends the call (and is not retried). Retried:
429, 408, 409, 5xx, timeouts, dropped connections and unparseable answers, with exponential backoff and jitter, and
never sooner than the server's Retry-After. Not retried: other 4xx (the call's result carries the error). 401/403
and an exhausted quota raise `LLMAuthError`, since every later call would fail the same way.

The API key is handed to the SDK and to nothing else: it is not in the cache key, a usage event, a log line or an
error string (server messages are scrubbed of it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import openai
from tenacity import RetryCallState

from recsys.config import LLMConfig
from recsys.llm.cache import ResponseCache, cache_key
from recsys.llm.limits import RateLimiter, shared_limiter
from recsys.llm.pricing import PriceTable, load_price_table
from recsys.llm.retry import (  # noqa: F401  (re-exported: callers import these from here)
    AUTH_STATUSES,
    FATAL_CODES,
    RETRY_STATUSES,
    AttemptFailed,
    Retryable,
    backoff_s,
    classify,
    log_retry,
    parse_retry_after,
    retrying,
)
from recsys.llm.tokens import count_message_tokens, count_tokens

log = logging.getLogger(__name__)

BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"  # local servers ignore the key, but the SDK insists on one


class LLMError(RuntimeError):
    """A problem with the LLM endpoint that no retry will fix."""


class LLMConfigError(LLMError, ValueError):
    """The client cannot be built from the configuration (e.g. no API key for OpenAI's API)."""


class LLMAuthError(LLMError):
    """The endpoint refused the credentials (401/403) or the account has no quota left."""


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
    stage: str | None = None
    batch: str | None = None
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """A plain dict for the ledger (tags other than stage/batch are kept as `tags`)."""
        row = asdict(self)
        row["retries"] = max(0, self.attempt - 1)
        return row


class ChatClient(Protocol):
    """What the augmentors need from a chat client."""

    def chat(
        self, messages: list[dict[str, str]], *, template_version: str, tags: dict[str, str] | None = None
    ) -> ChatResult: ...


UsageSink = Callable[[UsageEvent], None]
BeforeRequest = Callable[[], None]  # blocks until one more HTTP request may go out; raises to stop the call


# The retry layer lives in recsys.llm.retry (shared with the embeddings client); the old names stay importable.
_AttemptFailed = AttemptFailed
_Retryable = Retryable


def resolve_endpoint(cfg: LLMConfig, api_key: str | None = None) -> tuple[str, str]:
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


class LLMClient:
    """Chat completions through the official `openai` package; thread-safe (call `chat` from many threads).

    Limits are shared by every client of the same (base_url, model) in the process; the cache is shared by every
    client (and process) using the same `cache_dir`."""

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        cache_dir: str | Path,
        usage_sink: UsageSink | None = None,
        api_key: str | None = None,
        before_request: BeforeRequest | None = None,
    ) -> None:
        self.cfg = cfg
        self.base_url, key = resolve_endpoint(cfg, api_key)
        self._secret = key
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.cache = ResponseCache(cache_dir)
        self.limiter: RateLimiter = shared_limiter(
            self.base_url, cfg.model, rpm=cfg.rpm, tpm=cfg.tpm, max_in_flight=cfg.max_in_flight
        )
        self.prices: PriceTable = load_price_table(cfg.price_table)
        self._sink = usage_sink
        self._before_request = before_request

    def __repr__(self) -> str:  # never the key
        return f"LLMClient(model={self.cfg.model!r}, base_url={self.base_url!r})"

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
        key = self.cache_key(messages, template_version)
        hit = self.cache.get(key)
        if hit is not None:
            pt, ct = int(hit.get("prompt_tokens", 0)), int(hit.get("completion_tokens", 0))
            self._emit(tags, attempt=0, outcome="ok", prompt_tokens=pt, completion_tokens=ct, cached=True,
                       latency_s=time.monotonic() - started)
            return ChatResult(hit["text"], pt, ct, True, 0, time.monotonic() - started, None)

        prompt_estimate = count_message_tokens(messages)
        attempts = 0

        def one_attempt() -> tuple[str, int, int]:
            nonlocal attempts
            attempts += 1
            return self._attempt(messages, prompt_estimate, attempts, tags, key)

        loop = retrying(max_attempts=self.cfg.max_attempts, initial=self.cfg.backoff_initial_s,
                        maximum=self.cfg.backoff_max_s)
        try:
            text, pt, ct = loop(one_attempt)
        except _Retryable as exc:
            return ChatResult(None, 0, 0, False, attempts, time.monotonic() - started,
                              f"{exc.description} after {attempts} attempts")
        except _AttemptFailed as exc:
            return ChatResult(None, 0, 0, False, attempts, time.monotonic() - started, exc.description)
        return ChatResult(text, pt, ct, False, attempts, time.monotonic() - started, None)

    def _attempt(
        self, messages: list[dict[str, str]], prompt_estimate: int, attempt: int, tags: dict[str, str], key: str
    ) -> tuple[str, int, int]:
        """One HTTP request under the limiter; caches the answer, emits its usage event; raises `_AttemptFailed`
        on failure."""
        reservation = self.limiter.acquire(prompt_estimate + self.cfg.max_tokens)
        actual_tokens: int | None = None
        try:
            if self._before_request is not None:
                self._before_request()  # outside the classifying try: its errors are not HTTP failures
            t0 = time.monotonic()
            try:
                response = self._client.chat.completions.create(
                    model=self.cfg.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.cfg.temperature,
                    top_p=self.cfg.top_p,
                    max_tokens=self.cfg.max_tokens,
                )
                text, pt, ct = self._read_answer(response, prompt_estimate)
                # Cache first, before any bookkeeping: an answer paid for is kept even if the process dies now.
                self.cache.put(key, {"text": text, "prompt_tokens": pt, "completion_tokens": ct,
                                     "model": self.cfg.model})
            except Exception as exc:
                latency = time.monotonic() - t0
                failure = self._classify(exc)
                if isinstance(exc, openai.APIStatusError):
                    actual_tokens = prompt_estimate  # the server answered at once: nothing was generated
                if failure.retry_after and failure.outcome == "http_429":
                    self.limiter.pause(failure.retry_after)  # the whole client backs off, not only this thread
                self._emit(tags, attempt=attempt, outcome=failure.outcome, prompt_tokens=0, completion_tokens=0,
                           cached=False, latency_s=latency, error=failure.description)
                if failure.fatal:
                    raise LLMAuthError(failure.description) from None
                raise failure from None
            actual_tokens = pt + ct
        finally:
            self.limiter.release(reservation, actual_tokens=actual_tokens)
        self._emit(tags, attempt=attempt, outcome="ok", prompt_tokens=pt, completion_tokens=ct, cached=False,
                   latency_s=time.monotonic() - t0)
        return text, pt, ct

    @staticmethod
    def _read_answer(response: Any, prompt_estimate: int) -> tuple[str, int, int]:
        """(text, prompt_tokens, completion_tokens) of a completion; `_Retryable` when it is not one."""
        try:
            message = response.choices[0].message
        except (AttributeError, IndexError, TypeError):
            raise _Retryable("bad_response", "answer is not a chat completion", retryable=True) from None
        text = message.content or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            return text, int(usage.prompt_tokens), int(usage.completion_tokens or 0)
        # Some servers omit usage: fall back to counting, so the ledger and limits still see tokens.
        return text, prompt_estimate, count_tokens(text)

    def _classify(self, exc: Exception) -> _AttemptFailed:
        """Map an SDK exception to a retryable failure, a final failure, or an auth error."""
        return classify(exc, timeout_s=self.cfg.timeout_s, base_url=self.base_url, scrub=self._scrub)

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never less than the server's Retry-After."""
        return backoff_s(state, initial=self.cfg.backoff_initial_s, maximum=self.cfg.backoff_max_s)

    def _log_retry(self, state: RetryCallState) -> None:
        log_retry(state)

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that came from elsewhere (error messages may echo it)."""
        if self._secret and self._secret != LOCAL_PLACEHOLDER_KEY and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _emit(self, tags: dict[str, str], *, attempt: int, outcome: str, prompt_tokens: int, completion_tokens: int,
              cached: bool, latency_s: float, error: str | None = None) -> None:
        if self._sink is None:
            return
        cost = self.prices.cost(self.cfg.model, prompt_tokens, completion_tokens, cached=cached)
        if outcome != "ok":
            cost = 0.0  # failed attempts are not billed
        event = UsageEvent(
            timestamp=time.time(), model=self.cfg.model, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cached=cached, latency_s=latency_s, attempt=attempt,
            outcome=outcome, cost_usd=cost, stage=tags.get("stage"), batch=tags.get("batch"), error=error,
            tags=dict(tags),
        )
        self._sink(event)

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP connections and the cache handle."""
        self._client.close()
        self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
