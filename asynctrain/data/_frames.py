"""Data frames and Arrow tables as input: detection, column checks, conversion to arrays.

A pandas or polars ``DataFrame``, or a pyarrow ``Table`` or ``RecordBatch``, is accepted
as ``X``; a pandas or polars ``Series``, or a pyarrow ``Array`` or ``ChunkedArray``, as
``y``. Rows are taken by position (a pandas index is ignored, as scikit-learn does).

- Numeric columns only: integers, floats and booleans (booleans as 0 and 1), pandas'
  nullable ``Int64``/``Float64``/``boolean`` and Arrow-backed numbers included. A
  column of text, categories, dates, times, decimals, objects or nested values is
  refused, named, with :class:`DataTypeError`: encode it as numbers, or drop it.
- A null (None, ``pd.NA``, a polars or Arrow null) becomes NaN, which the dataset's
  NaN check then refuses, naming the row and the column.
- Each column is cast once, straight from its own dtype to the target dtype, into one
  new C-ordered array that nothing else holds: the values equal those of the same
  columns stacked into a numpy array and cast (``X[:, j].astype(dtype)``).
- Feature names are the column names when they are all strings; a frame whose names
  are all something else (pandas' default ``0 .. k-1``) has none, like a plain array;
  a mix of the two, or a name used twice, is refused.

pandas, polars and pyarrow are never imported here: an object is recognised by the
module and name of its class (or of a base class), and read through its own methods.
Any other table that exports the Arrow PyCapsule stream (``__arrow_c_stream__``: DuckDB
relations, and other data frame libraries) is read through ``pyarrow.table`` (pyarrow
is then needed, and imported).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError, DataError, DataTypeError

FeatureNames = tuple[str, ...]
"""The names of a dataset's feature columns, in order."""

_TABLES = {("pandas", "DataFrame"), ("polars", "DataFrame"), ("pyarrow", "Table")}
_TABLES |= {("pyarrow", "RecordBatch")}
_COLUMNS = {("pandas", "Series"), ("polars", "Series"), ("pyarrow", "Array")}
_COLUMNS |= {("pyarrow", "ChunkedArray")}
_LAZY = {("polars", "LazyFrame")}
_SHOWN = 5  # names listed in one message
_BLOCK_BYTES = 1 << 22  # rows of the output converted together (4 MiB: cache-sized)


def _kind(value: object, known: set[tuple[str, str]]) -> str | None:
    """The library of ``value`` if its class (or a base class) is one of ``known``."""
    for cls in type(value).__mro__:
        key = (cls.__module__.partition(".")[0], cls.__name__)
        if key in known:
            return key[0]
    return None


def is_table(value: object) -> bool:
    """True for a pandas/polars DataFrame, a pyarrow Table/RecordBatch, or another object
    that exports an Arrow stream (``__arrow_c_stream__``).

    Example:
        >>> import numpy as np
        >>> is_table(np.zeros((2, 2)))
        False
    """
    if _kind(value, _TABLES) is not None:
        return True
    return _kind(value, _COLUMNS) is None and hasattr(type(value), "__arrow_c_stream__")


def _readable(table: Any) -> tuple[str, Any]:
    """``table``'s library, and ``table`` itself or, for a foreign Arrow stream, the
    pyarrow Table read from it."""
    library = _kind(table, _TABLES)
    if library is not None:
        return library, table
    try:
        import pyarrow
    except ImportError as exc:
        raise DataTypeError(
            f"{_what(table)} is an Arrow stream; reading it needs pyarrow: "
            "pip install pyarrow, or pass a numpy array"
        ) from exc
    return "pyarrow", pyarrow.table(table)


def is_column(value: object) -> bool:
    """True for a pandas/polars Series or a pyarrow Array/ChunkedArray."""
    return _kind(value, _COLUMNS) is not None


def as_features(
    table: Any, *, name: str = "X", dtype: np.dtype[Any] | None = None
) -> tuple[npt.NDArray[Any], FeatureNames | None]:
    """``table``'s columns as one new ``(n_rows, n_columns)`` float array, and their names.

    Args:
        table: a pandas/polars DataFrame or a pyarrow Table/RecordBatch.
        name: how errors name ``table``.
        dtype: the float dtype to convert to; None: float64 if a column is float64 (or
            wider integers force it, as numpy's ``result_type`` says), else float32.

    Returns:
        ``(array, names)``: a C-ordered array of its own (never a view of ``table``),
        nulls as NaN; ``names`` is None when the column names are not strings.

    Raises:
        DataTypeError: a non-numeric column (named), or column names of mixed types.
        DataError: no columns, or a column name used twice.

    Example:
        >>> import pandas as pd
        >>> X, names = as_features(pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}))
        >>> X.dtype, names
        (dtype('float64'), ('a', 'b'))
    """
    library, table = _readable(table)
    names = check_table(table, name=name)
    labels, dtypes = _schema(library, table)
    if not labels:
        raise DataError(
            f"{name} is a {_what(table)} with no columns; pass at least one numeric column"
        )
    target = dtype if dtype is not None else _default_float(dtypes)
    out = np.empty((_rows(library, table), len(labels)), dtype=target)
    _fill(out, list(_values(library, table)))
    return out, names


def _fill(out: npt.NDArray[Any], columns: list[npt.NDArray[Any]]) -> None:
    """Cast ``columns`` into the columns of ``out``, a block of rows at a time: a block
    of ``out`` stays in cache while every column writes its part (whole-column writes
    into a C-ordered array would stream over all of it once per column)."""
    step = max(1, _BLOCK_BYTES // max(1, out.shape[1] * out.itemsize))
    with np.errstate(over="ignore", invalid="ignore"):  # too large → Inf, refused later
        for start in range(0, len(out), step):
            block = out[start : start + step]
            for j, values in enumerate(columns):
                block[:, j] = values[start : start + step]


def as_targets(column: Any, *, name: str = "y") -> npt.NDArray[Any]:
    """``column`` (a Series, an Arrow array, or a frame) as a numpy array of its values.

    A one-column frame gives its column (1-D); a wider one ``(n, k)`` float targets for
    multi-output regression. Numbers keep their dtype (ints stay ints); nulls make the
    column float64 with NaN, which the dataset's NaN check refuses.

    Raises:
        DataTypeError: ``column`` holds no numbers (text, categories, dates); the message
            says how to encode labels.

    Example:
        >>> import pandas as pd
        >>> as_targets(pd.Series([0, 1, 1]))
        array([0, 1, 1])
    """
    if is_table(column):
        library, column = _readable(column)
        if len(_schema(library, column)[0]) != 1:
            return as_features(column, name=name)[0]
        column = next(iter(_series(library, column)))
    kind = _kind(column, _COLUMNS)
    assert kind is not None, "as_targets takes a Series or an Arrow array"
    dtype = _dtype(kind, column)
    if not _numeric(kind, dtype):
        raise DataTypeError(
            f"{name} is a {_what(column)} of {dtype}, not numbers; encode the labels as "
            f"0 .. n_classes - 1, e.g. `classes, {name} = np.unique(np.asarray({name}), "
            f"return_inverse=True)` (classes[k] names class k)"
        )
    return _column_values(kind, column)


def check_table(table: Any, *, name: str = "X") -> FeatureNames | None:
    """Check ``table``'s columns (numeric, unique names of one type) without reading data.

    Returns:
        Its feature names, or None when its column names are not strings.

    Raises:
        DataTypeError, DataError: as :func:`as_features`.
    """
    library, table = _readable(table)
    labels, dtypes = _schema(library, table)
    names = _names(name, labels)
    _check_numeric(name, library, labels, dtypes)
    return names


def batch_as_table(value: Any) -> Any:
    """A pyarrow RecordBatch as a one-batch Table (no copy); anything else unchanged.

    For readers that know Tables but not batches (scikit-learn's feature names).
    """
    if _kind(value, {("pyarrow", "RecordBatch")}) is None:
        return value
    import pyarrow  # loaded already: value is one of its objects

    return pyarrow.Table.from_batches([value])


def refuse_lazy(value: object, name: str) -> None:
    """Raise for a lazy frame (a query, not data): it must be collected first.

    Raises:
        DataTypeError: ``value`` is a polars LazyFrame.
    """
    if _kind(value, _LAZY) is not None:
        raise DataTypeError(
            f"{name} is a polars LazyFrame, a query rather than data; collect it first: "
            f"{name}.collect()"
        )


def check_feature_names(
    names: Sequence[object] | None, n_features: int | None
) -> FeatureNames | None:
    """``names`` as feature names for ``n_features`` columns (None: no names).

    Raises:
        ConfigTypeError: a name is not a string.
        DataError: the count differs from ``n_features``, or a name repeats.
    """
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ConfigTypeError(
            f"feature_names must be a sequence of strings, got {type(names).__name__}"
        )
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ConfigTypeError(f"feature_names must be strings, got {bad[0]!r}")
    result = tuple(str(n) for n in names)
    if n_features is None or len(result) != n_features:
        raise DataError(
            f"feature_names has {len(result)} names but X has "
            + ("rows that are not 1-D" if n_features is None else f"{n_features} columns")
            + "; pass one name per column of a 2-D X"
        )
    _check_unique("feature_names", result)
    return result


def match_feature_names(
    expected: FeatureNames | None, given: FeatureNames | None, *, name: str
) -> FeatureNames | None:
    """The names to keep after ``given`` meets ``expected`` (trained on, or None).

    Data without names (a plain array) matches anything; names meet no names and are
    kept; two sets of names must be equal, in the same order (as scikit-learn: a
    reordered frame is refused, not reordered).

    Raises:
        DataError: naming the missing, unexpected or reordered columns.

    Example:
        >>> match_feature_names(("a", "b"), None, name="X")
        ('a', 'b')
        >>> match_feature_names(("a", "b"), ("b", "a"), name="X")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asynctrain._exceptions.DataError: X has the trained columns in another order: ...
    """
    if given is None:
        return expected
    if expected is None or given == expected:
        return given
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    problems = []
    if missing:
        problems.append(f"misses {_list(missing)}")
    if extra:
        problems.append(f"has columns not trained on: {_list(extra)}")
    fix = (
        "; select the trained columns in their order, e.g. frame[list(names)] (pandas) or "
        "frame.select(names) (polars, pyarrow) with names = trainer.feature_names"
    )
    if not problems:
        raise DataError(
            f"{name} has the trained columns in another order: {_list(list(given))}, "
            f"trained on {_list(list(expected))}{fix}"
        )
    raise DataError(
        f"{name} does not have the feature columns trained on ({_list(list(expected))}): "
        f"it {' and '.join(problems)}{fix}"
    )


# -- per library ---------------------------------------------------------------------------


def _schema(library: str, table: Any) -> tuple[list[object], list[Any]]:
    """The column labels and dtypes of ``table`` (no data read)."""
    if library == "pandas":
        return list(table.columns), list(table.dtypes)
    if library == "polars":
        return list(table.columns), list(table.dtypes)
    schema = table.schema
    return list(schema.names), list(schema.types)


def _rows(library: str, table: Any) -> int:
    return int(table.num_rows) if library == "pyarrow" else int(table.shape[0])


def _series(library: str, table: Any) -> Iterator[Any]:
    """The columns of ``table`` as its library's 1-D objects, in order."""
    if library == "pandas":
        yield from (series for _, series in table.items())
    elif library == "polars":
        yield from table.get_columns()
    else:
        yield from (table.column(j) for j in range(table.num_columns))


def _values(library: str, table: Any) -> Iterator[npt.NDArray[Any]]:
    series_library = library  # a pandas frame holds pandas Series, and so on
    for column in _series(library, table):
        yield _column_values(series_library, column)


def _dtype(library: str, column: Any) -> Any:
    return column.type if library == "pyarrow" else column.dtype


def _column_values(library: str, column: Any) -> npt.NDArray[Any]:
    """A numeric column's values as numpy (a view when it can be), nulls as NaN."""
    if library == "pandas":
        # A numpy dtype holds no nulls but NaN (kept by to_numpy); pandas' nullable and
        # Arrow-backed dtypes hold them as a mask, made NaN here.
        if not isinstance(column.dtype, np.dtype) and column.hasnans:
            return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan))
        return np.asarray(column.to_numpy())
    if library == "polars":
        if column.null_count():
            column = column.cast(float)  # polars reads Python's float as Float64
        return np.asarray(column.to_numpy())
    if column.null_count:
        column = column.cast("float64")
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _numeric(library: str, dtype: Any) -> bool:
    if library == "pandas":
        return getattr(dtype, "kind", "O") in "biuf"
    return _normalized(dtype) in _NUMPY


def _check_numeric(name: str, library: str, labels: list[object], dtypes: list[Any]) -> None:
    pairs = zip(labels, dtypes, strict=True)
    bad = [(label, dtype) for label, dtype in pairs if not _numeric(library, dtype)]
    if not bad:
        return
    shown = ", ".join(f"{label!r} ({dtype})" for label, dtype in bad[:_SHOWN])
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    drop = {"pandas": "{}.drop(columns=[{!r}])", "polars": "{}.drop({!r})"}.get(
        library, "{}.drop_columns([{!r}])"
    )
    raise DataTypeError(
        f"{name} has non-numeric column{'s' if len(bad) > 1 else ''} {shown}{more}; "
        "asynctrain trains on int, float and bool columns: encode them as numbers "
        f"(one-hot, or category codes) or drop them, e.g. {drop.format(name, bad[0][0])}"
    )


def _names(name: str, labels: list[object]) -> FeatureNames | None:
    strings = [isinstance(label, str) for label in labels]
    if not any(strings):
        return None
    if not all(strings):
        odd = next(label for label in labels if not isinstance(label, str))
        raise DataTypeError(
            f"{name} has column names of mixed types (strings, and {odd!r} of type "
            f"{type(odd).__name__}); feature names must all be strings: rename the "
            f"columns, e.g. {name}.columns = {name}.columns.astype(str) (pandas)"
        )
    result = tuple(str(label) for label in labels)
    _check_unique(name, result)
    return result


def _check_unique(name: str, names: FeatureNames) -> None:
    repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise DataError(
            f"{name} has the column name{'s' if len(repeated) > 1 else ''} "
            f"{_list(repeated)} more than once; feature names must be unique: "
            "rename or drop the duplicates"
        )


def _default_float(dtypes: list[Any]) -> np.dtype[Any]:
    """float64 if the columns' common numpy dtype is float64, else float32 (the rule of
    a numpy ``X``: ``np.asarray(frame)`` and then :class:`Dataset` give the same)."""
    common = np.result_type(*(_numpy_dtype(d) for d in dtypes))
    if common.kind == "f" and common.itemsize >= 8:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """The numpy dtype of a numeric column of ``dtype`` (pandas, polars or Arrow)."""
    numpy = getattr(dtype, "numpy_dtype", dtype)  # pandas' nullable and Arrow dtypes
    if isinstance(numpy, np.dtype):
        return numpy
    return np.dtype(_NUMPY.get(_normalized(dtype), "f4"))


def _normalized(dtype: Any) -> str:
    """``dtype``'s name, lower case, without a pandas ``[pyarrow]`` storage suffix."""
    return str(dtype).lower().partition("[")[0]


# The numeric dtypes of polars and Arrow, by normalized name (Arrow's float is float32).
_NUMPY = {f"{sign}int{bits}": f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}
_NUMPY |= {"bool": "bool", "boolean": "bool", "halffloat": "f2", "float16": "f2"}
_NUMPY |= {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _what(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__.partition('.')[0]} {cls.__name__}"


def _list(names: Sequence[object]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > _SHOWN else ''}]"
