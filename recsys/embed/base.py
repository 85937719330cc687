"""The embedding interface: a backend turns texts into one float32 row each; everything else (batching, the
text-hash cache, storage) is built on top of it and is the same for every backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from recsys.config import EmbedConfig

if TYPE_CHECKING:
    from recsys.llm.client import BeforeRequest, UsageSink


@runtime_checkable
class Embedder(Protocol):
    """A text embedding backend.

    `backend` and `model` identify the vectors (they are part of every cache key); `embed` computes the vectors
    of one batch with no caching of its own that matters for correctness: float32, shape (len(texts), dim)."""

    backend: str
    model: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class LocalBackend:
    """`Embedder` over `recsys.embed.local.LocalEmbedder` (all-MiniLM-L6-v2, 384-d, unit-norm rows)."""

    backend = "local"

    def __init__(self, embedder: object | None = None, *, model: str = "all-MiniLM-L6-v2",
                 batch_size: int = 64) -> None:
        from recsys.embed.local import MODEL_NAME, LocalEmbedder

        if model != MODEL_NAME:
            raise ValueError(f"the local backend only has {MODEL_NAME!r}, not {model!r}")
        self.model = model
        self.encoder = embedder if embedder is not None else LocalEmbedder(batch_size=batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)  # type: ignore[attr-defined]


def check_matrix(matrix: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    """A 2-D finite float32 matrix with `n_rows` rows, or ValueError naming `what`."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D matrix, got shape {m.shape}")
    if m.shape[0] != n_rows:
        raise ValueError(f"{what}: expected {n_rows} rows, got {m.shape[0]}")
    if m.shape[1] == 0:
        raise ValueError(f"{what}: vectors have dimension 0")
    if not np.issubdtype(m.dtype, np.number):
        raise ValueError(f"{what}: dtype {m.dtype} is not numeric")
    m = np.ascontiguousarray(m, dtype=np.float32)
    if not np.isfinite(m).all():
        bad = int(np.argwhere(~np.isfinite(m))[0][0])
        raise ValueError(f"{what}: row {bad} has NaN or infinite values")
    return m


def make_embedder(cfg: EmbedConfig, *, usage_sink: UsageSink | None = None, api_key: str | None = None,
                  local: object | None = None, tags: dict[str, str] | None = None,
                  before_request: BeforeRequest | None = None) -> Embedder:
    """The backend `cfg` asks for; `local` reuses an already loaded LocalEmbedder; `before_request` is called
    before each HTTP attempt of the openai backend."""
    if cfg.backend == "local":
        return LocalBackend(local, model=cfg.resolved_model, batch_size=cfg.batch_size)
    from recsys.embed.remote import RemoteEmbedder

    return RemoteEmbedder(cfg, usage_sink=usage_sink, api_key=api_key, tags=tags, before_request=before_request)
