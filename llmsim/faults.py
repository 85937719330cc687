"""Fault injection for the local server: settings, a seeded decision source and a sliding-window RPM limit.

All faults are off by default. The same names are CLI flags (`--error-rate`), environment variables
(`LLMREC_SERVER_ERROR_RATE`) and keys of the `POST /admin/faults` body.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "LLMREC_SERVER_"


class FaultConfig(BaseModel):
    """What the server does wrong, and how often. Rates are per request probabilities drawn from one RNG seeded
    with `seed`, so a run with the same seed and the same request order sees the same faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm_limit: int | None = Field(None, gt=0, description="requests per 60 s sliding window; excess -> 429")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests answered with HTTP 500")
    latency_ms: float = Field(0.0, ge=0.0, description="milliseconds added to every answer")
    hang_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests that sleep hang_s first")
    hang_s: float = Field(30.0, ge=0.0, description="seconds a hanging request sleeps before answering")
    malformed_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of chat answers that are non-JSON prose")
    out_of_candidates_rate: float = Field(0.0, ge=0.0, le=1.0,
                                          description="share of edge answers naming an index outside the list")
    drop_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of requests whose connection is closed unanswered")
    fail_match: str | None = Field(None, min_length=1,
                                   description="any request whose messages contain this substring gets HTTP 500")
    seed: int | None = Field(None, description="RNG seed (None: 0)")


class Fault(StrEnum):
    """What happens to one request."""

    NONE = "none"
    RATE_LIMITED = "rate_limited"
    FAIL_MATCH = "fail_match"
    DROP = "dropped"
    ERROR = "error"


@dataclass(frozen=True)
class Decision:
    """The fault plan for one request, drawn once when it arrives."""

    fault: Fault
    retry_after_s: int = 0  # for RATE_LIMITED
    hang_s: float = 0.0
    latency_s: float = 0.0
    malformed: bool = False
    out_of_candidates: bool = False
    draw: float = 0.0  # a uniform number for choosing among fault variants (e.g. which malformed text)


class FaultInjector:
    """Thread-safe: one lock guards the RNG and the RPM window, so decisions stay consistent under concurrency."""

    WINDOW_S = 60.0

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed or 0)
        self._admitted: deque[float] = deque()

    @property
    def config(self) -> FaultConfig:
        """The current settings."""
        return self._config

    def replace(self, config: FaultConfig) -> None:
        """Swap in new settings; the RNG is re-seeded and the RPM window emptied (a fresh start)."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed or 0)
            self._admitted.clear()

    def _hit(self, rate: float) -> bool:
        # Draw only for enabled faults, so enabling one fault does not shift the others' sequence when it is off.
        return rate > 0.0 and self._rng.random() < rate

    def decide(self, text: str, *, chat: bool) -> Decision:
        """The fault plan for a request whose message (or input) text is `text`. Order: RPM limit (rejected requests
        do not count against the window), fail_match, drop, error, then hang/latency and answer corruption."""
        now = time.monotonic()
        with self._lock:
            cfg = self._config
            if cfg.rpm_limit is not None:
                while self._admitted and self._admitted[0] <= now - self.WINDOW_S:
                    self._admitted.popleft()
                if len(self._admitted) >= cfg.rpm_limit:
                    wait = self._admitted[0] + self.WINDOW_S - now
                    return Decision(Fault.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
                self._admitted.append(now)
            latency = cfg.latency_ms / 1000.0
            if cfg.fail_match is not None and cfg.fail_match in text:
                return Decision(Fault.FAIL_MATCH, latency_s=latency)
            if self._hit(cfg.drop_rate):
                return Decision(Fault.DROP)
            if self._hit(cfg.error_rate):
                return Decision(Fault.ERROR, latency_s=latency)
            hang = cfg.hang_s if self._hit(cfg.hang_rate) else 0.0
            malformed = chat and self._hit(cfg.malformed_rate)
            out_of_candidates = chat and not malformed and self._hit(cfg.out_of_candidates_rate)
            return Decision(Fault.NONE, hang_s=hang, latency_s=latency, malformed=malformed,
                            out_of_candidates=out_of_candidates, draw=self._rng.random())
