"""Rate limits: simulated minutes on a fake clock (sliding-window safety, long-run throughput, TPM refunds), and
real threads for the in-flight bound and a short real-time RPM run."""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Iterator

import pytest

from recsys.llm.limits import (
    RateLimiter,
    TokenBucket,
    clear_shared_limiters,
    shared_limiter,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _max_in_window(stamps: list[float], window: float = 60.0) -> int:
    """Most stamps inside any half-open window (t - window, t] — the server's sliding-window count."""
    stamps = sorted(stamps)
    return max((i + 1 - bisect.bisect_right(stamps, t - window) for i, t in enumerate(stamps)), default=0)


def _greedy(limiter: RateLimiter, clock: FakeClock, seconds: float, tokens: int = 1) -> list[float]:
    """Admission times of a caller that always wants one more request."""
    stamps = []
    while clock.t < seconds:
        wait = limiter.try_acquire_rate(tokens)
        if wait == 0:
            stamps.append(clock.t)
        else:
            clock.t += wait
    return stamps


@pytest.mark.parametrize("rpm", [1, 5, 10, 60, 120, 600, 3000])
def test_rpm_never_exceeds_a_sliding_window_and_reaches_90_percent(rpm: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm, None, 1, clock=clock)
    minutes = 5
    stamps = _greedy(limiter, clock, 60.0 * minutes)
    assert _max_in_window(stamps) <= rpm  # a server enforcing the same limit never answers 429
    assert len(stamps) >= 0.9 * rpm * minutes


@pytest.mark.parametrize("rpm", [60, 600])
def test_rpm_has_headroom_for_network_jitter(rpm: int) -> None:
    clock = FakeClock()
    stamps = _greedy(RateLimiter(rpm, None, 1, clock=clock), clock, 300.0)
    rng = random.Random(0)
    arrivals = [t + rng.uniform(0.0, 1.0) for t in stamps]  # up to 1 s between admission and arrival
    assert _max_in_window(arrivals) <= rpm


def test_a_bucket_that_starts_full_would_burst_over_the_window() -> None:
    # The reason for the smoothed bucket: capacity R at rate R/60 admits ~2R in the first minute.
    clock = FakeClock()
    naive = TokenBucket(600 / 60, 600, now=0.0)
    stamps = []
    while clock.t < 120:
        wait = naive.wait_time(1, clock.t)
        if wait == 0:
            naive.take(1, clock.t)
            stamps.append(clock.t)
        else:
            clock.t += wait
    assert _max_in_window(stamps) > 600


def test_tpm_with_refunds_reaches_the_limit_without_exceeding_it() -> None:
    """Requests reserve prompt + max_tokens = 800 but use 500; the refund at completion (0.5 s later) lets the
    actual token rate approach the TPM limit; the actual tokens in any minute stay under it."""
    clock = FakeClock()
    tpm, reserved, used, latency = 20_000, 800, 500, 0.5
    limiter = RateLimiter(None, tpm, 100, clock=clock)
    pending: list[float] = []  # completion times
    stamps: list[float] = []
    while clock.t < 300:
        for done in [p for p in pending if p <= clock.t]:
            limiter.correct(reserved, used)
            pending.remove(done)
        wait = limiter.try_acquire_rate(reserved)
        if wait == 0:
            stamps.append(clock.t)
            pending.append(clock.t + latency)
        else:  # sleep until the budget is there or a completion refunds tokens, whichever is first
            clock.t = min([clock.t + wait, *pending])
    per_minute = used * len(stamps) / 5
    assert per_minute >= 0.9 * tpm  # without refunds it would be 500/800 of the limit
    assert used * _max_in_window(stamps) <= tpm


def test_tpm_without_refund_is_bounded_by_reservations() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 12_000, 1, clock=clock)
    stamps = _greedy(limiter, clock, 120.0, tokens=1000)
    assert 1000 * _max_in_window(stamps) <= 12_000
    assert len(stamps) >= 0.9 * 12 * 2


def test_oversized_request_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 6000, 1, clock=clock)  # capacity 150 tokens, refill 95/s
    assert limiter.try_acquire_rate(1000) == 0.0  # full bucket: admitted, level -850
    wait = limiter.try_acquire_rate(10)
    assert wait == pytest.approx(860 / 95, rel=1e-6)  # pays the debt first
    clock.t += wait
    assert limiter.try_acquire_rate(10) == 0.0


def test_refund_and_charge_correct_the_token_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 60_000, 4, clock=clock)  # capacity 1500
    res = limiter.acquire(1500)
    assert limiter.try_acquire_rate(1000) > 0
    limiter.release(res, actual_tokens=300)  # 1200 refunded
    assert limiter.try_acquire_rate(1000) == 0.0
    # a charge: the answer used more than reserved; later requests wait for it
    clock.t += 100
    res3 = limiter.acquire(100)
    limiter.release(res3, actual_tokens=1600)
    assert limiter.try_acquire_rate(100) > 0


def test_pause_holds_every_caller() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, None, 4, clock=clock)
    limiter.pause(5.0)
    assert limiter.try_acquire_rate(1) == pytest.approx(5.0)
    clock.t = 5.0
    assert limiter.try_acquire_rate(1) == 0.0


def test_max_in_flight_with_threads() -> None:
    limiter = RateLimiter(None, None, 3)
    active, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with limiter.slot(10):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3 and limiter.in_flight == 0


def test_acquire_times_out_and_gives_the_slot_back() -> None:
    limiter = RateLimiter(1, None, 1)
    first = limiter.acquire(1)
    with pytest.raises(TimeoutError):
        limiter.acquire(1, timeout=0.1)  # no slot
    limiter.release(first)
    with pytest.raises(TimeoutError):
        limiter.acquire(1, timeout=0.1)  # slot free, but the 1-rpm budget is spent
    assert limiter.in_flight == 0


def test_rpm_in_real_time_with_threads() -> None:
    limiter = RateLimiter(120, None, 8)  # bucket 3, refill 1.9/s
    stamps: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + 3.0

    def work() -> None:
        while True:
            try:
                res = limiter.acquire(1, timeout=max(0.0, stop - time.monotonic()))
            except TimeoutError:
                return
            now = time.monotonic()
            limiter.release(res)
            if now >= stop:
                return
            with lock:
                stamps.append(now)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bound = 3 + 0.95 * 2 * 3.0  # capacity + refill over the run
    assert int(bound) - 2 <= len(stamps) <= int(bound)


@pytest.fixture
def _clean_registry() -> Iterator[None]:
    clear_shared_limiters()
    yield
    clear_shared_limiters()


@pytest.mark.usefixtures("_clean_registry")
def test_shared_limiter_is_one_per_endpoint_and_model() -> None:
    a = shared_limiter("http://h/v1/", "m", rpm=60, tpm=None, max_in_flight=2)
    b = shared_limiter("http://h/v1", "m", rpm=60, tpm=None, max_in_flight=2)
    c = shared_limiter("http://h/v1", "other", rpm=60, tpm=None, max_in_flight=2)
    assert a is b and a is not c
    d = shared_limiter("http://h/v1", "m", rpm=30, tpm=1000, max_in_flight=4)
    assert d is a and a.settings == (30, 1000, 4)
