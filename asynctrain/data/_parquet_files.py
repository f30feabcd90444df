"""The files of a Parquet stream: found, their footers read and checked, their row groups
read as numpy arrays.

:class:`ParquetFiles` does all the checking that needs no row data (which files, label
and feature columns present and numeric, the same schema in every file, no nulls where
the footer's statistics tell) when it is created, so a bad source fails before anything
is trained; :meth:`ParquetFiles.read` then reads one row group at a time, in chunks, and
converts it. pyarrow is imported here, lazily: it is the optional extra
``asynctrain[parquet]``.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import DataError, DataTypeError
from asynctrain._finite import all_finite

CHUNK_BYTES = 8 * 2**20
"""About how many bytes of row data :meth:`ParquetFiles.read` converts at a time."""

_INT64_MAX = np.iinfo(np.int64).max  # a uint64 label above it would wrap to a negative one

_FIND: Any = object()  # _values: find the column's view dtype itself

_INSTALL = "reading Parquet needs pyarrow: pip install 'asynctrain[parquet]'"


def check_pyarrow() -> None:
    """Raise ImportError naming the extra unless pyarrow can be imported (without
    importing it: that takes a while, and happens where the files are read)."""
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError(_INSTALL)


def _pyarrow() -> tuple[Any, Any]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc


class Piece(NamedTuple):
    """Row group ``group`` of file number ``file``; its first row is row ``first`` of the
    stream (counting every file's rows, in file order)."""

    file: int
    group: int
    first: int
    rows: int


class Chunk(NamedTuple):
    """Rows of one row group, converted: ``first`` is the stream index of the first."""

    X: npt.NDArray[Any]
    y: npt.NDArray[Any]
    w: npt.NDArray[Any] | None
    first: int


class ParquetFiles:
    """The Parquet files at ``path``, checked: see the module docstring.

    Use it as a context manager: it keeps the file it read last open until closed.

    Args:
        path: a file, a directory (every ``*.parquet`` file below it, skipping names that
            start with ``_`` or ``.``) or a glob pattern (``**`` recurses).
        label: the label column.
        features: the feature columns; None for every column but the label and the
            weight (of the first file; the others must have the same columns).
        weight: the sample weight column, or None.

    Raises:
        DataError: no file found, a file that is not Parquet, a missing column, nulls, or
            files whose schemas differ (naming both files).
        DataTypeError: a column that is not numeric.
        ImportError: pyarrow is missing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        label: str,
        features: Sequence[str] | None,
        weight: str | None = None,
    ):
        self._pa, self._pq = _pyarrow()
        self.paths = find_files(path)
        metas = [self._footer(file) for file in self.paths]
        self.label, self.weight = label, weight
        schema = metas[0].schema.to_arrow_schema()
        self.features = _features(self.paths[0], schema, label, features, weight)
        columns = self.columns
        _named_once(self.paths[0], schema, columns)
        types = _types(self.paths[0], schema, columns, self._pa)
        for file, meta in zip(self.paths[1:], metas[1:], strict=True):
            _same_schema(self.paths[0], file, types, meta.schema.to_arrow_schema(), features)
        for file, meta in zip(self.paths, metas, strict=True):
            _no_nulls_in_statistics(file, meta, columns)
        self._metas = metas
        # Every file has these types (checked above): each column's numpy view, found once.
        self._views = [_view_dtype(types[name], self._pa) for name in columns]
        self.pieces = _pieces(metas)
        self._open: tuple[int, Any] | None = None  # (file number, handle) last read

    @property
    def columns(self) -> list[str]:
        """The columns read: the features, the label, then the weight (if any)."""
        return [*self.features, self.label, *([] if self.weight is None else [self.weight])]

    def __enter__(self) -> ParquetFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file read last (reading opens it again)."""
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def _handle(self, number: int) -> Any:
        """File ``number``, open; kept open for the next row group, often of the same file."""
        if self._open is None or self._open[0] != number:
            self.close()
            handle = self._pq.ParquetFile(
                self.paths[number], metadata=self._metas[number], pre_buffer=False
            )
            self._open = (number, handle)
        return self._open[1]

    def _footer(self, file: Path) -> Any:
        try:
            return self._pq.read_metadata(file)
        except (self._pa.ArrowException, OSError) as exc:
            raise DataError(
                f"cannot read {file} as Parquet ({_one_line(exc)}); the file may be corrupt, "
                "truncated or of another format: rewrite it, or move it out of the stream's path"
            ) from exc

    def read(self, piece: Piece, dtype: np.dtype[Any]) -> Iterator[Chunk]:
        """Yield ``piece``'s rows a :class:`Chunk` at a time: ``X`` in ``dtype``, ``y``
        as int64 labels (integer or bool column) or ``dtype`` targets, ``w`` the weights
        in ``dtype`` (None without a weight column), ``first`` the stream index of the
        chunk's first row.

        Raises:
            DataError: the row group cannot be decoded, or holds a null, NaN or Inf, a
                negative weight (naming the file, row group, column and row), or a uint64
                label beyond int64.
        """
        file, columns = self.paths[piece.file], self.columns
        chunk = max(1, CHUNK_BYTES // (8 * len(columns)))
        first = piece.first
        try:
            batches = self._handle(piece.file).iter_batches(
                batch_size=chunk, row_groups=[piece.group], columns=columns, use_threads=False
            )
            for batch in batches:
                where = f"{file}, row group {piece.group}"
                X, y, w = _arrays(batch, columns, self._views, len(self.features), dtype, where)
                del batch  # converted: its memory goes back before the rows are used
                offset = first - piece.first
                _check_finite(X, y, w, columns, where, offset)
                if w is not None:
                    _check_weights(w, self.weight, where, offset)
                yield Chunk(X, y, w, first)
                first += len(X)
        except (self._pa.ArrowException, OSError) as exc:
            raise DataError(
                f"cannot read row group {piece.group} of {file} ({_one_line(exc)}); the file "
                "may be corrupt or truncated: rewrite it"
            ) from exc


def find_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files ``path`` names, sorted: itself, those below a directory, or the
    files a glob pattern matches.

    Raises:
        DataError: nothing found, naming ``path``.
    """
    text = os.fspath(path)
    found = Path(text)
    if found.is_file():
        return [found]
    if found.is_dir():
        files = sorted(
            file
            for file in found.rglob("*.parquet")
            if file.is_file() and not _hidden(file.relative_to(found))
        )
        if not files:
            raise DataError(
                f"no Parquet files in the directory '{text}' (looked for *.parquet below it, "
                "skipping names that start with '_' or '.'); pass a file or a glob pattern"
            )
        return files
    if glob.has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise DataError(f"the pattern '{text}' matches no files; check the path")
        return matches
    raise DataError(f"no such file or directory: '{text}'")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.parts)


def _features(
    file: Path, schema: Any, label: str, features: Sequence[str] | None, weight: str | None
) -> tuple[str, ...]:
    names = list(schema.names)
    for role, name in (("label", label), ("weight", weight)):
        if name is not None and name not in names:
            raise DataError(
                f"{file} has no {role} column {name!r}; its columns are {names}: pass "
                f"{role}= one of them"
            )
    if features is None:
        index = _pandas_index(schema)
        chosen = tuple(name for name in names if name not in (label, weight, *index))
        if not chosen:
            taken = f"the label column {label!r}" + (
                "" if weight is None else f" and the weight column {weight!r}"
            )
            raise DataError(f"{file} has only {taken}; no features to train on")
        return chosen
    missing = [name for name in features if name not in names]
    if missing:
        raise DataError(
            f"{file} has no feature column {missing[0]!r}; its columns are {names}: fix "
            "features=, or leave it out to use every column but the label"
        )
    return tuple(features)


def _pandas_index(schema: Any) -> list[str]:
    """The columns that hold a pandas index (``DataFrame.to_parquet`` of a frame whose
    index is not a plain range writes it as a column, ``__index_level_0__``): row labels,
    not features, which pandas and pyarrow read back as the index."""
    try:
        metadata = schema.pandas_metadata or {}
    except (ValueError, TypeError):  # metadata that is not pandas' JSON
        return []
    return [name for name in metadata.get("index_columns", ()) if isinstance(name, str)]


def _named_once(file: Path, schema: Any, columns: list[str]) -> None:
    """Refuse a column read by name that ``file`` has more than once: which of them is
    meant cannot be told (pyarrow's lookup by name fails with a bare KeyError)."""
    names = list(schema.names)
    for name in dict.fromkeys(columns):
        if names.count(name) > 1:
            raise DataError(
                f"{file} has {names.count(name)} columns named {name!r}; columns are read by "
                "name, so each one read needs a name of its own: rename them before writing"
            )


def _types(file: Path, schema: Any, columns: list[str], pa: Any) -> dict[str, Any]:
    """The Arrow type of each of ``columns``, all numbers (integer, float or bool)."""
    types = {name: schema.field(name).type for name in columns}
    for name, kind in types.items():
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if not (numeric or pa.types.is_boolean(kind)):
            raise DataTypeError(
                f"column {name!r} of {file} has type {kind}, not a number; asynctrain trains "
                "on integer, float or bool columns: encode it as numbers first, or leave it "
                "out with features=[...]"
            )
    return types


def _same_schema(
    first: Path, file: Path, types: dict[str, Any], schema: Any, features: Sequence[str] | None
) -> None:
    _named_once(file, schema, list(types))
    names = list(schema.names)
    if features is None and set(names) - set(_pandas_index(schema)) != {*types}:
        extra = sorted(set(names) - {*types})
        lacking = sorted({*types} - set(names))
        raise DataError(
            f"{file} and {first} have different columns ({file.name} adds {extra} and lacks "
            f"{lacking}); every file of a stream needs the same columns, or pass features=[...]"
        )
    for name, kind in types.items():
        if name not in names:
            raise DataError(
                f"{file} has no column {name!r}, which {first} has; every file of a stream "
                "needs the label and feature columns"
            )
        if schema.field(name).type != kind:
            raise DataError(
                f"column {name!r} is {kind} in {first} but {schema.field(name).type} in {file}; "
                "every file of a stream needs the same column types: rewrite one of them"
            )


def _no_nulls_in_statistics(file: Path, meta: Any, columns: list[str]) -> None:
    """Refuse nulls the footer's statistics already count (rows are checked as read)."""
    index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for name in columns:
            if name not in index:
                continue
            stats = row_group.column(index[name]).statistics
            if stats is not None and stats.has_null_count and stats.null_count > 0:
                _raise_nulls(name, f"{file}, row group {group}", stats.null_count)


def _raise_nulls(name: str, where: str, count: int) -> None:
    raise DataError(
        f"{where}: column {name!r} has {count} null(s); asynctrain trains on complete rows: "
        "fill them (e.g. pyarrow.compute.fill_null) or drop those rows before writing"
    )


def _pieces(metas: list[Any]) -> list[Piece]:
    pieces, first = [], 0
    for number, meta in enumerate(metas):
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            pieces.append(Piece(number, group, first, rows))
            first += rows
    return pieces


def _arrays(
    batch: Any,
    names: Sequence[str],
    views: Sequence[np.dtype[Any] | None],
    n_features: int,
    dtype: np.dtype[Any],
    where: str,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None]:
    """``X`` (rows × features, ``dtype``), ``y`` and the weights (``dtype``; None
    without a weight column) of one record batch; ``names``: the features, the label,
    then the weight column (if any); ``views``: each one's numpy type (None for bool),
    from :func:`_view_dtype`.

    ``X`` is column-major (each feature's values contiguous): whoever takes its rows
    copies them anyway (a shuffle buffer, a batch) and reads them in row order at no
    extra cost, so it is not copied into row order here.
    """
    position = {name: i for i, name in enumerate(batch.schema.names)}
    for name in names[n_features:]:
        _no_nulls(batch, name, position, where)
    label, *weights = (
        _values(batch.column(position[name]), None, view)
        for name, view in zip(names[n_features:], views[n_features:], strict=True)
    )
    if label.dtype == np.uint64 and len(label) and int(label.max()) > _INT64_MAX:
        raise DataError(
            f"{where}: label column {names[n_features]!r} holds {int(label.max())}, beyond the "
            "int64 range of labels; relabel the classes as 0 .. n_classes - 1 (or write "
            "float targets) before writing"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow gives Inf, refused next
        X = _features_of(batch, names[:n_features], views[:n_features], position, dtype, where)
        y = label.astype(np.int64) if label.dtype.kind in "biu" else label.astype(dtype)
        w = weights[0].astype(dtype) if weights else None
    return X, y, w


def _features_of(
    batch: Any,
    names: Sequence[str],
    views: Sequence[np.dtype[Any] | None],
    position: dict[str, int],
    dtype: np.dtype[Any],
    where: str,
) -> npt.NDArray[Any]:
    """The feature columns of ``batch`` as one column-major array in ``dtype``.

    Columns all of one numeric type are copied side by side by Arrow in one call, with
    the GIL released (``RecordBatch.to_tensor``), then cast if need be: a call per
    column would take the GIL back from the training as many times (Arrow refuses
    nulls; the columns are then searched for them). Mixed types (which Arrow would cast
    to a common type first, rounding twice) and bools are copied a column at a time,
    each cast straight to ``dtype``.

    Raises:
        DataError: a null, naming its column.
    """
    view = views[0]
    if view is not None and all(other == view for other in views):
        features = batch.select(list(names))
        try:
            X = np.asarray(features.to_tensor(row_major=False))
        except (ValueError, TypeError):  # ArrowInvalid or ArrowTypeError: a null somewhere
            for name in names:
                _no_nulls(batch, name, position, where)
            raise
        return X if X.dtype == dtype else X.astype(dtype, order="F")
    for name in names:
        _no_nulls(batch, name, position, where)
    # Filled in as rows of X transposed (contiguous writes, casting on the way): five
    # times faster than writing them into X's columns.
    transposed = np.empty((len(names), batch.num_rows), dtype)
    for j, (name, kind) in enumerate(zip(names, views, strict=True)):
        transposed[j] = _values(batch.column(position[name]), None, kind)
    return transposed.T


def _no_nulls(batch: Any, name: str, position: dict[str, int], where: str) -> None:
    nulls = batch.column(position[name]).null_count
    if nulls:
        _raise_nulls(name, where, nulls)


def _view_dtype(kind: Any, pa: Any) -> np.dtype[Any] | None:
    """The numpy dtype that views a numeric Arrow type's values buffer; None for bool
    (one bit a value, unpacked instead)."""
    if pa.types.is_boolean(kind):
        return None
    letter = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) else "u"
    return np.dtype(f"<{letter}{kind.bit_width // 8}")


def _values(column: Any, pa: Any, view: Any = _FIND) -> npt.NDArray[Any]:
    """The values of a numeric Arrow array without nulls, as a numpy view of its buffer
    (bools are unpacked into a new array). ``view``: the dtype that views its values,
    from :func:`_view_dtype` (None for bool), found once per column by the caller;
    left out, it is found here.

    Not ``column.to_numpy()``: its first call imports pandas (half a second and about
    50 MB) when pandas is installed.
    """
    if view is _FIND:
        view = _view_dtype(column.type, pa)
    rows, data = len(column), column.buffers()[1]
    if view is None:  # one bit a value, least significant first
        bits = np.frombuffer(data, np.uint8) if rows else np.empty(0, np.uint8)
        values = np.unpackbits(bits, bitorder="little")[column.offset : column.offset + rows]
        return values.astype(bool)
    if not rows:
        return np.empty(0, view)
    return np.frombuffer(data, view, count=rows, offset=column.offset * view.itemsize)


def _check_finite(
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    w: npt.NDArray[Any] | None,
    names: list[str],
    where: str,
    offset: int,
) -> None:
    """Refuse a NaN or Inf in ``X``, ``y`` or ``w``, naming its column and row in the row
    group (``names``: the features, the label, then the weight column, if any)."""
    n_features = X.shape[1]
    for values, first in ((X, 0), (y, n_features), (w, n_features + 1)):
        if values is None or all_finite((values,)):
            continue
        finite = np.isfinite(values) if values.dtype.kind == "f" else None
        if finite is None or finite.all():
            continue
        row, *column = np.unravel_index(int(np.argmin(finite)), finite.shape)
        name = names[first + (int(column[0]) if column else 0)]
        raise DataError(
            f"{where}: column {name!r} has a non-finite value ({values[row, *column]}) at "
            f"row {offset + int(row)} of the row group; drop or impute rows with NaN/Inf "
            "before writing"
        )


def _check_weights(w: npt.NDArray[Any], name: str | None, where: str, offset: int) -> None:
    """Refuse a negative weight (finite ones: :func:`_check_finite` ran first), naming its
    column and row in the row group. A chunk of zero weights passes: it is the batches
    that ``fit_stream`` checks for a positive weight."""
    negative = w < 0
    if negative.any():
        row = int(np.argmax(negative))
        raise DataError(
            f"{where}: weight column {name!r} has a negative weight ({w[row]}) at row "
            f"{offset + row} of the row group; weights must be finite and >= 0 (0 drops a "
            "row): fix or drop those rows before writing"
        )
