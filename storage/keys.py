"""Content keys: stable hashes of a stage, its version, its parameters and the keys of its inputs.

A stage's output is addressed by the key of what produced it, so equal inputs give the same key on every run and
any changed input gives a new key for that stage and everything downstream.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

KEY_LENGTH = 24  # hex chars kept: 96 bits, ample for one store, short enough for readable paths


def _normalise(obj: Any) -> Any:
    """Turn configs and paths into plain JSON values with a canonical form."""
    if hasattr(obj, "model_dump"):  # pydantic models
        return _normalise(obj.model_dump(mode="json"))
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 1.0 and 1 must key the same
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot build a content key from a {type(obj).__name__}; pass plain values or configs")


def stable_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, configs and paths made plain."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def params_hash(params: Any) -> str:
    """sha256 of the canonical JSON of `params`, shortened."""
    return hashlib.sha256(stable_json(params).encode()).hexdigest()[:KEY_LENGTH]


def content_key(stage: str, version: str, params: Any, inputs: Sequence[str] = ()) -> str:
    """Key of a stage's output from its name, code version, parameters and input keys."""
    payload = {"stage": stage, "version": version, "params": _normalise(params), "inputs": list(inputs)}
    return params_hash(payload)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    """What a set of source files holds: [name, size, sha256] per file, sorted by name. Not where they lie: the
    same files reached by a relative or an absolute path, or copied elsewhere, give the same fingerprint, and an
    edited file gives another one."""
    out: list[list[Any]] = []
    for p in sorted(paths, key=lambda q: q.name):
        st = p.stat()
        out.append([p.name, st.st_size, _cached_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)])
    return out


@functools.lru_cache(maxsize=1024)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """`file_sha256`, computed once per process for a file that has not changed (keys are asked for repeatedly)."""
    del size, mtime_ns  # part of the cache key only
    return file_sha256(path)
