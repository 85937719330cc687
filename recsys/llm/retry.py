"""The one retry layer shared by every OpenAI-compatible call (chat in `client.py`, embeddings in
`recsys.embed.remote`): how an SDK exception is classified, how long to wait, and the tenacity loop.

Retried: 429, 408, 409, 5xx, timeouts, dropped connections and unparseable answers, with exponential backoff and
jitter, never sooner than the server's Retry-After. A Retry-After longer than the longest backoff (`backoff_max_s`,
e.g. a daily quota's "86400") is not waited for: that attempt fails the call at once, with the demanded wait in
its description; a value that is not a finite number of seconds or an HTTP date ("inf", "soon") is ignored. Not
retried: other 4xx. 401/403 and an exhausted quota are `fatal` (every later call would fail the same way), and so
is a request field the server does not support (`unsupported`: a `response_format` a server rejects with 400 or
500, as llama.cpp does). Error descriptions are scrubbed of the API key by the caller's `scrub` function.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

log = logging.getLogger("recsys.llm.client")

RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx
AUTH_STATUSES = frozenset({401, 403})
FATAL_CODES = frozenset({"insufficient_quota"})  # OpenAI's 429 for an empty account: waiting does not help


class AttemptFailed(Exception):
    """One HTTP attempt failed; `retryable` decides whether tenacity tries again."""

    def __init__(
        self,
        outcome: str,
        description: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        fatal: bool = False,
        unsupported: bool = False,
    ) -> None:
        super().__init__(description)
        self.outcome = outcome
        self.description = description
        self.retryable = retryable
        self.retry_after = retry_after
        self.fatal = fatal  # the caller raises its auth error: no later call can succeed either
        self.unsupported = unsupported  # the server rejects a request field: no later call can succeed either


class Retryable(AttemptFailed):
    """A failed attempt worth trying again."""


def _seconds(text: str, scale: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds from `text` (times `scale`); None for anything else ("inf", "nan",
    "soon")."""
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent or not a
    finite number or date (such a header is ignored)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None and (seconds := _seconds(ms.strip(), 1e-3)) is not None:
        return seconds
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if (seconds := _seconds(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _wait_text(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 3600 else f"{seconds:g} s ({seconds / 3600:.3g} h)"


def classify(exc: Exception, *, timeout_s: float, base_url: str, scrub: Callable[[str], str],
             max_wait_s: float | None = None) -> AttemptFailed:
    """Map an SDK exception to a retryable failure, a final failure, or a fatal (auth/quota) one. A Retry-After
    above `max_wait_s` makes the failure final (see the module docstring)."""
    if isinstance(exc, AttemptFailed):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return Retryable("timeout", f"timeout after {timeout_s:g} s", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return Retryable("connection", f"connection error ({scrub(str(exc.__cause__ or exc))})", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = scrub(exc.message)
        if status in AUTH_STATUSES or (exc.code in FATAL_CODES):
            return AttemptFailed(f"http_{status}", f"HTTP {status} from {base_url}: {detail}",
                                 retryable=False, fatal=True)
        if status in (400, 500) and "response_format" in detail:
            return AttemptFailed(f"http_{status}", f"HTTP {status} from {base_url}: {detail}", retryable=False,
                                 unsupported=True)
        if status in RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(exc.response.headers)
            if retry_after is not None and max_wait_s is not None and retry_after > max_wait_s:
                return AttemptFailed(f"http_{status}", f"HTTP {status}: the server asks to wait "
                                     f"{_wait_text(retry_after)} (Retry-After), longer than backoff_max_s="
                                     f"{max_wait_s:g} s", retryable=False, retry_after=retry_after)
            return Retryable(f"http_{status}", f"HTTP {status}", retryable=True, retry_after=retry_after)
        return AttemptFailed(f"http_{status}", f"HTTP {status}: {detail}", retryable=False)
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return Retryable("bad_response", f"unreadable answer ({type(exc).__name__})", retryable=True)
    return Retryable("error", f"{type(exc).__name__}: {scrub(str(exc))}", retryable=True)


def backoff_s(state: RetryCallState, *, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter, but never less than the server's Retry-After."""
    # initial * 2^(n-1) plus up to `initial` of jitter, capped (computed here: tenacity renamed the
    # parameters of wait_exponential_jitter between the versions we support).
    backoff = min(maximum, initial * 2 ** (state.attempt_number - 1) + random.uniform(0, initial))
    exc = state.outcome.exception() if state.outcome is not None else None
    retry_after = getattr(exc, "retry_after", None)
    return max(backoff, retry_after) if retry_after else backoff


def log_retry(state: RetryCallState, *, what: str = "LLM") -> None:
    """One INFO line per retried attempt."""
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("%s attempt %d failed (%s); retrying in %.2f s", what, state.attempt_number,
             getattr(exc, "description", type(exc).__name__), wait)


def retrying(*, max_attempts: int, initial: float, maximum: float, what: str = "LLM") -> Retrying:
    """The tenacity loop: retry `Retryable` up to `max_attempts` attempts; re-raise the last failure."""
    return Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=lambda state: backoff_s(state, initial=initial, maximum=maximum),
        retry=retry_if_exception_type(Retryable),
        before_sleep=lambda state: log_retry(state, what=what),
        reraise=True,
    )
