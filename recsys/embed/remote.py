"""Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint through the official `openai` package.

The same machinery as the chat client (recsys.llm.client): endpoint and key resolution, the process-wide RPM/TPM
and in-flight limiter per (base_url, model), the one tenacity retry layer of recsys.llm.retry (the SDK's own
retries are off), the price table, and one `UsageEvent` per HTTP attempt handed to a usage sink (tasks write them
to the cost ledger). Input tokens are counted with tiktoken before sending (for the TPM budget) and taken from the
answer's `usage` afterwards. The API key goes to the SDK and nowhere else. An optional `before_request` hook is
called once per HTTP attempt, as in the chat client (e.g. a rate limit shared by several processes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import openai

from recsys.config import EmbedConfig
from recsys.llm.client import (
    LOCAL_PLACEHOLDER_KEY,
    BeforeRequest,
    LLMAuthError,
    LLMError,
    UsageEvent,
    UsageSink,
    resolve_endpoint,
)
from recsys.llm.limits import RateLimiter, shared_limiter
from recsys.llm.pricing import PriceTable, load_price_table
from recsys.llm.retry import AttemptFailed, Retryable, classify, retrying
from recsys.llm.tokens import count_tokens


class EmbeddingError(LLMError):
    """A batch could not be embedded after every retry."""


class RemoteEmbedder:
    """`Embedder` for /v1/embeddings. `embed(texts)` sends one request per `cfg.batch_size` texts (at most
    `cfg.max_in_flight` at once) and returns float32 (len(texts), dim) in input order; raises EmbeddingError when
    a request fails for good, LLMAuthError for refused credentials or quota."""

    backend = "openai"

    def __init__(self, cfg: EmbedConfig, *, usage_sink: UsageSink | None = None, api_key: str | None = None,
                 tags: dict[str, str] | None = None, before_request: BeforeRequest | None = None) -> None:
        if cfg.backend != "openai":
            raise ValueError(f"RemoteEmbedder needs backend 'openai', got {cfg.backend!r}")
        self.cfg = cfg
        self.model = cfg.resolved_model
        self.base_url, key = resolve_endpoint(cfg, api_key)  # type: ignore[arg-type]  # duck-typed config
        self._secret = key
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.limiter: RateLimiter = shared_limiter(self.base_url, self.model, rpm=cfg.rpm, tpm=cfg.tpm,
                                                   max_in_flight=cfg.max_in_flight)
        self.prices: PriceTable = load_price_table(cfg.price_table)
        self._sink = usage_sink
        self.tags = dict(tags or {})
        self._before_request = before_request

    def __repr__(self) -> str:  # never the key
        return f"RemoteEmbedder(model={self.model!r}, base_url={self.base_url!r})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        size = self.cfg.batch_size
        batches = [texts[i:i + size] for i in range(0, len(texts), size)]
        if len(batches) == 1 or self.cfg.max_in_flight == 1:
            parts = [self._request(b) for b in batches]
        else:
            with ThreadPoolExecutor(min(self.cfg.max_in_flight, len(batches)), thread_name_prefix="embed") as pool:
                parts = list(pool.map(self._request, batches))
        dims = {p.shape[1] for p in parts}
        if len(dims) != 1:
            raise EmbeddingError(f"{self.model} returned vectors of different dimensions {sorted(dims)}")
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _request(self, texts: list[str]) -> np.ndarray:
        """One batch through the retry loop."""
        estimate = sum(count_tokens(t) for t in texts)
        attempts = 0

        def one_attempt() -> np.ndarray:
            nonlocal attempts
            attempts += 1
            return self._attempt(texts, estimate, attempts)

        loop = retrying(max_attempts=self.cfg.max_attempts, initial=self.cfg.backoff_initial_s,
                        maximum=self.cfg.backoff_max_s, what="embedding")
        try:
            return loop(one_attempt)
        except Retryable as exc:
            raise EmbeddingError(f"embedding {len(texts)} texts: {exc.description} after {attempts} attempts"
                                 ) from None
        except AttemptFailed as exc:
            raise EmbeddingError(f"embedding {len(texts)} texts: {exc.description}") from None

    def _attempt(self, texts: list[str], estimate: int, attempt: int) -> np.ndarray:
        reservation = self.limiter.acquire(estimate)
        actual: int | None = None
        try:
            if self._before_request is not None:
                self._before_request()  # outside the classifying try: its errors are not HTTP failures
            t0 = time.monotonic()
            try:
                kwargs: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
                if self.cfg.dimensions is not None:
                    kwargs["dimensions"] = self.cfg.dimensions
                response = self._client.embeddings.create(**kwargs)
                matrix, tokens = self._read(response, len(texts), estimate)
            except Exception as exc:
                failure = classify(exc, timeout_s=self.cfg.timeout_s, base_url=self.base_url, scrub=self._scrub)
                if isinstance(exc, openai.APIStatusError):
                    actual = estimate
                if failure.retry_after and failure.outcome == "http_429":
                    self.limiter.pause(failure.retry_after)
                self._emit(attempt, failure.outcome, 0, time.monotonic() - t0, failure.description)
                if failure.fatal:
                    raise LLMAuthError(failure.description) from None
                raise failure from None
            actual = tokens
        finally:
            self.limiter.release(reservation, actual_tokens=actual)
        self._emit(attempt, "ok", tokens, time.monotonic() - t0, None)
        return matrix

    def _read(self, response: Any, n: int, estimate: int) -> tuple[np.ndarray, int]:
        """(matrix in input order, billed tokens); `Retryable` when the answer is not n equal-length vectors."""
        try:
            data = sorted(response.data, key=lambda d: d.index)
            matrix = np.asarray([d.embedding for d in data], dtype=np.float32)
        except (AttributeError, TypeError, ValueError):
            raise Retryable("bad_response", "answer is not an embeddings list", retryable=True) from None
        if matrix.ndim != 2 or matrix.shape[0] != n or [d.index for d in data] != list(range(n)):
            raise Retryable("bad_response", f"expected {n} vectors, got shape {matrix.shape}", retryable=True)
        if self.cfg.dimensions is not None and matrix.shape[1] != self.cfg.dimensions:
            raise AttemptFailed("bad_response", f"asked for {self.cfg.dimensions}-d vectors, got {matrix.shape[1]}",
                                retryable=False)
        if not np.isfinite(matrix).all():
            raise Retryable("bad_response", "non-finite values in the vectors", retryable=True)
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        return matrix, int(tokens) if tokens is not None else estimate

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret != LOCAL_PLACEHOLDER_KEY and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _emit(self, attempt: int, outcome: str, tokens: int, latency_s: float, error: str | None) -> None:
        if self._sink is None:
            return
        cost = self.prices.cost(self.model, tokens, 0) if outcome == "ok" else 0.0
        self._sink(UsageEvent(
            timestamp=time.time(), model=self.model, prompt_tokens=tokens, completion_tokens=0, cached=False,
            latency_s=latency_s, attempt=attempt, outcome=outcome, cost_usd=cost, stage=self.tags.get("stage"),
            batch=self.tags.get("batch"), error=error, tags=dict(self.tags),
        ))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
