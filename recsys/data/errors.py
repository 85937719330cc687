"""The one error type for bad input data: it names the file, the column and the row when known."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, column and row (1-based line in the file when known)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.column = column
        self.row = row
        where = []
        if self.path is not None:
            where.append(f"file {self.path}")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{message} [{', '.join(where)}]" if where else message)
