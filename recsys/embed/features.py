"""Feature matrices by id: a user-supplied extra modality (validated), and alignment to dense ids for the model.

A user-supplied matrix is a `.npy` file or a `.safetensors` file (one tensor, or the tensor named `embeddings`)
plus an id index: a Parquet or CSV file with an `id` (or `item_id` / `user_id`) column and optionally a `row`
column (the matrix row of that id; without it, row i is the i-th id). It is checked for shape, finiteness, unique
ids, a complete row permutation and, when the known ids are given, ids that the dataset does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.embed.base import check_matrix

ID_COLUMNS = ("id", "item_id", "user_id")


class FeatureFileError(ValueError):
    """A user-supplied feature file or its index is unusable; the message names the file and the problem."""


def _read_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such file")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise FeatureFileError(f"{path}: not a plain numeric .npy array ({exc})") from None
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        if "embeddings" in arrays:
            return arrays["embeddings"]
        if len(arrays) != 1:
            raise FeatureFileError(f"{path}: holds tensors {sorted(arrays)}; name the matrix 'embeddings'")
        return next(iter(arrays.values()))
    raise FeatureFileError(f"{path}: expected a .npy or .safetensors file")


def _read_index(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such file")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if id_col is None:
        raise FeatureFileError(f"{path}: needs an id column (one of {ID_COLUMNS}), has {list(df.columns)}")
    out = pd.DataFrame({"id": df[id_col]})
    out["row"] = df["row"] if "row" in df.columns else np.arange(len(df))
    for col in ("id", "row"):
        if out[col].isna().any() or not pd.api.types.is_integer_dtype(out[col]):
            bad = int(np.flatnonzero(out[col].isna())[0]) if out[col].isna().any() else 0
            raise FeatureFileError(f"{path}: column {col!r} must be integers (row {bad})")
    return out.astype("int64")


def load_feature_file(matrix_path: str | Path, index_path: str | Path,
                      known_ids: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n], matrix float32 [n, dim]) with row i the vector of ids[i], validated."""
    mpath, ipath = Path(matrix_path), Path(index_path)
    raw = _read_matrix(mpath)
    index = _read_index(ipath)
    try:
        matrix = check_matrix(raw, len(index), str(mpath))
    except ValueError as exc:
        raise FeatureFileError(f"{exc} (index {ipath} has {len(index)} ids)") from None
    dup = index["id"][index["id"].duplicated()]
    if len(dup):
        raise FeatureFileError(f"{ipath}: id {int(dup.iloc[0])} is listed {int((index['id'] == dup.iloc[0]).sum())}"
                               f" times ({dup.nunique()} duplicated ids)")
    rows = index["row"].to_numpy()
    if not np.array_equal(np.sort(rows), np.arange(len(index))):
        raise FeatureFileError(f"{ipath}: 'row' must list every matrix row 0..{len(index) - 1} exactly once")
    if known_ids is not None:
        unknown = np.setdiff1d(index["id"].to_numpy(), np.asarray(known_ids, dtype=np.int64))
        if len(unknown):
            raise FeatureFileError(f"{ipath}: id {int(unknown[0])} is not in the dataset ({len(unknown)} unknown)")
    order = np.argsort(index["id"].to_numpy(), kind="stable")
    return index["id"].to_numpy()[order], matrix[rows[order]]


def align(ids: np.ndarray, matrix: np.ndarray, wanted: np.ndarray | Sequence[int],
          fill: str = "zeros") -> tuple[np.ndarray, np.ndarray]:
    """Rows for `wanted` ids (e.g. raw ids in dense order) and a bool mask of which had a vector. Missing rows are
    zeros (`fill="zeros"`) or the mean vector (`fill="mean"`)."""
    pos = pd.Series(np.arange(len(ids)), index=pd.Index(np.asarray(ids, dtype=np.int64)))
    where = pos.reindex(np.asarray(wanted, dtype=np.int64))
    present = where.notna().to_numpy()
    out = np.zeros((len(where), matrix.shape[1]), dtype=np.float32)
    out[present] = matrix[where[present].to_numpy(dtype=np.int64)]
    if fill == "mean" and present.any():
        out[~present] = matrix.mean(axis=0)
    elif fill not in ("zeros", "mean"):
        raise ValueError(f"fill must be 'zeros' or 'mean', got {fill!r}")
    return out, present
