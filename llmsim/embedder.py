"""The server's embedding model, called off the event loop.

One worker thread runs the (lazily loaded) `LocalEmbedder`, so a slow forward pass or the first model load never
blocks the event loop: `/v1/models`, the admin endpoints and requests whose texts are cached keep being served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recsys.embed.local import LocalEmbedder


class AsyncEmbedder:
    """`await embed(texts)` -> unit-norm float32 rows (n, 384)."""

    def __init__(self, embedder: LocalEmbedder | None = None) -> None:
        self.embedder = embedder or LocalEmbedder()
        # One thread: the model call is serialised anyway; more threads would only queue on its lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-embed")

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in the worker thread."""
        texts = list(texts)
        cached = self.embedder.encode_cached(texts)  # warm cache: no thread hop, no queueing behind a cold batch
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embedder.encode, texts)

    async def warm_up(self) -> None:
        """Load the model in the worker thread (used by `--preload`)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.embedder.load)

    def shutdown(self) -> None:
        """Stop the worker thread without waiting for a queued forward pass."""
        self._executor.shutdown(wait=False, cancel_futures=True)
