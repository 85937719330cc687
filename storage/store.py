"""The artifact store: every table (Parquet) and tensor file (safetensors) that a stage produces.

Layout: `<root>/<stage>/<key>/` holds one stage output's files plus `manifest.json`. A stage output is written
into a temporary folder and renamed into place only when complete, manifest last, so a crash never leaves a
half-written output under a real key: an output either exists whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path
from storage.keys import file_sha256, stable_json
from storage.schemas import schema_errors

MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupted or does not have the expected schema."""


@dataclass(frozen=True)
class ArtifactRef:
    """Address of one stage output: `<stage>/<key>`. Its string form is what Prefect tasks pass around."""

    stage: str
    key: str

    def __str__(self) -> str:
        return f"{self.stage}/{self.key}"

    @classmethod
    def parse(cls, ref: str | ArtifactRef) -> ArtifactRef:
        if isinstance(ref, ArtifactRef):
            return ref
        stage, sep, key = str(ref).partition("/")
        if not sep or not _NAME.match(stage) or not _NAME.match(key):
            raise ArtifactError(f"not an artifact reference: {ref!r} (expected 'stage/key')")
        return cls(stage, key)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ArtifactError(f"bad artifact name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _readable_by_pandas(table: pa.Table) -> pa.Table:
    """Keep pandas' metadata (it restores nullable ints, strings) but not the Arrow-backed dtype names it writes
    for list columns, such as 'list<item: string>[pyarrow]', which pandas itself cannot parse back."""
    meta = table.schema.pandas_metadata
    if not meta:
        return table
    for column in meta.get("columns", []):
        if "[pyarrow]" in str(column.get("numpy_type")):
            column["numpy_type"] = "object"
    return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()})


def _arrow_schema(obj: pa.Table | pa.Schema) -> dict[str, str]:
    schema = obj if isinstance(obj, pa.Schema) else obj.schema
    return {f.name: str(f.type) for f in schema}


def _check_schema(what: str, stage: str, name: str, found: pa.Schema) -> None:
    if errors := schema_errors(stage, name, found):
        raise ArtifactError(f"{what} breaks its schema: {'; '.join(errors)}")


class StageWriter:
    """Collects one stage output's files in a temporary folder; see `ArtifactStore.write`."""

    def __init__(self, folder: Path, stage: str) -> None:
        self.folder = folder
        self.stage = stage
        self.entries: dict[str, dict[str, Any]] = {}

    def _target(self, name: str, suffix: str) -> Path:
        _check_name(name)
        if name in self.entries:
            raise ArtifactError(f"artifact {name!r} written twice in one stage output")
        return self.folder / f"{name}{suffix}"

    def table(self, name: str, df: pd.DataFrame) -> None:
        """Write a DataFrame as Parquet (index dropped), checked against its schema in storage/schemas.py."""
        path = self._target(name, ".parquet")
        table = _readable_by_pandas(pa.Table.from_pandas(df, preserve_index=False))
        pq.write_table(table, path)
        stored = pq.read_schema(path)  # as the file stores it: Parquet renames list fields (item -> element)
        _check_schema(f"{self.stage} table {name!r}", self.stage, name, stored)
        self.entries[name] = {"kind": "table", "file": path.name, "rows": table.num_rows,
                              "schema": _arrow_schema(stored)}

    def tensors(self, name: str, tensors: Mapping[str, Any]) -> None:
        """Write named arrays (numpy or torch) as one safetensors file."""
        from safetensors.numpy import save_file

        path = self._target(name, ".safetensors")
        arrays = {k: _to_numpy(v) for k, v in tensors.items()}
        save_file(arrays, str(path))
        self.entries[name] = {
            "kind": "tensors",
            "file": path.name,
            "shapes": {k: list(a.shape) for k, a in arrays.items()},
            "dtypes": {k: str(a.dtype) for k, a in arrays.items()},
        }

    def json(self, name: str, obj: Any) -> None:
        """Write a small JSON document (metrics, summaries)."""
        path = self._target(name, ".json")
        path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        self.entries[name] = {"kind": "json", "file": path.name}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor; storage does not import torch
        value = value.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(value)


class ArtifactStore:
    """Content-addressed stage outputs under one local root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, ref: str | ArtifactRef) -> Path:
        r = ArtifactRef.parse(ref)
        return self.root / r.stage / r.key

    def exists(self, ref: str | ArtifactRef) -> bool:
        """True when the stage output was written completely (its manifest exists)."""
        return (self.folder(ref) / MANIFEST).is_file()

    @contextmanager
    def write(self, stage: str, key: str, params: Any = None, *, replace: bool = False) -> Iterator[StageWriter]:
        """Write one stage output atomically.

        Usage: `with store.write("split", key, params) as w: w.table("train", df)`. On an exception nothing
        appears under the key. If another process completed the same key meanwhile, its output is kept: equal keys
        mean equal content. With `replace`, an existing output is swapped for the new one (a partial result, such
        as an LLM batch with failed items, being completed by a re-run).
        """
        ref = ArtifactRef(_check_name(stage), _check_name(key))
        final = self.folder(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            writer = StageWriter(tmp, stage)
            yield writer
            for entry in writer.entries.values():
                entry["sha256"] = file_sha256(tmp / entry["file"])
            manifest = {
                "stage": stage,
                "key": key,
                "params": json.loads(stable_json(params)) if params is not None else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "artifacts": writer.entries,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if final.exists() and (replace or not (final / MANIFEST).is_file()):
                # Move the old output aside first so that `final` is never a mix of old and new files.
                old = final.parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(ref):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def manifest(self, ref: str | ArtifactRef) -> dict[str, Any]:
        """The manifest of a complete stage output."""
        path = self.folder(ref) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"artifact {ref} does not exist or is incomplete (no {path})")
        return json.loads(path.read_text())

    def _lookup(self, ref: str | ArtifactRef, name: str) -> tuple[Path, dict[str, Any]]:
        entries = self.manifest(ref)["artifacts"]
        if name not in entries:
            raise ArtifactError(f"artifact {ref} has no {name!r}; it has {sorted(entries)}")
        entry = entries[name]
        path = self.folder(ref) / entry["file"]
        if not path.is_file():
            raise ArtifactError(f"{path} is missing although its manifest lists it")
        return path, entry

    def _entry(self, ref: str | ArtifactRef, name: str, kind: str, verify: bool) -> tuple[Path, dict[str, Any]]:
        path, entry = self._lookup(ref, name)
        if entry["kind"] != kind:
            raise ArtifactError(f"{ref}/{name} is a {entry['kind']}, not a {kind}")
        if verify and file_sha256(path) != entry["sha256"]:
            raise ArtifactError(f"{path} is corrupted: its sha256 does not match the manifest")
        return path, entry

    def read_table(self, ref: str | ArtifactRef, name: str, *, verify: bool = True) -> pd.DataFrame:
        """Read a table, checking its schema against the manifest and against storage/schemas.py."""
        path, entry = self._entry(ref, name, "table", verify)
        table = pq.read_table(path)
        found = _arrow_schema(table)
        if found != entry["schema"]:
            raise ArtifactError(f"{path}: schema {found} differs from its manifest {entry['schema']}")
        _check_schema(str(path), ArtifactRef.parse(ref).stage, name, table.schema)
        return table.to_pandas()

    def read_tensors(self, ref: str | ArtifactRef, name: str, *, verify: bool = True) -> dict[str, np.ndarray]:
        """Read named arrays (numpy) from a safetensors artifact."""
        from safetensors.numpy import load_file

        path, entry = self._entry(ref, name, "tensors", verify)
        arrays = load_file(str(path))
        shapes = {k: list(a.shape) for k, a in arrays.items()}
        if shapes != entry["shapes"]:
            raise ArtifactError(f"{path}: shapes {shapes} differ from its manifest {entry['shapes']}")
        return arrays

    def read_json(self, ref: str | ArtifactRef, name: str, *, verify: bool = True) -> Any:
        path, _ = self._entry(ref, name, "json", verify)
        return json.loads(path.read_text())

    def path_of(self, ref: str | ArtifactRef, name: str) -> Path:
        """Filesystem path of one file of a complete stage output (for exports)."""
        return self._lookup(ref, name)[0]


def export_file(src: Path, dest: Path) -> Path:
    """Copy a stored file to a user-facing location atomically."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest
