"""Atomic single-file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest`, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(dest: str | Path, obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(dest)


def write_parquet(dest: str | Path, df: pd.DataFrame) -> Path:
    """Write a DataFrame as Parquet atomically (index dropped)."""
    with atomic_path(dest) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(dest)


def write_text(dest: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_safetensors(dest: str | Path, tensors: dict[str, Any]) -> Path:
    """Write named arrays (numpy) as one safetensors file atomically."""
    from safetensors.numpy import save_file

    with atomic_path(dest) as tmp:
        save_file({k: v for k, v in tensors.items()}, str(tmp))
    return Path(dest)
