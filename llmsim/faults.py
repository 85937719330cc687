"""Fault injection for the local server: settings, a seeded decision source and a sliding-window RPM limit.

All faults are off by default. The same names are CLI flags (`--error-rate`), environment variables
(`LLMREC_SERVER_ERROR_RATE`) and keys of the `POST /admin/faults` body. So are the server's behaviour settings
(the `response_format` it takes, its advertised limits, how long a batch takes), which are not faults.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "LLMREC_SERVER_"


class FaultConfig(BaseModel):
    """What the server does wrong, and how often. Rates are per request probabilities drawn from one RNG seeded
    with `seed`, so a run with the same seed and the same request order sees the same faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm_limit: int | None = Field(None, gt=0, description="requests per 60 s sliding window; excess -> 429 "
                                  "(announced in x-ratelimit-* headers)")
    tpm_limit: int | None = Field(None, gt=0, description="prompt + max_tokens per 60 s sliding window; excess -> "
                                  "429 (announced in x-ratelimit-* headers)")
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
    retry_after: str | None = Field(None, min_length=1,
                                    description="every request gets 429 with this Retry-After header (e.g. 86400, "
                                                "inf, an HTTP date)")
    first_listed_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of edge answers that pick the first "
                                     "listed candidate as liked and the last as disliked (position bias)")
    wrapped_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of answers without response_format that "
                                "come wrapped: markdown fences, prose around, several fences")
    structured_outputs: Literal["json_schema", "json_object_schema", "json_object", "none"] = Field(
        "json_schema", description="the response_format form the server takes and enforces; any other gets HTTP "
                                   "500, as llama.cpp's server answers (none: no response_format at all)")
    batch_duration_s: float = Field(1.0, ge=0.0, description="seconds a batch stays in_progress before its answers")
    batch_error_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of batch requests answered with an "
                                    "error (in the batch's error file)")
    batch_expire_after: float | None = Field(None, ge=0.0, le=1.0, description="the batch expires with this share "
                                             "of its requests answered; the rest are batch_expired errors")
    fine_tune_duration_s: float = Field(1.0, ge=0.0, description="seconds a fine-tuning job stays running")
    fine_tune_fail: bool = Field(False, description="every fine-tuning job fails while running (training_failed)")
    seed: int | None = Field(None, description="RNG seed (None: 0)")


class Fault(StrEnum):
    """What happens to one request."""

    NONE = "none"
    RATE_LIMITED = "rate_limited"
    RETRY_AFTER = "retry_after"
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
    first_listed: bool = False
    wrapped: bool = False
    draw: float = 0.0  # a uniform number for choosing among fault variants (e.g. which malformed text)


class FaultInjector:
    """Thread-safe: one lock guards the RNG and the RPM window, so decisions stay consistent under concurrency."""

    WINDOW_S = 60.0

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed or 0)
        self._admitted: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()

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
            self._tokens.clear()

    def _hit(self, rate: float) -> bool:
        # Draw only for enabled faults, so enabling one fault does not shift the others' sequence when it is off.
        return rate > 0.0 and self._rng.random() < rate

    def _expire_locked(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - self.WINDOW_S:
            self._admitted.popleft()
        while self._tokens and self._tokens[0][0] <= now - self.WINDOW_S:
            self._tokens.popleft()

    def limit_headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the configured limits (none for a limit that is not set)."""
        now = time.monotonic()
        headers: dict[str, str] = {}
        with self._lock:
            self._expire_locked(now)
            cfg = self._config
            for kind, limit, used, oldest in (
                ("requests", cfg.rpm_limit, len(self._admitted), self._admitted[0] if self._admitted else None),
                ("tokens", cfg.tpm_limit, sum(n for _, n in self._tokens),
                 self._tokens[0][0] if self._tokens else None),
            ):
                if limit is None:
                    continue
                reset = 0.0 if oldest is None else max(0.0, oldest + self.WINDOW_S - now)
                headers |= {f"x-ratelimit-limit-{kind}": str(limit),
                            f"x-ratelimit-remaining-{kind}": str(max(0, limit - used)),
                            f"x-ratelimit-reset-{kind}": f"{reset:.3f}s"}
        return headers

    def decide(self, text: str, *, chat: bool, tokens: int = 0) -> Decision:
        """The fault plan for a request whose message (or input) text is `text` and whose weight against the TPM
        limit is `tokens`. Order: Retry-After, RPM and TPM limits (rejected requests do not count against the
        window), fail_match, drop, error, then hang/latency and answer corruption."""
        now = time.monotonic()
        with self._lock:
            cfg = self._config
            if cfg.retry_after is not None:
                return Decision(Fault.RETRY_AFTER)
            self._expire_locked(now)
            if cfg.rpm_limit is not None and len(self._admitted) >= cfg.rpm_limit:
                wait = self._admitted[0] + self.WINDOW_S - now
                return Decision(Fault.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
            if cfg.tpm_limit is not None and self._tokens and (
                    sum(n for _, n in self._tokens) + tokens > cfg.tpm_limit):
                wait = self._tokens[0][0] + self.WINDOW_S - now
                return Decision(Fault.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
            if cfg.rpm_limit is not None:
                self._admitted.append(now)
            if cfg.tpm_limit is not None:
                self._tokens.append((now, tokens))
            latency = cfg.latency_ms / 1000.0
            if cfg.fail_match is not None and cfg.fail_match in text:
                return Decision(Fault.FAIL_MATCH, latency_s=latency)
            if self._hit(cfg.drop_rate):
                return Decision(Fault.DROP)
            if self._hit(cfg.error_rate):
                return Decision(Fault.ERROR, latency_s=latency)
            hang = cfg.hang_s if self._hit(cfg.hang_rate) else 0.0
            return self._answer_faults_locked(chat, hang_s=hang, latency_s=latency)

    def _answer_faults_locked(self, chat: bool, **timing: float) -> Decision:
        cfg = self._config
        malformed = chat and self._hit(cfg.malformed_rate)
        out_of_candidates = chat and not malformed and self._hit(cfg.out_of_candidates_rate)
        # Under a schema a malformed answer is replaced by the genuine one, which first_listed may still bias.
        first_listed = chat and not out_of_candidates and self._hit(cfg.first_listed_rate)
        wrapped = chat and not malformed and self._hit(cfg.wrapped_rate)
        return Decision(Fault.NONE, malformed=malformed, out_of_candidates=out_of_candidates,
                        first_listed=first_listed, wrapped=wrapped, draw=self._rng.random(), **timing)

    def decide_batch_line(self) -> Decision:
        """The fault plan for one request of a batch: an error (batch_error_rate) or the answer faults; the HTTP
        faults (limits, drops, hangs) do not apply inside a batch."""
        with self._lock:
            if self._hit(self._config.batch_error_rate):
                return Decision(Fault.ERROR)
            return self._answer_faults_locked(True)
