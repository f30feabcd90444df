"""load(): a Dataset from .npz, .npy (memory-mapped), a directory of .npy files, .csv, or
Parquet (with the ``parquet`` extra).

Files are always read with ``allow_pickle=False``: loading never unpickles and so never
runs code from a file. Every failure is a :class:`DataError` naming the path (of a
``.npy`` pair or directory, the file of the array at fault: ``y.npy`` for bad targets);
a missing file is a DataError too (not FileNotFoundError), chained to the OSError.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError
from asynctrain._finite import check_finite
from asynctrain._types import DEFAULT_DTYPE
from asynctrain.data._csv import read_csv
from asynctrain.data._dataset import Dataset
from asynctrain.data._parquet import read_parquet
from asynctrain.data._validate import (
    as_array,
    check_rows,
    check_targets_shape,
    resolve_dtype,
    to_targets,
)

SUPPORTED = (
    ".npz",
    ".npy (with y_path)",
    ".csv",
    ".parquet",
    "a directory holding X.npy and y.npy, or .parquet files",
)
"""What :func:`load` reads, as listed in its error messages."""

_READ_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an archive; an empty archive
_NO_PICKLE = "asynctrain loads with allow_pickle=False and never unpickles"
_MAX_DEFLATE_RATIO = 1032  # the most zlib's deflate can compress: a longer claim is false


def load(
    path: str | os.PathLike[str],
    y_path: str | os.PathLike[str] | None = None,
    *,
    label: str | int | None = None,
    weight: str | int | os.PathLike[str] | None = None,
    dtype: npt.DTypeLike | None = None,
) -> Dataset:
    """Load a Dataset from disk, memory-mapping ``.npy`` files.

    - ``.npz`` holding arrays ``X`` and ``y`` (read into memory, then moved into shared
      memory: see :meth:`Dataset.to_shared`).
    - ``.npy`` of features plus ``y_path``, a ``.npy`` of targets; or a directory
      holding ``X.npy`` and ``y.npy``. Opened with ``mmap_mode="r"``: a float32/float64
      ``X`` is never copied into memory (pages are read on demand).
    - ``.csv``: comma-separated numbers, with an optional header row (the first line is
      a header when none of its cells is a number). The label column is ``label`` (a
      header name or a column index), else the column named ``"label"``, else the last
      column. Whole-number label columns become int64 labels. The features are parsed
      as float64 and stored as float32 unless ``dtype=np.float64``, in shared memory
      like ``.npz``. A header's names become the Dataset's ``feature_names``.
    - ``.parquet``, or a directory of ``.parquet`` files (with the ``parquet`` extra):
      every row, in file order, through :func:`~asynctrain.data.read_parquet`; the label
      column is ``label`` (a name), else the column named ``"label"``; the other numeric
      columns are the features, stored as float32 unless ``dtype=np.float64``, and
      their names become ``feature_names``. To train on files larger than memory, stream
      them with ``read_parquet`` instead.

    ``weight`` says where sample weights are (see :class:`Dataset`): a CSV column (name
    or index), a Parquet column, the name of an array in the ``.npz``, the name of a
    ``.npy`` file in the directory without its suffix (``weight="w"`` reads ``w.npy``),
    or, beside a features ``.npy``, the path of a weights ``.npy``.

    The dtype rules of :class:`Dataset` apply to what is read.

    Args:
        path: the file or directory.
        y_path: the targets ``.npy``; only with a features ``.npy``.
        label: the label column; only with ``.csv`` and Parquet.
        weight: where the sample weights are, as above; None (default): no weights.
        dtype: ``np.float32`` or ``np.float64`` to force the feature dtype.

    Returns:
        The validated Dataset.

    Raises:
        DataError: the file is missing (a DataError, not FileNotFoundError), unreadable,
            holds pickled objects, lacks ``X``, ``y`` or the weights, has an unsupported
            extension (the message lists the supported ones), or its data fails
            validation; the message names the path.
        ConfigError: ``y_path`` or ``label`` used with a format that takes no such
            option, or a ``.npy`` given without ``y_path``.
        ConfigTypeError: ``label`` or ``weight`` of the wrong type for the format.
        ImportError: Parquet without pyarrow (the message names the extra).

    Example:
        >>> ds = load("train.npz")  # doctest: +SKIP
        >>> ds = load("X.npy", "y.npy")  # doctest: +SKIP
        >>> ds = load("table.csv", label="target", weight="w")  # doctest: +SKIP
    """
    target = resolve_dtype(dtype)
    source = _as_path("path", path)
    kind = _kind(source)
    _check_options(source, kind, y_path, label, weight)
    key: Any = weight  # its type for ``kind`` was checked above
    w: npt.NDArray[Any] | None = None
    names: list[str] | None = None
    if kind == "parquet":
        return _read_parquet(source, label, weight, target)
    if kind in ("dir", ".npy"):
        if kind == "dir":
            files = _dir_files(source, key)
        else:
            extra = () if weight is None else (_as_path("weight", weight),)
            files = (source, _as_path("y_path", y_path), *extra)
        X, y, *rest = (_read_npy(file) for file in files)
        return _npy_dataset(files, X, y, rest[0] if rest else None, target)
    if kind == ".npz":
        X, y, w = _read_npz(source, key)
    else:
        X, y, w, names = read_csv(source, label, key)
        target = target or DEFAULT_DTYPE
    with _naming(source):
        dataset = Dataset(X, y, sample_weight=w, dtype=target, feature_names=names)
    # Parsed into private memory: move it where process workers map it without a copy.
    return dataset.to_shared()


def _read_parquet(path: Path, label: Any, weight: Any, dtype: np.dtype[Any] | None) -> Dataset:
    """Every row of the Parquet file or directory ``path``, as one Dataset."""
    stream = read_parquet(
        path,
        label="label" if label is None else label,
        weight=weight,
        batch_size=1 << 16,
        shuffle=False,
        dtype=dtype or DEFAULT_DTYPE,
    )
    return stream.to_dataset().to_shared()


def _as_path(name: str, value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ConfigTypeError(
            f"{name} must be a str or os.PathLike, got {value!r} ({type(value).__name__})"
        )
    return Path(value)


def _kind(path: Path) -> str:
    """Return "dir", "parquet", ".npz", ".npy" or ".csv", or raise DataError."""
    if path.is_dir():
        has_npy = (path / "X.npy").exists()
        return "parquet" if not has_npy and any(path.rglob("*.parquet")) else "dir"
    if not path.exists():
        raise DataError(f"no such file or directory: '{path}'")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix not in (".npz", ".npy", ".csv"):
        raise DataError(
            f"cannot load '{path}': unsupported extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    return suffix


def _check_options(path: Path, kind: str, y_path: object, label: object, weight: object) -> None:
    if kind == ".npy" and y_path is None:
        raise ConfigError(
            f"'{path}' holds only the features; pass y_path='y.npy' with the targets, "
            "or put X.npy and y.npy in one directory and load the directory"
        )
    if kind != ".npy" and y_path is not None:
        raise ConfigError(
            f"y_path is only used with a features .npy file, not with '{path}'; drop it"
        )
    _check_key("label", label, columns=kind == ".csv")
    if kind not in (".csv", "parquet") and label is not None:
        raise ConfigError(
            f"label is only used with .csv and Parquet files, not with '{path}'; drop it"
        )
    if kind != ".npy":  # there, a path: checked where it is read
        _check_key("weight", weight, columns=kind == ".csv")


def _check_key(name: str, value: object, *, columns: bool) -> None:
    """Refuse a ``label``/``weight`` that is neither None, a str nor (for CSV columns) an int."""
    if value is None or isinstance(value, str):
        return
    if columns and isinstance(value, int) and not isinstance(value, bool):
        return
    wanted = "a column name (str) or index (int)" if columns else "a name (str)"
    raise ConfigTypeError(f"{name} must be {wanted}, got {value!r}")


def _dir_files(path: Path, weight: str | None) -> tuple[Path, ...]:
    files = (path / "X.npy", path / "y.npy") + (() if weight is None else (path / f"{weight}.npy",))
    for file in files:
        if not file.is_file():
            found = ", ".join(sorted(child.name for child in path.iterdir())[:10]) or "nothing"
            wanted = "X.npy and y.npy" + ("" if weight is None else f" and {weight}.npy")
            raise DataError(
                f"directory '{path}' has no {file.name}; it must hold {wanted} (found: {found})"
            )
    return files


def _read_npy(path: Path) -> npt.NDArray[Any]:
    """Memory-map a .npy file read-only; fall back to reading it (e.g. a 0-byte array)."""
    _check_magic(path, (_NPY_MAGIC, *_ZIP_MAGIC), "a .npy array (no numpy header)")
    _check_npy_size(path)
    try:
        try:
            loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # object dtype cannot be mapped; re-read for numpy's own reason
            loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"no such file: '{path}'") from exc
    except _READ_ERRORS as exc:
        raise DataError(_unreadable(path, exc)) from exc
    if not isinstance(loaded, np.ndarray):  # an .npz archive under a .npy name
        loaded.close()
        raise DataError(f"'{path}' is an .npz archive, not a .npy array; rename it .npz")
    return loaded


def _check_npy_size(path: Path) -> None:
    """Refuse a .npy whose header claims more data than the file holds, before numpy reads it.

    Mapping such a file fails, and the fallback read (for object arrays) allocates the
    array the header describes first: a truncated file, or a few bytes claiming 2**40
    elements, ended in a MemoryError or a message about pickled objects.
    """
    try:
        with path.open("rb") as file:
            if file.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                return  # an .npz under a .npy name: _read_npy says so
            file.seek(0)
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            held = os.fstat(file.fileno()).st_size - file.tell()
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read the header of '{path}' ({exc}); save it again") from exc
    claimed = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and claimed > held:
        raise DataError(
            f"'{path}' claims shape {shape} of {dtype} ({claimed} bytes) but holds {held} "
            "bytes of data; the file is truncated (not fully written or copied), damaged or "
            "crafted: save it again with np.save(path, array)"
        )


def _read_npz(
    path: Path, weight: str | None
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None]:
    _check_magic(path, (*_ZIP_MAGIC, _NPY_MAGIC), "an .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"'{path}' is a .npy array, not an .npz archive; rename it")
            w = None if weight is None else _array(path, archive, weight)
            return _array(path, archive, "X"), _array(path, archive, "y"), w
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(_unreadable(path, exc)) from exc


def _array(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> npt.NDArray[Any]:
    if key not in archive.files:
        present = ", ".join(archive.files) or "none"
        raise DataError(
            f"'{path}' has no array named {key!r} (arrays present: {present}); "
            "save it with np.savez(path, X=X, y=y)"
        )
    if archive.zip is not None:  # None only for an NpzFile already closed
        _check_member(path, archive.zip, f"{key}.npy")
    array: npt.NDArray[Any] = archive[key]
    return array


def _check_member(path: Path, archive: zipfile.ZipFile, name: str) -> None:
    """Refuse a member whose header claims more data than it holds, before numpy allocates.

    numpy allocates the array its header describes before reading the data, so a few
    hundred crafted bytes claiming 2**40 elements would ask for terabytes.
    """
    info = archive.getinfo(name)
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        held = info.file_size - member.tell()
    claimed = math.prod(shape) * dtype.itemsize
    possible = info.compress_size * _MAX_DEFLATE_RATIO + (1 << 16)
    if not dtype.hasobject and (claimed != held or info.file_size > possible):
        raise DataError(
            f"'{path}': array {name!r} claims shape {shape} of {dtype} ({claimed} bytes) but "
            f"the archive holds {held} bytes for it; the file is damaged or crafted, "
            "save it again with np.savez(path, X=X, y=y)"
        )


def _check_magic(path: Path, magics: tuple[bytes, ...], what: str) -> None:
    """Refuse a file that is neither format before numpy reads it: numpy takes any other
    bytes for a pickle and advises loading it "unsafely", which asynctrain never does.

    Raises:
        DataError: the file starts with none of ``magics`` (or cannot be opened).
    """
    try:
        with path.open("rb") as file:
            head = file.read(max(len(m) for m in magics))
    except FileNotFoundError as exc:
        raise DataError(f"no such file: '{path}'") from exc
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc}") from exc
    if not any(head.startswith(magic) for magic in magics):
        raise DataError(
            f"'{path}' is not {what}: it is damaged or another kind of file; save the "
            "data with np.savez(path, X=X, y=y) or np.save(path, X)"
        )


def _unreadable(path: Path, exc: BaseException) -> str:
    return (
        f"cannot read '{path}' as numeric arrays ({exc}); {_NO_PICKLE}, so a file "
        "holding Python objects must be re-saved as numbers, e.g. "
        "np.save(path, np.asarray(values, dtype=np.float32))"
    )


@contextlib.contextmanager
def _naming(*paths: Path) -> Iterator[None]:
    """Prefix a validation error raised in the block with the file(s) it is about."""
    try:
        yield
    except DataError as exc:
        raise type(exc)(f"{', '.join(map(str, paths))}: {exc}") from None


def _npy_dataset(
    files: tuple[Path, ...],
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    w: npt.NDArray[Any] | None,
    dtype: np.dtype[Any] | None,
) -> Dataset:
    """The Dataset of ``.npy`` files (X's, y's and maybe the weights'), each error
    naming the file it is about: the targets are checked on their own first (as the
    Dataset checks them), then the row counts of both files, then X, then the weights."""
    with _naming(files[1]):
        targets = as_array("y", y)
        check_targets_shape(targets)
        check_finite("y", to_targets(targets))
    if X.ndim:  # a 0-d X: the Dataset says so, naming its file
        with _naming(files[0], files[1]):
            check_rows(X, targets)
    with _naming(files[0]):
        dataset = Dataset(X, y, dtype=dtype)
    if w is None:
        return dataset
    with _naming(files[2]):
        return dataset.with_weights(w)
