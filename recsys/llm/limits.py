"""Client-side rate limits: requests per minute, tokens per minute, and requests in flight.

Why a small bucket of our own instead of pyrate-limiter or aiolimiter: a request's token weight is only an estimate
(prompt tokens + `max_tokens`) until the answer's `usage` arrives, and the difference must be refunded or charged
afterwards. aiolimiter is asyncio-only and has no refund; pyrate-limiter's buckets record hits but cannot give
weight back. Both would also need a second mechanism for the in-flight bound. So: one lock, two token buckets and a
counter, all in this module, with a clock that tests can replace.

Pacing. A server that enforces "R requests in any 60 s window" rejects a client whose bucket starts full: a bucket
of capacity C refilled at R/60 per second admits C + R requests in the first minute. So the buckets here are
smoothed: capacity is a small burst (2.5 % of the per-minute limit, at least one request) and the refill rate is
95 % of the limit. At most C + 0.95 R <= R requests fall in any 60 s window (see `window_bound`), with a few
seconds of slack for network jitter, and a long run still reaches 0.95 R.

Limits announced by the endpoint. OpenAI answers every request with `x-ratelimit-limit-requests` and
`x-ratelimit-limit-tokens` (the account's per-minute limits for the model) and `-remaining-` / `-reset-` companions.
`announce(rpm, tpm)` makes an announced limit replace the configured one (the caller caps it first); a limit the
endpoint never announced stays as configured. `pause` covers an exhausted window (`remaining` 0 until `reset`).

Order of waiting: a request first takes an in-flight slot and only then its rate tokens, and is sent right after.
Taking rate tokens first and then queueing for a slot would let requests that were admitted over a longer span
reach the server inside one window.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

RATE_FACTOR = 0.95  # refill at 95 % of the configured limit: headroom for jitter against a server-side window
BURST_FRACTION = 0.025  # bucket capacity as a fraction of the per-minute limit (at least 1)
_EPS = 1e-9


class TokenBucket:
    """A token bucket that may run into debt: a refund adds tokens (up to capacity), a charge removes them (the
    level may go below zero, which delays later takers). Not thread-safe on its own; `RateLimiter` guards it."""

    def __init__(self, rate_per_s: float, capacity: float, *, now: float, initial: float | None = None) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_s
        self.capacity = capacity
        self.level = capacity if initial is None else min(initial, capacity)
        self._updated = now

    @classmethod
    def per_minute(cls, limit: float, *, now: float) -> TokenBucket:
        """The smoothed bucket for a limit of `limit` units per minute (see the module docstring)."""
        return cls(limit * RATE_FACTOR / 60.0, max(1.0, limit * BURST_FRACTION), now=now)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
            self._updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken; 0 when it can be taken now. An amount above the capacity is taken
        when the bucket is full (the level then goes negative), so an oversized request is slowed, not stuck."""
        self._refill(now)
        need = min(amount, self.capacity)
        if self.level + _EPS >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Remove `amount` tokens (call after `wait_time` returned 0)."""
        self._refill(now)
        self.level -= amount

    def adjust(self, delta: float, now: float) -> None:
        """Give back (`delta` > 0) or charge (`delta` < 0) tokens after the fact."""
        self._refill(now)
        self.level = min(self.capacity, self.level + delta)

    def window_bound(self, window_s: float = 60.0) -> float:
        """Most units a full bucket lets through in any span of `window_s` seconds: capacity + refill."""
        return self.capacity + self.rate * window_s


@dataclass
class Reservation:
    """One admitted request: its reserved token weight; hand it back with `RateLimiter.release`."""

    tokens: int
    released: bool = False


class RateLimiter:
    """Requests/minute and tokens/minute buckets plus a bound on requests in flight, thread-safe.

    `acquire(tokens)` blocks until the request may be sent; `release(reservation, actual_tokens=...)` frees its
    slot and corrects the token bucket by what the answer really used. `pause(s)` holds every caller (a server's
    Retry-After applies to the whole client, not one thread)."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        max_in_flight: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._paused_until = 0.0
        self._settings: tuple[int | None, int | None, int] | None = None
        self._announced: tuple[int | None, int | None] = (None, None)
        self._effective: tuple[int | None, int | None] | None = None
        self.configure(rpm, tpm, max_in_flight)

    @property
    def settings(self) -> tuple[int | None, int | None, int]:
        """(rpm, tpm, max_in_flight) as configured."""
        assert self._settings is not None
        return self._settings

    @property
    def effective(self) -> tuple[int | None, int | None, int]:
        """(rpm, tpm, max_in_flight) in force: an announced limit replaces the configured one."""
        with self._cond:
            assert self._effective is not None and self._settings is not None
            return (*self._effective, self._settings[2])

    def configure(self, rpm: int | None, tpm: int | None, max_in_flight: int) -> None:
        """Set the configured limits (None: no limit of that kind). Buckets are rebuilt only when the limit in
        force changes."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        with self._cond:
            self._max_in_flight = max_in_flight
            self._settings = (rpm, tpm, max_in_flight)
            self._apply_locked()

    def announce(self, rpm: int | None, tpm: int | None) -> None:
        """The endpoint's own per-minute limits (None: not announced, the configured one stays)."""
        with self._cond:
            self._announced = (rpm or self._announced[0], tpm or self._announced[1])
            self._apply_locked()

    def _apply_locked(self) -> None:
        assert self._settings is not None
        now = self._clock()
        rpm = self._announced[0] or self._settings[0]
        tpm = self._announced[1] or self._settings[1]
        old = self._effective
        if old is None or old[0] != rpm:
            self._rpm = TokenBucket.per_minute(rpm, now=now) if rpm else None
        if old is None or old[1] != tpm:
            self._tpm = TokenBucket.per_minute(tpm, now=now) if tpm else None
        if old is not None and old != (rpm, tpm):
            log.info("rate limits in force: %s requests/min, %s tokens/min", rpm, tpm)
        self._effective = (rpm, tpm)
        self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        with self._cond:
            return self._in_flight

    def _rate_wait_locked(self, tokens: int, now: float) -> float:
        wait = self._paused_until - now
        if self._rpm is not None:
            wait = max(wait, self._rpm.wait_time(1, now))
        if self._tpm is not None:
            wait = max(wait, self._tpm.wait_time(tokens, now))
        if wait > 0:
            return wait
        # Both buckets are taken together, so a request never holds one limit's share while waiting for the other.
        if self._rpm is not None:
            self._rpm.take(1, now)
        if self._tpm is not None:
            self._tpm.take(tokens, now)
        return 0.0

    def try_acquire_rate(self, tokens: int) -> float:
        """Non-blocking: take one request and `tokens` from the buckets and return 0.0, or return the seconds to
        wait before trying again (nothing taken). Ignores the in-flight bound."""
        with self._cond:
            return self._rate_wait_locked(tokens, self._clock())

    def acquire(self, tokens: int, timeout: float | None = None) -> Reservation:
        """Block until one request of `tokens` weight may be sent: an in-flight slot first, then the rate budget.
        Raises TimeoutError after `timeout` seconds (the slot is given back)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._in_flight >= self._max_in_flight:
                if not self._cond.wait(_remaining(deadline)) and _expired(deadline):
                    raise TimeoutError("no request slot became free")
            self._in_flight += 1
            try:
                while True:
                    wait = self._rate_wait_locked(tokens, self._clock())
                    if wait <= 0:
                        return Reservation(tokens)
                    if _expired(deadline):
                        raise TimeoutError("rate limit budget not available in time")
                    rem = _remaining(deadline)
                    self._cond.wait(wait if rem is None else min(wait, rem))
            except BaseException:
                self._in_flight -= 1
                self._cond.notify_all()
                raise

    def release(self, reservation: Reservation, *, actual_tokens: int | None = None) -> None:
        """Free the request's slot; when the answer's real token use is known, refund (or charge) the difference
        between it and the reserved weight. Releasing twice is a no-op."""
        with self._cond:
            if reservation.released:
                return
            reservation.released = True
            self._in_flight -= 1
            if actual_tokens is not None:
                self._correct_locked(reservation.tokens, actual_tokens)
            self._cond.notify_all()

    def correct(self, reserved_tokens: int, actual_tokens: int) -> None:
        """Refund (actual < reserved) or charge (actual > reserved) the token bucket; for callers that took
        budget with `try_acquire_rate`."""
        with self._cond:
            self._correct_locked(reserved_tokens, actual_tokens)
            self._cond.notify_all()

    def _correct_locked(self, reserved_tokens: int, actual_tokens: int) -> None:
        if self._tpm is not None:
            self._tpm.adjust(reserved_tokens - actual_tokens, self._clock())

    @contextmanager
    def slot(self, tokens: int) -> Iterator[Reservation]:
        """`acquire` ... `release` as a context manager (no token correction unless the body releases itself)."""
        reservation = self.acquire(tokens)
        try:
            yield reservation
        finally:
            self.release(reservation)

    def pause(self, seconds: float) -> None:
        """Admit nothing for `seconds` (extends, never shortens, a pause already in force)."""
        if seconds <= 0:
            return
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


_REGISTRY: dict[tuple[str, str], RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(base_url: str, model: str, *, rpm: int | None, tpm: int | None, max_in_flight: int) -> RateLimiter:
    """The process-wide limiter for one (base_url, model): every client of that endpoint and model shares it, so
    the limits hold for the process as a whole. A client asking for other limits reconfigures it (latest wins)."""
    key = (base_url.rstrip("/"), model)
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = RateLimiter(rpm, tpm, max_in_flight)
        elif limiter.settings != (rpm, tpm, max_in_flight):
            log.info("rate limits for %s %s changed from %s to %s", key[0], model, limiter.settings,
                     (rpm, tpm, max_in_flight))
            limiter.configure(rpm, tpm, max_in_flight)
        return limiter


def clear_shared_limiters() -> None:
    """Forget every shared limiter (tests start from fresh buckets)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}


def parse_reset(text: str | None) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value ("1s", "6m0s", "59.2s", "20ms", "1h2m3s", or plain seconds);
    None when it is not one."""
    if not text:
        return None
    text = text.strip()
    try:
        value = float(text)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


@dataclass(frozen=True)
class Announced:
    """What an endpoint's `x-ratelimit-*` headers say: its per-minute limits (None: not said) and how long until
    an exhausted window resets (0: not exhausted)."""

    rpm: int | None
    tpm: int | None
    wait_s: float


def announced_limits(headers: Mapping[str, str] | None) -> Announced:
    """The limits in OpenAI's `x-ratelimit-limit-requests`, `-limit-tokens`, `-remaining-requests`,
    `-remaining-tokens`, `-reset-requests` and `-reset-tokens` headers; unreadable values count as absent."""
    headers = headers or {}
    wait = 0.0
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() == "0":
            wait = max(wait, parse_reset(headers.get(f"x-ratelimit-reset-{kind}")) or 0.0)
    return Announced(_positive_int(headers.get("x-ratelimit-limit-requests")),
                     _positive_int(headers.get("x-ratelimit-limit-tokens")), wait)
