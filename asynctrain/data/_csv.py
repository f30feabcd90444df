"""Reading a comma-separated file of numbers into features and a label column.

The fast path is ``np.loadtxt``; only when it fails is the file scanned again, row by
row, to name the exact line and column of the first bad cell.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, DataError

_ENCODING = "utf-8-sig"  # tolerates the byte-order mark spreadsheet programs write
_EXACT_INT = 2.0**53  # floats beyond this are not exact integers


class CsvTable(NamedTuple):
    """What :func:`read_csv` returns: features, labels, weights and feature names."""

    X: npt.NDArray[np.float64]
    y: npt.NDArray[Any]
    weight: npt.NDArray[np.float64] | None
    """The weight column, or None when none was asked for."""
    feature_names: list[str] | None
    """The header's names of the feature columns, or None without a header."""


def read_csv(path: Path, label: str | int | None, weight: str | int | None = None) -> CsvTable:
    """Return the features, labels and (optionally) weights of a CSV file with an
    optional header row.

    The first line is a header when none of its cells is a number. The label column is
    ``label`` (a header name or a column index, negative from the end), else the column
    named ``"label"``, else the last column (the one before it when ``weight`` names the
    last). A label column of whole numbers becomes int64 labels; any other is float64.
    ``weight`` names a column of sample weights the
    same way; every other column is a feature, in file order.

    Raises:
        DataError: the file is empty, a cell is not a number (naming the line and
            column), rows have different lengths, ``label`` or ``weight`` names no
            column, or no feature column is left.
        ConfigError: ``label`` or ``weight`` is a name but the file has no header, or
            both name the same column.
    """
    header, n_columns, skip = _first_row(path)
    weights = None if weight is None else _column(path, header, n_columns, weight, "weight")
    if label is not None:
        column = _column(path, header, n_columns, label, "label")
    elif header and "label" in header:
        column = header.index("label")
    else:  # the last column, unless it holds the weights
        column = n_columns - 1 if weights != n_columns - 1 else n_columns - 2
    if weights == column:
        raise ConfigError(f"label and weight both name column {column} of {path}; pick two")
    features = [c for c in range(n_columns) if c not in (column, weights)]
    if not features:
        raise DataError(f"{path} has no feature column besides the label and weight columns")
    values = _parse(path, skip=skip, n_columns=n_columns)
    return CsvTable(
        values[:, features],
        _labels(values[:, column]),
        None if weights is None else values[:, weights],
        None if header is None else [header[c] for c in features],
    )


def has_header(path: Path) -> bool:
    """Whether the CSV file's first row is a header (none of its cells is a number)."""
    return _first_row(path)[0] is not None


def read_columns(path: Path, names: list[str]) -> npt.NDArray[np.float64]:
    """The columns ``names`` of a CSV file with a header row, in that order (the others,
    a label column say, are left out).

    Raises:
        DataError: the file has no header row, lacks one of ``names`` (named), or fails
            as in :func:`read_csv`.
    """
    header, n_columns, skip = _first_row(path)
    if header is None:
        raise DataError(f"{path} has no header row; the model needs the columns {names}")
    missing = [name for name in names if name not in header]
    if missing:
        raise DataError(f"{path} lacks the columns {missing} the model was trained on")
    values = _parse(path, skip=skip, n_columns=n_columns)
    return values[:, [header.index(name) for name in names]]


def _first_row(path: Path) -> tuple[list[str] | None, int, int]:
    """Return the header (None when the first row is data), the column count, and the
    number of lines to skip to reach the data (0 without a header)."""
    try:
        with path.open(newline="", encoding=_ENCODING) as handle:
            reader = csv.reader(handle)
            first = next((row for row in reader if row), None)
            header_lines = reader.line_num
            second = next((row for row in reader if row), None)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
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


def _column(path: Path, header: list[str] | None, n_columns: int, key: str | int, what: str) -> int:
    """The index of the column ``key`` (a header name, or an index, negative from the end)
    names; ``what`` is the option's name for the messages."""
    if isinstance(key, str):
        if header is None:
            raise ConfigError(
                f"{what}={key!r} names a column but {path} has no header row; "
                f"pass the column index instead, e.g. {what}=0"
            )
        if key not in header:
            raise DataError(f"{path} has no column {key!r}; its columns are {header}")
        return header.index(key)
    if not -n_columns <= key < n_columns:
        raise DataError(
            f"{what}={key} is out of range: {path} has {n_columns} columns "
            f"(indices 0 .. {n_columns - 1}, or negative from the end)"
        )
    return key % n_columns


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
    try:
        with path.open(newline="", encoding=_ENCODING) as handle:
            reader = csv.reader(handle)
            for row in reader:
                problem = _row_problem(row, n_columns) if reader.line_num > skip else None
                if problem:
                    return f"{path} line {reader.line_num}{problem}"
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    return None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """The error for a file in another encoding (Latin-1, say: a spreadsheet's "CSV"),
    which Python's decoder reports as a bare UnicodeDecodeError without the file."""
    byte = exc.object[exc.start : exc.start + 1]
    return DataError(
        f"{path} is not UTF-8 text (it holds the byte {byte!r}, {exc.reason}); save it as "
        'UTF-8 ("CSV UTF-8" in a spreadsheet program) or convert it, e.g. '
        "`iconv -f latin1 -t utf-8 old.csv > new.csv`"
    )


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
