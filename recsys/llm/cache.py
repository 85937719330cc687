"""The response cache: every answered prompt on disk, so that no prompt is paid for twice.

Keyed by the sha256 of the canonical JSON of what determines an answer (model, messages, sampling parameters,
the prompt template's version). The API key and the endpoint are not part of the key: the same question to the
same model has the same answer whoever pays for it, and a key must never be written to disk.
diskcache (SQLite underneath) is safe across threads and processes, so parallel workers share one cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import diskcache


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace, ASCII escapes: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 hex of the canonical JSON of a prompt's messages: the prompt's identity in the augmentation outputs
    (`prompt_hash` columns) and in the local server's answer counts."""
    return hashlib.sha256(canonical_json([dict(m) for m in messages]).encode("utf-8")).hexdigest()


def cache_key(
    *,
    model: str,
    messages: Sequence[Mapping[str, str]],
    temperature: float,
    top_p: float,
    max_tokens: int,
    template_version: str,
) -> str:
    """sha256 hex of (model, messages, temperature, top_p, max_tokens, template_version). Never the API key."""
    payload = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "temperature": float(temperature),  # 1 and 1.0 key the same
        "top_p": float(top_p),
        "max_tokens": int(max_tokens),
        "template_version": template_version,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers on disk by cache key. Values are small JSON objects
    (`{"text", "prompt_tokens", "completion_tokens", "model"}`); nothing is ever evicted."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # eviction_policy "none": diskcache's default evicts beyond 1 GB, which would make us pay again.
        self._cache = diskcache.Cache(str(self.directory), eviction_policy="none")

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer for `key`, or None."""
        raw = self._cache.get(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Store (or replace) the answer for `key`."""
        self._cache.set(key, canonical_json(dict(value)))

    def forget(self, key: str) -> bool:
        """Drop the answer for `key` (e.g. it failed validation and will be asked again); True if one existed."""
        return bool(self._cache.delete(key))

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        """Close the SQLite connections of this process (the data stays)."""
        self._cache.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
