"""Reading a comma-separated file of numbers into features and a label column.

The fast path is ``np.loadtxt``; only when it fails is the file scanned again, row by
row, to name the exact line and column of the first bad cell.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, DataError

_ENCODING = "utf-8-sig"  # tolerates the byte-order mark spreadsheet programs write
_EXACT_INT = 2.0**53  # floats beyond this are not exact integers


def read_csv(
    path: Path, label: str | int | None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    """Return ``(X, y)`` from a CSV file with an optional header row.

    The first line is a header when none of its cells is a number. The label column is
    ``label`` (a header name or a column index, negative from the end), else the column
    named ``"label"``, else the last column. A label column of whole numbers becomes
    int64 labels; any other is float64.

    Raises:
        DataError: the file is empty, a cell is not a number (naming the line and
            column), rows have different lengths, or ``label`` names no column.
        ConfigError: ``label`` is a name but the file has no header.
    """
    header, n_columns, skip = _first_row(path)
    column = _label_column(path, header, n_columns, label)
    values = _parse(path, skip=skip, n_columns=n_columns)
    X = np.delete(values, column, axis=1)
    return X, _labels(values[:, column])


def _first_row(path: Path) -> tuple[list[str] | None, int, int]:
    """Return the header (None when the first row is data), the column count, and the
    number of lines to skip to reach the data (0 without a header)."""
    with path.open(newline="", encoding=_ENCODING) as handle:
        reader = csv.reader(handle)
        first = next((row for row in reader if row), None)
        header_lines = reader.line_num
        second = next((row for row in reader if row), None)
    if first is None:
        raise DataError(f"{path} is empty; it needs rows of comma-separated numbers")
    if len(first) < 2:
        raise DataError(
            f"{path} has {len(first)} column; it needs at least one feature and a label"
        )
    if any(map(_is_number, first)):
        return None, len(first), 0
    if second is None:
        raise DataError(f"{path} has a header row but no data rows")
    return [cell.strip() for cell in first], len(first), header_lines


def _label_column(
    path: Path, header: list[str] | None, n_columns: int, label: str | int | None
) -> int:
    if label is None:
        return header.index("label") if header and "label" in header else n_columns - 1
    if isinstance(label, str):
        if header is None:
            raise ConfigError(
                f"label={label!r} names a column but {path} has no header row; "
                "pass the column index instead, e.g. label=0"
            )
        if label not in header:
            raise DataError(f"{path} has no column {label!r}; its columns are {header}")
        return header.index(label)
    if not -n_columns <= label < n_columns:
        raise DataError(
            f"label={label} is out of range: {path} has {n_columns} columns "
            f"(indices 0 .. {n_columns - 1}, or negative from the end)"
        )
    return label % n_columns


def _parse(path: Path, *, skip: int, n_columns: int) -> npt.NDArray[np.float64]:
    try:
        values = np.loadtxt(
            path, delimiter=",", skiprows=skip, ndmin=2, comments=None,
            quotechar='"', encoding=_ENCODING, dtype=np.float64,
        )  # fmt: skip
    except ValueError as exc:
        raise DataError(_first_problem(path, n_columns, skip) or f"{path}: {exc}") from None
    if values.shape[1] != n_columns:
        raise DataError(
            f"{path}: the first row has {n_columns} columns but the data rows have "
            f"{values.shape[1]}; every row needs the same number of cells"
        )
    return values


def _first_problem(path: Path, n_columns: int, skip: int) -> str | None:
    """Describe the first data row of the wrong length or with a non-numeric cell."""
    with path.open(newline="", encoding=_ENCODING) as handle:
        reader = csv.reader(handle)
        for row in reader:
            problem = _row_problem(row, n_columns) if reader.line_num > skip else None
            if problem:
                return f"{path} line {reader.line_num}{problem}"
    return None


def _row_problem(row: list[str], n_columns: int) -> str | None:
    if row and len(row) != n_columns:
        return (
            f" has {len(row)} cells, expected {n_columns}; every row needs the same number of cells"
        )
    for column, cell in enumerate(row):
        if not _is_number(cell):
            return (
                f", column {column}: {cell!r} is not a number; "
                "fix or remove that row (every cell must be numeric)"
            )
    return None


def _labels(column: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    whole = np.isfinite(column) & (np.abs(column) < _EXACT_INT) & (column == np.round(column))
    return column.astype(np.int64) if whole.all() else column


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
