"""The one retry layer shared by every OpenAI-compatible call (chat in `client.py`, embeddings in
`recsys.embed.remote`): how an SDK exception is classified, how long to wait, and the tenacity loop.

Retried: 429, 408, 409, 5xx, timeouts, dropped connections and unparseable answers, with exponential backoff and
jitter, never sooner than the server's Retry-After. Not retried: other 4xx. 401/403 and an exhausted quota are
`fatal` (every later call would fail the same way). Error descriptions are scrubbed of the API key by the caller's
`scrub` function.
"""

from __future__ import annotations

import email.utils
import logging
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
    ) -> None:
        super().__init__(description)
        self.outcome = outcome
        self.description = description
        self.retryable = retryable
        self.retry_after = retry_after
        self.fatal = fatal  # the caller raises its auth error: no later call can succeed either


class Retryable(AttemptFailed):
    """A failed attempt worth trying again."""


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent/bad."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(exc: Exception, *, timeout_s: float, base_url: str, scrub: Callable[[str], str]) -> AttemptFailed:
    """Map an SDK exception to a retryable failure, a final failure, or a fatal (auth/quota) one."""
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
        if status in RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(exc.response.headers)
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
