"""Tests of asynctrain.data: validation, dtype rules, loading, order/sharding, synthetic."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from asynctrain import data as at_data
from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError, DataTypeError
from asynctrain.data import (
    PROBLEMS,
    Dataset,
    batch_bounds,
    epoch_order,
    load,
    shard_bounds,
    steps_per_epoch,
    synthetic,
)
from asynctrain.data._synthetic import _teacher


def _xy(n: int = 6, d: int = 3, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    X = np.arange(n * d, dtype=dtype).reshape(n, d)
    return X, np.arange(n) % 2


# --- Dataset: bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("X", "fragment"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "<U1"),
        (np.array([[1, None], [2, 3]], dtype=object), "object"),
        (np.ones((2, 2), dtype=complex), "complex128"),
    ],
)
def test_non_numeric_X_is_a_data_type_error(X: np.ndarray, fragment: str) -> None:
    with pytest.raises(DataTypeError, match=fragment):
        Dataset(X, np.zeros(2))


def test_non_numeric_y_is_a_data_type_error() -> None:
    with pytest.raises(DataTypeError, match=r"y has dtype <U1"):
        Dataset(np.zeros((2, 2)), np.array(["a", "b"]))


@pytest.mark.parametrize(
    ("X", "y", "fragment"),
    [
        (np.zeros(5), np.zeros(5), r"shape \(5,\).*reshape\(-1, 1\)"),
        (np.zeros((5, 2, 0)), np.zeros(5), r"rows of no values \(shape \(5, 2, 0\)\)"),
        (np.zeros((5, 0)), np.zeros(5), "rows of no values"),
        (np.zeros((5, 2)), np.zeros((5, 2, 1)), r"y must be 1-D .* got shape \(5, 2, 1\)"),
        (np.zeros((5, 2)), np.zeros((5, 0)), "no output columns"),
        (np.zeros((5, 2)), np.zeros(4), "X has 5 rows but y has 4"),
        (np.zeros((0, 2)), np.zeros(0), "empty"),
        ([[1.0, 2.0], [3.0]], [0, 1], "rectangular"),
    ],
)
def test_bad_shapes_are_data_errors(X: object, y: object, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        Dataset(X, y)  # type: ignore[arg-type]


def test_nan_in_X_names_row_and_column_past_the_first_chunk() -> None:
    X = np.zeros((70_000, 4), dtype=np.float32)
    X[69_999, 3] = np.nan
    with pytest.raises(DataError, match=r"X has a non-finite value \(nan\) at row 69999, column 3"):
        Dataset(X, np.zeros(70_000))


@pytest.mark.parametrize("order", ["C", "F", "strided"])
@pytest.mark.parametrize(
    ("row", "column", "value"), [(0, 0, np.inf), (65_536, 2, np.nan), (69_999, 3, -np.inf)]
)
def test_a_non_finite_value_is_named_wherever_it_is_and_however_X_is_laid_out(
    order: str, row: int, column: int, value: float
) -> None:
    """The first bad value is named at its row and column in every chunk, in C and F
    order and in a strided view (each chunk is read once for a verdict, and only a failing
    one is searched element by element)."""
    base = np.zeros((70_000, 8 if order == "strided" else 4), dtype=np.float32, order="C")
    X = base[:, ::2] if order == "strided" else np.asarray(base, order=order)
    X[row, column] = value
    with pytest.raises(DataError, match=rf"at row {row}, column {column}"):
        Dataset(X, np.zeros(70_000))


def test_finite_values_whose_squares_overflow_are_accepted() -> None:
    """1e20 in float32 is finite though its square is not: the one-read verdict (a sum of
    squares) falls back to the exact check instead of refusing it."""
    X = np.full((70_000, 2), 1e20, dtype=np.float32)
    assert Dataset(X, np.zeros(70_000)).n_samples == 70_000


def test_masked_values_are_refused_not_read() -> None:
    # The scan for NaN/Inf skipped masked values, so np.ma.masked_invalid(X) passed
    # validation and its NaN reached training (a NonFiniteError at step 0), and a
    # masked sentinel (-999) was trained on silently.
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    X[2, 1] = np.nan
    masked = np.ma.masked_invalid(X)
    with pytest.raises(DataError, match=r"X is a masked array .* at \(2, 1\).*X.filled"):
        Dataset(masked, [0, 1, 0, 1])
    y = np.ma.masked_equal([0, 1, -999, 1], -999)
    with pytest.raises(DataError, match=r"y is a masked array .* at \(2,\)"):
        Dataset(np.zeros((4, 3)), y)
    weights = np.ma.masked_equal([1.0, 2.0, -1.0, 1.0], -1.0)
    with pytest.raises(DataError, match=r"sample_weight is a masked array"):
        Dataset(np.zeros((4, 3)), [0, 1, 0, 1], sample_weight=weights)
    unmasked = Dataset(np.ma.masked_invalid(np.ones((4, 3))), np.ma.masked_array([0, 1, 0, 1]))
    assert type(unmasked.X) is np.ndarray
    assert unmasked.y.tolist() == [0, 1, 0, 1]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_a_matrix_is_read_as_an_array() -> None:
    # np.matrix keeps its rows 2-D: the finiteness scan failed with a bare TypeError.
    X = np.arange(12.0).reshape(4, 3)
    ds = Dataset(np.matrix(X), np.arange(4) % 2)
    assert type(ds.X) is np.ndarray
    assert np.array_equal(ds.subset([3, 0]).X, X[[3, 0]])


def test_inf_in_y_names_the_row() -> None:
    with pytest.raises(DataError, match=r"y has a non-finite value \(inf\) at row 2"):
        Dataset(np.zeros((3, 2)), np.array([0.0, 1.0, np.inf]))


def test_overflow_when_forcing_float32_is_reported() -> None:
    X = np.array([[1.0, 1e300]])
    with pytest.raises(DataError, match=r"column 1 .*after conversion from float64"):
        Dataset(X, np.zeros(1), dtype=np.float32)


@pytest.mark.parametrize(
    ("dtype", "error", "fragment"),
    [("int32", ConfigError, "got int32"), ("nonsense", ConfigTypeError, "'nonsense'")],
)
def test_bad_dtype_is_a_config_error(dtype: str, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        Dataset(np.zeros((2, 2)), np.zeros(2), dtype=dtype)


def test_unsigned_labels_beyond_int64_are_refused() -> None:
    with pytest.raises(DataError, match="beyond the int64 range"):
        Dataset(np.zeros((1, 1)), np.array([2**63], dtype=np.uint64))


# --- Dataset: dtype rules, read-only views, repr ------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64_X_are_kept_without_copy(dtype: type) -> None:
    X, y = _xy(dtype=dtype)
    ds = Dataset(X, y)
    assert ds.dtype == dtype
    assert np.shares_memory(ds.X, X)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint16, np.bool_, np.float16])
def test_other_numeric_X_becomes_float32(dtype: type) -> None:
    X, y = _xy(dtype=np.int64)
    ds = Dataset(X.astype(dtype), y)
    assert ds.dtype == np.float32


def test_dtype_forces_and_copies_only_when_needed() -> None:
    X, y = _xy(dtype=np.float32)
    forced = Dataset(X, y, dtype=np.float64)
    assert forced.dtype == np.float64
    assert not np.shares_memory(forced.X, X)
    assert np.shares_memory(Dataset(X, y, dtype="float32").X, X)
    assert Dataset(X.astype(int), y, dtype=np.float64).dtype == np.float64


def test_non_native_byte_order_keeps_precision() -> None:
    X, y = _xy(dtype=np.float64)
    assert Dataset(X.astype(">f8"), y).dtype == np.dtype(np.float64)


def test_label_rules() -> None:
    X, _ = _xy(n=3)
    assert Dataset(X, np.array([0, 1, 2], dtype=np.int32)).y.dtype == np.int64
    assert Dataset(X, np.array([True, False, True])).y.dtype == np.int64
    y32 = np.array([0.5, 1.5, 2.5], dtype=np.float32)
    kept = Dataset(X, y32)
    assert kept.y.dtype == np.float32
    assert np.shares_memory(kept.y, y32)
    assert Dataset(X, np.zeros((3, 2))).y.shape == (3, 2)


def test_arrays_are_read_only_views_and_the_callers_stay_writable() -> None:
    X, y = _xy()
    ds = Dataset(X, y)
    assert not ds.X.flags.writeable
    assert not ds.y.flags.writeable
    assert X.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ds.X[0, 0] = 1.0
    with pytest.raises(AttributeError):
        ds.X = X  # type: ignore[misc]


def test_properties_len_and_repr() -> None:
    ds = Dataset([[1, 2, 3], [4, 5, 6]], [0, 1])
    assert (ds.n_samples, len(ds), ds.n_features) == (2, 2, 3)
    assert repr(ds) == "<Dataset n_samples=2 n_features=3 dtype=float32>"
    assert not ds.memory_mapped


def test_pickled_dataset_stays_read_only() -> None:
    ds = Dataset(*_xy())
    copy = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(copy.X, ds.X)
    assert np.array_equal(copy.y, ds.y)
    assert not copy.X.flags.writeable


# --- split and subset ---------------------------------------------------------------------


def test_split_sizes_disjoint_and_deterministic() -> None:
    n = 103
    ds = Dataset(np.arange(n, dtype=np.float64)[:, None], np.arange(n))
    train, val = ds.split(0.2, seed=3)
    assert (len(train), len(val)) == (82, 21)
    ids = np.concatenate([train.y, val.y])
    assert np.array_equal(np.sort(ids), np.arange(n))
    assert np.array_equal(train.X[:, 0], train.y)  # rows stay paired
    assert np.all(np.diff(train.y) > 0)  # original relative order kept
    assert np.array_equal(ds.split(0.2, seed=3)[1].y, val.y)
    assert not np.array_equal(ds.split(0.2, seed=4)[1].y, val.y)


@pytest.mark.parametrize(
    ("fraction", "error", "fragment"),
    [
        (0.0, ConfigError, r"fraction must be in \(0.0, 1.0\), got 0.0; pass e.g."),
        (1.0, ConfigError, r"fraction must be in \(0.0, 1.0\), got 1.0"),
        (1.5, ConfigError, r"\(0.0, 1.0\), got 1.5"),
        (-0.5, ConfigError, r"\(0.0, 1.0\), got -0.5"),
        (float("nan"), ConfigError, "finite"),
        ("0.2", ConfigTypeError, "'0.2'"),
    ],
)
def test_split_bad_fraction(fraction: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        Dataset(*_xy()).split(fraction)  # type: ignore[arg-type]


def test_split_with_an_empty_part_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"split\(0.1\) of 2 samples gives parts of 2 and 0"):
        Dataset(*_xy(n=2)).split(0.1)


def test_subset_keeps_order_and_repeats() -> None:
    ds = Dataset(*_xy())
    part = ds.subset([4, 1, 4])
    assert np.array_equal(part.X, ds.X[[4, 1, 4]])
    assert part.y.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("indices", "error", "fragment"),
    [
        ([], DataError, "empty"),
        ([True, False], DataTypeError, "flatnonzero"),
        ([0, 6], DataError, r"indices\[1\] = 6 is out of range for 6 samples"),
        ([-1], DataError, r"indices\[0\] = -1"),
        ([[0, 1]], DataError, "1-D"),
    ],
)
def test_subset_bad_indices(indices: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        Dataset(*_xy()).subset(indices)  # type: ignore[arg-type]


def test_rows_taken_that_all_weigh_zero_are_refused() -> None:
    # The constructor refuses all-zero weights; subset and split returned such a Dataset,
    # and validating on it divided by a total weight of 0 (ZeroDivisionError), training
    # on it crashed with an IndexError.
    X, y = _xy(n=20)
    weights = np.r_[np.zeros(10), np.ones(10)]
    ds = Dataset(X, y, sample_weight=weights)
    with pytest.raises(DataError, match=r"the 3 rows taken all have sample_weight 0.*other rows"):
        ds.subset([0, 9, 0])
    kept = ds.subset([0, 10]).sample_weight
    assert kept is not None
    assert kept.tolist() == [0.0, 1.0]
    skewed = Dataset(*_xy(n=40), sample_weight=np.r_[np.zeros(39), 1.0])
    with pytest.raises(DataError, match=r"sample_weight 0.*another fraction or seed"):
        skewed.split(0.5)
    assert len(ds.with_weights(None).subset([0, 1])) == 2


# --- load ---------------------------------------------------------------------------------


def _touch(path: str) -> None:
    Path(path).write_text("unpickled")


class _Trap:
    """Unpickling this object creates a file: proof that a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _touch, (str(self.marker),)


def test_load_npz(tmp_path: Path) -> None:
    X, y = _xy(dtype=np.float64)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load(tmp_path / "d.npz")
    assert ds.dtype == np.float64
    assert np.array_equal(ds.X, X)
    assert np.array_equal(ds.y, y)


def test_load_npz_missing_key_names_it_and_the_keys_present(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"no array named 'y' \(arrays present: X, labels\)"):
        load(tmp_path / "d.npz")


def test_load_npy_pair_is_memory_mapped(tmp_path: Path) -> None:
    X, y = _xy(n=50, dtype=np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load(str(tmp_path / "X.npy"), tmp_path / "y.npy")
    assert isinstance(ds.X, np.memmap)
    assert ds.memory_mapped
    assert repr(ds).endswith("dtype=float32 memory-mapped>")
    assert not ds.X.flags.writeable
    assert np.array_equal(ds.X, X)
    assert ds.y.dtype == np.int64


def test_load_directory(tmp_path: Path) -> None:
    X, y = _xy(dtype=np.float64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y.astype(np.float64))
    ds = load(tmp_path)
    assert ds.memory_mapped
    assert ds.dtype == np.float64
    assert ds.y.dtype == np.float64


def test_load_directory_missing_y_names_it(tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", np.zeros((2, 2)))
    with pytest.raises(
        DataError, match=r"has no y.npy; it must hold X.npy and y.npy \(found: X.npy\)"
    ):
        load(tmp_path)


def test_load_npy_of_pickled_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    objects = np.empty((2, 1), dtype=object)
    objects[:] = _Trap(marker)
    np.save(tmp_path / "X.npy", objects, allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(2))
    with pytest.raises(DataError, match=r"X.npy.*never unpickles"):
        load(tmp_path / "X.npy", y_path=tmp_path / "y.npy")
    assert not marker.exists()
    np.load(tmp_path / "X.npy", allow_pickle=True)  # the trap does work when unpickled
    assert marker.exists()


def test_load_npz_of_pickled_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    objects = np.array([_Trap(marker), _Trap(marker)], dtype=object)
    np.savez(tmp_path / "d.npz", X=objects, y=np.zeros(2))
    with pytest.raises(DataError, match=r"d.npz.*never unpickles"):
        load(tmp_path / "d.npz")
    assert not marker.exists()


def _npz_claiming(path: Path, shape: tuple[int, ...], payload: bytes) -> None:
    """An .npz whose X and y headers claim ``shape`` of float64 but hold ``payload``."""
    header = io.BytesIO()
    fields = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(header, fields)  # type: ignore[no-untyped-call]
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("X.npy", "y.npy"):
            archive.writestr(name, header.getvalue() + payload)


@pytest.mark.parametrize(
    ("shape", "payload"),
    [((2**40,), b"\0" * 16), ((4, 2), b"\0" * 16), ((2,), b"\0" * 64)],
    ids=["2**40 elements", "short", "long"],
)
def test_load_npz_whose_header_lies_about_its_size_is_a_data_error(
    tmp_path: Path, shape: tuple[int, ...], payload: bytes
) -> None:
    # 2**40 float64 elements in a ~480-byte file: numpy would allocate 8 TiB first
    # (MemoryError) before finding the data missing.
    _npz_claiming(tmp_path / "crafted.npz", shape, payload)
    assert (tmp_path / "crafted.npz").stat().st_size < 600
    with pytest.raises(DataError, match=r"crafted.npz.*claims shape"):
        load(tmp_path / "crafted.npz")


@pytest.mark.parametrize("shape", [(2**40,), (4, 3)], ids=["2**40 elements", "truncated"])
def test_load_npy_whose_header_claims_more_than_the_file_holds_is_a_data_error(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    # Mapping failed, and the fallback read allocated the claimed array first: 8 TiB
    # (a raw MemoryError), or a message about pickled objects for a truncated file.
    header = io.BytesIO()
    fields = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(header, fields)  # type: ignore[no-untyped-call]
    (tmp_path / "X.npy").write_bytes(header.getvalue() + b"\0" * 88)
    np.save(tmp_path / "y.npy", np.arange(4) % 2)
    with pytest.raises(DataError, match=r"X.npy' claims shape .* but holds 88 bytes"):
        load(tmp_path / "X.npy", tmp_path / "y.npy")
    np.save(tmp_path / "X.npy", np.zeros((4, 3)))
    with (tmp_path / "X.npy").open("ab") as file:
        file.write(b"\0" * 8)  # trailing bytes: mapped as before
    assert load(tmp_path / "X.npy", tmp_path / "y.npy").memory_mapped


def test_load_compressed_npz(tmp_path: Path) -> None:
    X, y = np.zeros((500, 3), np.float32), np.arange(500) % 2
    np.savez_compressed(tmp_path / "d.npz", X=X, y=y)  # zeros: a high deflate ratio
    ds = load(tmp_path / "d.npz")
    assert np.array_equal(ds.X, X)
    assert np.array_equal(ds.y, y)


def test_load_raw_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "X.npy"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    np.save(tmp_path / "y.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"X.npy"):
        load(path, tmp_path / "y.npy")


def test_load_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or directory: '.*nope.npz'"):
        load(tmp_path / "nope.npz")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported extension '.txt'; supported: .npz"):
        load(tmp_path / "d.txt")
    np.save(tmp_path / "X.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"no such file: '.*missing.npy'"):
        load(tmp_path / "X.npy", tmp_path / "missing.npy")


def test_load_option_misuse(tmp_path: Path) -> None:
    np.save(tmp_path / "X.npy", np.zeros((2, 2)))
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(ConfigError, match="pass y_path="):
        load(tmp_path / "X.npy")
    with pytest.raises(ConfigError, match=r"label is only used with .csv"):
        load(tmp_path / "d.npz", label="y")
    with pytest.raises(ConfigError, match=r"y_path is only used"):
        load(tmp_path / "d.npz", tmp_path / "X.npy")
    with pytest.raises(ConfigTypeError, match=r"path must be a str or os.PathLike, got 3"):
        load(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError, match="label must be"):
        load(tmp_path / "d.npz", label=1.5)  # type: ignore[arg-type]


def test_load_validation_errors_name_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.array([[1.0, np.nan]]), y=np.zeros(1))
    with pytest.raises(DataError, match=r"d.npz: X has a non-finite value \(nan\) at row 0"):
        load(tmp_path / "d.npz")


BAD_NPY_TARGETS = {
    "non-finite": (np.array([0.0, np.nan, 1.0]), DataError, r"y has a non-finite value \(nan\)"),
    "shape": (np.zeros((3, 2, 2)), DataError, "y must be 1-D"),
    "text": (np.array(["a", "b", "c"]), DataTypeError, "y has dtype <U1"),
    "label range": (np.array([0, 1, 2**64 - 1], np.uint64), DataError, "y holds the label 1844"),
}


@pytest.mark.parametrize("bad", list(BAD_NPY_TARGETS))
@pytest.mark.parametrize("layout", ["pair", "directory"])
def test_load_npy_errors_name_the_file_of_the_array_at_fault(
    tmp_path: Path, bad: str, layout: str
) -> None:
    # Every error of a .npy pair was prefixed with the features' file, a y.npy's too.
    targets, error, message = BAD_NPY_TARGETS[bad]
    X, y = tmp_path / "X.npy", tmp_path / ("y.npy" if layout == "directory" else "labels.npy")
    np.save(X, np.zeros((3, 2), np.float32))
    np.save(y, targets)
    with pytest.raises(error, match=rf"^{re.escape(str(y))}: {message}") as raised:
        load(tmp_path) if layout == "directory" else load(X, y)
    assert str(X) not in str(raised.value)


def test_load_npy_row_counts_name_both_files_and_weights_their_own(tmp_path: Path) -> None:
    X, y, w = tmp_path / "X.npy", tmp_path / "y.npy", tmp_path / "w.npy"
    np.save(X, np.zeros((3, 2), np.float32))
    np.save(y, np.zeros(4))
    with pytest.raises(DataError, match=rf"^{re.escape(f'{X}, {y}')}: X has 3 rows but y has 4"):
        load(X, y)
    np.save(y, np.zeros(3))
    np.save(w, np.array([1.0, -1.0, 1.0]))
    for loaded in (lambda: load(X, y, weight=w), lambda: load(tmp_path, weight="w")):
        with pytest.raises(DataError, match=rf"^{re.escape(str(w))}: sample_weight\[1\] = -1"):
            loaded()
    np.save(X, np.array([[0.0], [np.inf], [1.0]], np.float32))
    with pytest.raises(DataError, match=rf"^{re.escape(str(X))}: X has a non-finite value"):
        load(X, y)
    np.save(X, np.zeros((3, 2), np.float32))
    np.save(w, np.array([1.0, 2.0, 0.0]))
    dataset = load(X, y, weight=w)  # what a good pair still gives
    assert dataset.memory_mapped
    np.testing.assert_array_equal(dataset.sample_weight, [1.0, 2.0, 0.0])


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


def test_load_csv_header_with_label_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,label,b\n1,0,2\n3,1,4\n5,2,6\n")
    ds = load(path)
    assert ds.X.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert ds.y.tolist() == [0, 1, 2]
    assert (ds.dtype, ds.y.dtype) == (np.float32, np.int64)


def test_load_csv_named_and_indexed_label(tmp_path: Path) -> None:
    path = _csv(tmp_path, "target,a,b\n0.5,1,2\n1.5,3,4\n")
    ds = load(path, label="target", dtype=np.float64)
    assert ds.y.tolist() == [0.5, 1.5]
    assert ds.y.dtype == np.float64
    assert ds.dtype == np.float64
    assert load(path, label=0).y.tolist() == [0.5, 1.5]
    assert load(path, label=-2).y.tolist() == [1, 3]


def test_load_csv_defaults_to_the_last_column(tmp_path: Path) -> None:
    with_header = load(_csv(tmp_path, "a,b,c\n1,2,1\n3,4,0\n"))
    assert with_header.y.tolist() == [1, 0]
    no_header = load(_csv(tmp_path, "1.5,2,1\n3,4.5,0\n"))
    assert no_header.X.tolist() == [[1.5, 2], [3, 4.5]]
    assert no_header.y.tolist() == [1, 0]


def test_load_csv_tolerates_blank_lines_spaces_and_quotes(tmp_path: Path) -> None:
    ds = load(_csv(tmp_path, '\n"a",b,label\n1, 2,0\n\n"3",4 ,1\n\n'))
    assert ds.X.tolist() == [[1, 2], [3, 4]]
    assert ds.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "label", "error", "fragment"),
    [
        ("a,b\n1,2\n3,x\n", None, DataError, r"d.csv line 3, column 1: 'x' is not a number"),
        ("1,2\n3,,\n", None, DataError, r"d.csv line 2 has 3 cells, expected 2"),
        ("1,x\n2,3\n", None, DataError, r"d.csv line 1, column 1: 'x' is not a number"),
        ("", None, DataError, "d.csv is empty"),
        ("a,b\n", None, DataError, "header row but no data rows"),
        ("a,b\n1,2\n", "c", DataError, r"no column 'c'; its columns are \['a', 'b'\]"),
        ("1,2\n3,4\n", "a", ConfigError, "has no header row"),
        ("1,2\n3,4\n", 2, DataError, "label=2 is out of range"),
        ("1\n2\n", None, DataError, "at least one feature and a label"),
        ("1,2\n3,nan\n", None, DataError, r"d.csv: y has a non-finite value \(nan\) at row 1"),
        # a CSV has no nulls (an empty cell is refused above): no "a null reads as NaN"
        ("a,b,y\n1,inf,0\n", None, DataError, r"\(inf\) at row 0, column 1 \('b'\) \(after"),
        ("a,b,y\n1,nan,0\n", None, DataError, r"\(nan\) at row 0, column 1 \('b'\) \(after"),
    ],
)
def test_load_csv_bad_input(
    tmp_path: Path, text: str, label: str | int | None, error: type, fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        load(_csv(tmp_path, text), label=label)


@pytest.mark.parametrize("where", ["header", "deep"])
def test_load_csv_in_another_encoding_is_named(tmp_path: Path, where: str) -> None:
    # a Latin-1 "CSV" from a spreadsheet raised a bare UnicodeDecodeError, no file named
    path = tmp_path / "d.csv"
    rows = b"1,2,0\n" * 20_000  # past the first read of the decoder
    text = b"a,b,caf\xe9\n" + rows if where == "header" else b"a,b,c\n" + rows + b"3,\xe9,1\n"
    path.write_bytes(text)
    with pytest.raises(DataError, match=r"d\.csv is not UTF-8 text .*b'\\xe9'.*save it as"):
        load(path)


# --- epoch order, batches, shards ---------------------------------------------------------


def test_epoch_order_is_a_pure_permutation_of_seed_and_epoch() -> None:
    order = epoch_order(1000, seed=7, epoch=3)
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(1000))
    assert np.array_equal(order, epoch_order(1000, seed=7, epoch=3))
    assert not np.array_equal(order, epoch_order(1000, seed=7, epoch=4))
    assert not np.array_equal(order, epoch_order(1000, seed=8, epoch=3))
    assert np.array_equal(order, np.random.default_rng([7, 3]).permutation(1000))


@pytest.mark.parametrize(("n", "batch_size"), [(10, 4), (10, 10), (10, 5), (3, 10), (1, 1)])
def test_batch_bounds_cover_every_index_once(n: int, batch_size: int) -> None:
    bounds = batch_bounds(n, batch_size)
    assert len(bounds) == steps_per_epoch(n, batch_size)
    covered = np.concatenate([np.arange(start, stop) for start, stop in bounds])
    assert np.array_equal(covered, np.arange(n))
    assert all(stop - start == batch_size for start, stop in bounds[:-1])
    assert 0 < bounds[-1][1] - bounds[-1][0] <= batch_size


@pytest.mark.parametrize(("length", "shards"), [(10, 3), (9, 3), (3, 3), (2, 3), (1, 4), (7, 1)])
def test_shard_bounds_match_array_split(length: int, shards: int) -> None:
    bounds = shard_bounds(length, shards)
    assert len(bounds) == shards
    expected = np.array_split(np.arange(length), shards)
    assert [list(range(a, b)) for a, b in bounds] == [part.tolist() for part in expected]
    assert bounds[0][0] == 0
    assert bounds[-1][1] == length
    assert all(stop >= start for start, stop in bounds)


def test_steps_per_epoch() -> None:
    assert [steps_per_epoch(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: batch_bounds(10, 0), ConfigError, "batch_size must be >= 1, got 0"),
        (lambda: batch_bounds(0, 4), ConfigError, "n must be >= 1, got 0"),
        (lambda: shard_bounds(4, 0), ConfigError, "shards must be >= 1"),
        (lambda: shard_bounds(4, 2.0), ConfigTypeError, "shards must be an integer, got 2.0"),
        (lambda: steps_per_epoch(True, 2), ConfigTypeError, "n must be an integer, got True"),
        (lambda: epoch_order(5, seed=-1, epoch=0), ConfigError, "seed must be >= 0, got -1"),
        (lambda: epoch_order(5, seed=0, epoch=-2), ConfigError, "epoch must be >= 0, got -2"),
    ],
)
def test_order_helpers_reject_bad_arguments(call: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        call()  # type: ignore[operator]


# --- synthetic ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_synthetic_shapes_dtypes_and_labels(name: str) -> None:
    info = PROBLEMS[name]
    ds = synthetic(name, n=500, seed=1)
    assert ds.X.shape == (500, info.n_features)
    assert (ds.dtype, ds.y.dtype) == (np.float32, np.int64)
    assert set(np.unique(ds.y)) == set(range(info.n_classes))


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_synthetic_noise_is_exactly_the_stated_fraction(name: str) -> None:
    ds = synthetic(name, n=2000, seed=0)
    clean = np.argmax(_teacher(name)(np.asarray(ds.X)), axis=1)
    assert np.mean(clean != ds.y) == PROBLEMS[name].label_noise


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b = synthetic("mlp", n=300, seed=5), synthetic("mlp", n=300, seed=5)
    assert a.X.tobytes() == b.X.tobytes()
    assert np.array_equal(a.y, b.y)
    c = synthetic("mlp", n=300, seed=6)
    assert not np.array_equal(a.X, c.X)


def test_synthetic_float64_holds_the_float32_values() -> None:
    single = synthetic("logreg", n=100)
    double = synthetic("logreg", n=100, dtype=np.float64)
    assert double.dtype == np.float64
    assert np.array_equal(double.X, single.X.astype(np.float64))
    assert np.array_equal(double.y, single.y)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"name": "svm"}, ConfigError, "'logreg', 'softmax', 'mlp'; got 'svm'"),
        ({"name": "mlp", "n": 1}, ConfigError, "n must be >= 2, got 1"),
        ({"name": "mlp", "n": 10.0}, ConfigTypeError, "n must be an integer, got 10.0"),
        ({"name": "mlp", "seed": -3}, ConfigError, "seed must be >= 0"),
        ({"name": "mlp", "dtype": np.int32}, ConfigError, "got int32"),
    ],
)
def test_synthetic_bad_arguments(kwargs: dict[str, object], error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        synthetic(**kwargs)  # type: ignore[arg-type]


def test_problems_is_read_only_and_describes_the_reference_sizes() -> None:
    with pytest.raises(TypeError):
        PROBLEMS["new"] = PROBLEMS["mlp"]  # type: ignore[index]
    sizes = {name: (p.default_n, p.n_features, p.n_classes) for name, p in PROBLEMS.items()}
    assert sizes == {
        "logreg": (1_000_000, 64, 2),
        "softmax": (200_000, 128, 10),
        "mlp": (200_000, 128, 10),
    }


@pytest.mark.parametrize("name", ["logreg", "softmax"])
def test_linear_model_reaches_the_noise_ceiling_on_linear_problems(name: str) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    train, test = synthetic(name, n=20_000, seed=0), synthetic(name, n=10_000, seed=1)
    model = linear_model.LogisticRegression(max_iter=1000).fit(train.X, train.y)
    assert model.score(test.X, test.y) >= 1 - PROBLEMS[name].label_noise - 0.015


def test_linear_model_falls_well_short_on_the_mlp_problem() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    train, test = synthetic("mlp", n=20_000, seed=0), synthetic("mlp", n=10_000, seed=1)
    model = linear_model.LogisticRegression(max_iter=1000).fit(train.X, train.y)
    assert model.score(test.X, test.y) < 0.75


def test_public_namespace_is_sorted_and_complete() -> None:
    assert at_data.__all__ == sorted(at_data.__all__, key=lambda name: (not name.isupper(), name))
    assert all(hasattr(at_data, name) for name in at_data.__all__)


def test_rows_of_any_shape_keep_their_shape() -> None:
    X = np.arange(6 * 2 * 3 * 3, dtype=np.float32).reshape(6, 2, 3, 3)
    data = Dataset(X, np.arange(6) % 2)
    assert (data.input_shape, data.n_features) == ((2, 3, 3), 18)
    assert repr(data) == "<Dataset n_samples=6 input_shape=(2, 3, 3) dtype=float32>"
    train, test = data.split(0.5, seed=0)
    assert train.X.shape[1:] == test.X.shape[1:] == (2, 3, 3)
    np.testing.assert_array_equal(data.subset([4, 1]).X, X[[4, 1]])


def test_nan_in_an_image_names_its_row_and_position() -> None:
    X = np.zeros((4, 1, 3, 3))
    X[2, 0, 1, 2] = np.nan
    with pytest.raises(DataError, match=r"row 2, position \(0, 1, 2\).*all\(axis=\(1, 2, 3\)\)"):
        Dataset(X, np.zeros(4))
