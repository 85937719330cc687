"""The text-hash vector cache: a text is embedded once per (backend, model, dimensions), across runs.

On disk (diskcache, SQLite underneath: safe across threads and processes), keyed by
sha256(canonical JSON of [backend, model, dimensions, text]); the value is the float32 vector's bytes. The API key
and the endpoint are never part of a key (the same model gives the same vector whoever pays; a key must never be
written to disk), so the model name must identify the vectors: do not serve a different model under the name of
another one through a compatible endpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache
import numpy as np

from recsys.embed.base import Embedder, check_matrix


def text_key(backend: str, model: str, text: str, dimensions: int | None = None) -> str:
    """sha256 hex of (backend, model, dimensions, text)."""
    payload = json.dumps([backend, model, dimensions, text], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VectorCache:
    """float32 vectors on disk by key; nothing is ever evicted."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), eviction_policy="none")

    def get(self, key: str) -> np.ndarray | None:
        raw = self._cache.get(key)
        return None if raw is None else np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        with self._cache.transact():
            for key, vector in items:
                self._cache.set(key, np.ascontiguousarray(vector, dtype="<f4").tobytes())

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()


@dataclass
class EmbedStats:
    """Texts asked for, served from the cache, computed, and backend calls (batches) made."""

    texts: int = 0
    unique: int = 0
    hits: int = 0
    computed: int = 0
    calls: int = 0


class CachedEmbedder:
    """Batching and the text-hash cache around any `Embedder`.

    `encode(texts)` -> float32 (len(texts), dim): duplicate texts are computed once, cached texts never reach the
    backend, the rest go in batches of `batch_size`; each batch is stored as soon as it returns, so a crash loses
    at most the batch in flight. With `cache=None` only duplicates within one call are shared."""

    def __init__(self, embedder: Embedder, cache: VectorCache | None, *, batch_size: int = 64,
                 dimensions: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.embedder = embedder
        self.cache = cache
        self.batch_size = batch_size
        self.dimensions = dimensions
        self.stats = EmbedStats()

    def key(self, text: str) -> str:
        return text_key(self.embedder.backend, self.embedder.model, text, self.dimensions)

    def encode(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """float32 (len(texts), dim); `on_batch(computed, to_compute)` is called once the cache was read and after
        every backend batch (for progress: texts computed so far, of those the cache lacked)."""
        texts = [str(t) for t in texts]
        unique = list(dict.fromkeys(texts))
        self.stats.texts += len(texts)
        self.stats.unique += len(unique)
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in unique:
            vector = self.cache.get(self.key(text)) if self.cache is not None else None
            if vector is None:
                missing.append(text)
            else:
                found[text] = vector
        self.stats.hits += len(found)
        if on_batch is not None:
            on_batch(0, len(missing))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            vectors = check_matrix(self.embedder.embed(batch), len(batch), f"{self.embedder.backend} embeddings")
            self.stats.calls += 1
            self.stats.computed += len(batch)
            if self.cache is not None:
                self.cache.put_many([(self.key(t), v) for t, v in zip(batch, vectors, strict=True)])
            found.update(zip(batch, vectors, strict=True))
            if on_batch is not None:
                on_batch(start + len(batch), len(missing))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        dims = {v.shape[0] for v in found.values()}
        if len(dims) != 1:
            raise ValueError(f"vectors of different dimensions {sorted(dims)} for one model: clear the cache at "
                             f"{getattr(self.cache, 'directory', '?')} or name the model differently")
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)
