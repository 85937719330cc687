"""User-supplied interactions and item tables (Parquet or CSV), validated into the Dataset contract.

Every check raises one DataError that names the file, the column and the 1-based data row (header not counted),
so a user can fix the input without reading a traceback. The validators here are shared by the other loaders.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.dataset import INTERACTION_COLUMNS, ITEM_COLUMNS, PAIR_COLUMNS, Dataset
from recsys.data.errors import DataError

log = logging.getLogger("llmrec.data")

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
# Names looked up inside a dataset folder, Parquet first (typed, faster to read).
INTERACTIONS_STEM = "interactions"
ITEMS_STEM = "items"

INT64_MAX = 2**63 - 1
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


# --------------------------------------------------------------------------------------------------- reading


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is an existing file, else raise a DataError saying which `what` is missing."""
    path = Path(path)
    if not path.is_file():
        detail = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{what} file {detail}", path=path)
    return path


def _decode_error(path: Path, encoding: str) -> DataError:
    """A DataError locating the first undecodable byte of `path` (byte offset, line) and guessing the encoding."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            guess = "utf-16"
        elif re.search(rb"[\x80-\x9f]", data) and _decodes(data, "cp1252"):
            guess = "cp1252"
        else:
            guess = "latin-1"
        return DataError(
            f"file is not valid {encoding}: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) cannot "
            f"be decoded; it looks like {guess}. Re-save it as UTF-8 (e.g. `iconv -f {guess} -t utf-8 IN > OUT`), "
            f"or pass encoding={guess!r} when loading it from Python",
            path=path,
            row=line - 1 if line > 1 else None,  # line 1 is the header
        )
    return DataError(f"file is not valid {encoding}", path=path)  # pragma: no cover - pandas failed, we did not


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def read_frame(path: Path, what: str, *, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a Parquet or CSV file (chosen by suffix) into a DataFrame with stripped column names.

    The index is the 0-based data row, so error messages can report `index + 1`.
    """
    path = require_file(path, what)
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
        elif suffix in CSV_SUFFIXES:
            df = pd.read_csv(path, encoding=encoding)
        else:
            raise DataError(
                f"{what} file has unsupported suffix {suffix!r}; use one of "
                f"{', '.join(PARQUET_SUFFIXES + CSV_SUFFIXES)}",
                path=path,
            )
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} file is empty (no header, no rows)", path=path) from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {what} file: {exc}", path=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ validation


def check_columns(df: pd.DataFrame, required: Iterable[str], path: Path, what: str) -> None:
    """Raise a DataError naming the first missing required column and listing the columns found."""
    for col in required:
        if col not in df.columns:
            found = ", ".join(map(str, df.columns)) or "(none)"
            raise DataError(f"{what} file lacks required column {col!r}; columns found: {found}",
                            path=path, column=col)


def check_not_empty(df: pd.DataFrame, path: Path, what: str) -> None:
    """Raise a DataError if the frame has no rows."""
    if len(df) == 0:
        raise DataError(f"{what} file has a header but no data rows (empty dataset)", path=path)


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _show(value: object) -> str:
    """A cell value as the user wrote it: 3.5 and 'abc', not np.float64(3.5)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def to_int_ids(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Validate an id column and return it as int64.

    Integral floats (3.0, as pandas reads an int column with gaps) are accepted; nulls, fractions, text and
    booleans are not. The error names the first bad data row (1-based) and its value.
    """
    null = values.isna().to_numpy()
    if null.any():
        row = _first_row(null)
        raise DataError(f"{column} is null (ids must be present on every row)", path=path, column=column,
                        row=row + 1)
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"{column} must be an integer id, got boolean {_show(values.iloc[0])}", path=path,
                        column=column, row=1)
    if not pd.api.types.is_integer_dtype(values) and not pd.api.types.is_float_dtype(values):
        # Text or mixed objects: anything that does not parse as a number is reported with its raw value; text
        # that is all integers stays integer (exact, also above 2^53).
        parsed = pd.to_numeric(values, errors="coerce")
        values, raw = (parsed if pd.api.types.is_integer_dtype(parsed) else values), values
    else:
        raw = values
    if pd.api.types.is_integer_dtype(values):
        if pd.api.types.is_unsigned_integer_dtype(values):
            over = (values.to_numpy(dtype=np.uint64) > np.uint64(INT64_MAX))
            if over.any():
                row = _first_row(over)
                raise DataError(f"{column} must be an id in the int64 range (-2^63 .. 2^63-1); row {row + 1} has "
                                f"{_show(raw.iloc[row])}", path=path, column=column, row=row + 1)
        return values.to_numpy(dtype=np.int64)
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numeric) | (numeric != np.floor(numeric))
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{column} must be an integer id; row {row + 1} has {_show(raw.iloc[row])}",
                        path=path, column=column, row=row + 1)
    outside = np.abs(numeric) >= 2.0**63
    if outside.any():
        row = _first_row(outside)
        raise DataError(f"{column} must be an id in the int64 range (-2^63 .. 2^63-1); row {row + 1} has "
                        f"{_show(raw.iloc[row])}", path=path, column=column, row=row + 1)
    # A float holds every integer only below 2^53: a larger id read as a float (a column with a fraction or an
    # empty cell elsewhere) may already be another id.
    inexact = np.abs(numeric) >= 2.0**53
    if inexact.any():
        row = _first_row(inexact)
        raise DataError(f"{column} {_show(raw.iloc[row])} in row {row + 1} is 2^53 or more and was read as a "
                        f"floating-point number, which cannot hold it exactly; write the {column} column as "
                        f"integers only", path=path, column=column, row=row + 1)
    return numeric.astype(np.int64)


def to_float(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Validate an optional numeric column (nulls allowed) and return float64."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad = (numeric.isna() & values.notna()).to_numpy()
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{column} must be numeric; row {row + 1} has {_show(values.iloc[row])}",
                        path=path, column=column, row=row + 1)
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)


def to_nullable_int(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Validate an optional integer column (nulls allowed, integral floats fine) and return Int64."""
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("Int64").rename(column)
    as_float = to_float(values, path, column)
    with np.errstate(invalid="ignore"):
        bad = np.isinf(as_float) | (np.isfinite(as_float) & (as_float != np.floor(as_float)))
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{column} must be an integer; row {row + 1} has {_show(values.iloc[row])}",
                        path=path, column=column, row=row + 1)
    return pd.Series(pd.array(as_float, dtype="Int64"), index=values.index, name=column)


def to_timestamps(values: pd.Series, path: Path) -> pd.Series:
    """Timestamps as Int64 unix seconds. Accepts integer seconds or datetimes (native or ISO text)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetimes_to_seconds(values)
    numeric = pd.to_numeric(values, errors="coerce")
    if (numeric.isna() & values.notna()).any():
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        bad = (parsed.isna() & values.notna()).to_numpy()
        if bad.any():
            row = _first_row(bad)
            raise DataError(f"timestamp must be unix seconds or a date/time; row {row + 1} has "
                            f"{_show(values.iloc[row])}", path=path, column="timestamp", row=row + 1)
        return _datetimes_to_seconds(parsed)
    return to_nullable_int(values, path, "timestamp")


def _datetimes_to_seconds(values: pd.Series) -> pd.Series:
    if getattr(values.dt, "tz", None) is None:
        values = values.dt.tz_localize("UTC")
    seconds = (values - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype("Int64").rename("timestamp")


def drop_duplicate_pairs(df: pd.DataFrame, path: Path, keys: tuple[str, ...] = PAIR_COLUMNS,
                         what: str = "(user_id, item_id)") -> pd.DataFrame:
    """Keep the first of duplicate rows by `keys`; one warning names the file, the count and the first row."""
    dup = df.duplicated(list(keys), keep="first").to_numpy()
    if not dup.any():
        return df
    row = _first_row(dup)
    log.warning("%s: removed %d duplicate %s row(s), keeping the first of each; first duplicate at row %d",
                path, int(dup.sum()), what, row + 1)
    return df.loc[~dup].reset_index(drop=True)


def year_from_title(titles: pd.Series) -> pd.Series:
    """The year in a title's trailing "(YYYY)", as Int64 (NA when absent)."""
    years = titles.astype(str).str.extract(_TITLE_YEAR, expand=False)
    return pd.to_numeric(years, errors="coerce").astype("Int64")


# -------------------------------------------------------------------------------------------- public loaders


def interactions_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate a raw interactions frame (read from `path`) into the interactions contract, deduplicated."""
    check_columns(df, PAIR_COLUMNS, path, "interactions")
    check_not_empty(df, path, "interactions")
    out = pd.DataFrame({
        "user_id": to_int_ids(df["user_id"], path, "user_id"),
        "item_id": to_int_ids(df["item_id"], path, "item_id"),
        "rating": to_float(df["rating"], path, "rating") if "rating" in df else np.full(len(df), np.nan),
        "timestamp": (to_timestamps(df["timestamp"], path) if "timestamp" in df
                      else pd.array([pd.NA] * len(df), dtype="Int64")),
    })
    return drop_duplicate_pairs(out, path)[list(INTERACTION_COLUMNS)]


def load_interactions(path: Path, *, encoding: str = "utf-8") -> pd.DataFrame:
    """Load user-supplied interactions from Parquet or CSV (by suffix).

    Required columns: user_id, item_id (integers). Optional: rating (numeric), timestamp (unix seconds or
    date/time). Extra columns are ignored. Duplicate (user_id, item_id) rows keep the first, with one warning.
    Returns columns user_id int64, item_id int64, rating float64, timestamp Int64.
    """
    path = Path(path)
    return interactions_frame(read_frame(path, "interactions", encoding=encoding), path)


def _text_column(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df:
        return pd.Series([""] * len(df), dtype=object, name=column)
    values = df[column]
    # Parquet may hold genres as a list column; the contract is one '|'-joined string.
    values = values.map(lambda v: "|".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else v)
    return values.astype(object).where(values.notna(), "").astype(str).astype(object)


def items_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate a raw item table (read from `path`) into the items contract, deduplicated by item_id."""
    check_columns(df, ("item_id", "title"), path, "item table")
    check_not_empty(df, path, "item table")
    title = _text_column(df, "title")
    year = to_nullable_int(df["year"], path, "year") if "year" in df else year_from_title(title)
    out = pd.DataFrame({
        "item_id": to_int_ids(df["item_id"], path, "item_id"),
        "title": title.to_numpy(),
        "year": year.to_numpy(),
        "genres": _text_column(df, "genres").to_numpy(),
        "description": _text_column(df, "description").to_numpy(),
    })
    out["year"] = out["year"].astype("Int64")
    return drop_duplicate_pairs(out, path, keys=("item_id",), what="item_id")[list(ITEM_COLUMNS)]


def load_item_table(path: Path, *, encoding: str = "utf-8") -> pd.DataFrame:
    """Load an item text table from Parquet or CSV (by suffix).

    Required columns: item_id, title. Optional: year (else parsed from a trailing "(YYYY)" in the title),
    genres ('|'-joined, or a list column in Parquet), description. Missing text becomes ''.
    """
    path = Path(path)
    return items_frame(read_frame(path, "item table", encoding=encoding), path)


def empty_items(item_ids: np.ndarray) -> pd.DataFrame:
    """An items table for `item_ids` (deduplicated, sorted) with no text."""
    ids = np.unique(np.asarray(item_ids, dtype=np.int64))
    n = ids.size
    return pd.DataFrame({
        "item_id": ids,
        "title": np.full(n, "", dtype=object),
        "year": pd.array([pd.NA] * n, dtype="Int64"),
        "genres": np.full(n, "", dtype=object),
        "description": np.full(n, "", dtype=object),
    })


def merge_items(items: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """`items` plus a text-less row for every id in `item_ids` it lacks, sorted by item_id."""
    missing = np.setdiff1d(np.asarray(item_ids, dtype=np.int64), items["item_id"].to_numpy(np.int64))
    if missing.size:
        log.warning("%d interacted item(s) have no row in the item table; they get empty text", missing.size)
        items = pd.concat([items, empty_items(missing)], ignore_index=True)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    items["year"] = items["year"].astype("Int64")
    return items


def load_tabular(interactions_path: Path, items_path: Path | None, name: str) -> Dataset:
    """Load user-supplied interactions and an optional item table into a Dataset.

    Without an item table the items are the interacted item ids with empty text; with one, interacted items
    the table lacks are added with empty text (so every item keeps a row).
    """
    interactions = load_interactions(Path(interactions_path))
    item_ids = interactions["item_id"].to_numpy()
    items = empty_items(item_ids) if items_path is None else merge_items(load_item_table(Path(items_path)), item_ids)
    return Dataset(name=name, interactions=interactions, items=items, users=None)


def find_in_folder(folder: Path, stem: str) -> Path | None:
    """`<folder>/<stem>.parquet` (preferred) or `<stem>.csv`, whichever exists first; None if neither."""
    for suffix in PARQUET_SUFFIXES + CSV_SUFFIXES:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_tabular_dir(folder: Path, name: str | None = None) -> Dataset:
    """Load `interactions.(parquet|csv)` and optional `items.(parquet|csv)` from a dataset folder."""
    folder = Path(folder)
    interactions = find_in_folder(folder, INTERACTIONS_STEM)
    if interactions is None:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "(not a folder)"
        raise DataError(f"dataset folder lacks interactions.parquet or interactions.csv; it has: {found or '(empty)'}",
                        path=folder)
    return load_tabular(interactions, find_in_folder(folder, ITEMS_STEM), name or folder.name)
