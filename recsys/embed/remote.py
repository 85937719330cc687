"""Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint through the official `openai` package.

Every request goes through the same `Endpoint` as the chat client (recsys.llm.client): endpoint and key resolution,
the process-wide RPM/TPM and in-flight limiter per (base_url, model), the one retry layer (the SDK's own retries
are off), the `before_request` hook, the price table, and one `UsageEvent` per HTTP attempt handed to a usage sink
(tasks write them to the cost ledger). Input tokens are counted with tiktoken before sending (for the TPM budget)
and taken from the answer's `usage` afterwards. The API key goes to the SDK and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from recsys.config import EmbedConfig
from recsys.llm.client import BeforeRequest, CallFailed, Endpoint, LLMError, UsageSink
from recsys.llm.retry import AttemptFailed, Retryable
from recsys.llm.tokens import count_tokens


class EmbeddingError(LLMError):
    """A batch could not be embedded after every retry."""


class RemoteEmbedder(Endpoint):
    """`Embedder` for /v1/embeddings. `embed(texts)` sends one request per `cfg.batch_size` texts (at most
    `cfg.max_in_flight` at once) and returns float32 (len(texts), dim) in input order; raises EmbeddingError when
    a request fails for good, LLMAuthError for refused credentials or quota."""

    backend = "openai"
    what = "embedding"
    cfg: EmbedConfig

    def __init__(self, cfg: EmbedConfig, *, usage_sink: UsageSink | None = None, api_key: str | None = None,
                 tags: dict[str, str] | None = None, before_request: BeforeRequest | None = None) -> None:
        if cfg.backend != "openai":
            raise ValueError(f"RemoteEmbedder needs backend 'openai', got {cfg.backend!r}")
        super().__init__(cfg, cfg.resolved_model, usage_sink=usage_sink, api_key=api_key,
                         before_request=before_request)
        self.tags = dict(tags or {})

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
        """One batch through the endpoint's retry loop."""
        estimate = sum(count_tokens(t) for t in texts)
        dimensions = {} if self.cfg.dimensions is None else {"dimensions": self.cfg.dimensions}

        def send() -> tuple[np.ndarray, int, int]:
            response = self._client.embeddings.create(model=self.model, input=texts, encoding_format="float",
                                                      **dimensions)
            return *self._read(response, len(texts), estimate), 0

        try:
            return self.call(send, estimate=estimate, reserve=estimate, tags=self.tags)[0]
        except CallFailed as exc:
            raise EmbeddingError(f"embedding {len(texts)} texts: {exc}") from None

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
