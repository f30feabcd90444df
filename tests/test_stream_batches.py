"""The synchronous parts of streaming: re-cutting batches, and validating one batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import asynctrain as at
from asynctrain._streaming._batch import NameRecord, assemble_batch, check_batch
from asynctrain.data import Dataset
from asynctrain.data._stream import BatchAssembler, BatchCutter, copy_rows
from asynctrain.models import LinearRegression, SoftmaxRegression


def _recut(sizes: list[int], batch_size: int, max_samples: int | None = None) -> list[np.ndarray]:
    """Run row numbers through a cutter the way the feed does; return the batches made."""
    cutter = BatchCutter(batch_size, max_samples=max_samples)
    out = {"X": np.zeros((batch_size, 1)), "y": np.zeros(batch_size, np.int64)}
    batches, first = [], 0
    for size in sizes:
        rows = np.arange(first, first + size)
        first += size
        for cut in cutter.plan(size):
            copy_rows(out, rows[:, None].astype(float), rows, cut)
            if cut.full:
                batches.append(out["y"].copy())
    if rest := cutter.flush():
        batches.append(out["y"][:rest].copy())
    return batches


@pytest.mark.parametrize("seed", range(5))
def test_recutting_keeps_every_row_in_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=30).tolist()
    batches = _recut(sizes, batch_size=16)
    assert all(len(b) == 16 for b in batches[:-1])
    assert 0 < len(batches[-1]) <= 16
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(sum(sizes)))


def test_max_samples_keeps_only_the_first_rows() -> None:
    batches = _recut([10, 10, 10, 10], batch_size=8, max_samples=25)
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(25))
    assert [len(b) for b in batches] == [8, 8, 8, 1]


def test_cutter_reports_when_done() -> None:
    cutter = BatchCutter(4, max_samples=6)
    assert [tuple(c) for c in cutter.plan(5)] == [(0, 4, 0, True), (4, 5, 0, False)]
    assert not cutter.done
    assert [tuple(c) for c in cutter.plan(5)] == [(0, 1, 1, False)]
    assert cutter.done
    assert cutter.plan(3) == []
    assert cutter.flush() == 2


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": 4, "max_samples": 0}])
def test_cutter_settings_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(at.ConfigError):
        BatchCutter(**bad)


def _assembled(
    sizes: list[int], batch_size: int, max_samples: int | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """Row numbers through a BatchAssembler: the y of each batch (its counted rows) and
    how many batches were incoming ones handed on without a copy."""
    assembler = BatchAssembler(batch_size, max_samples=max_samples)
    batches, first, kept = [], 0, []
    for size in sizes:
        rows = np.arange(first, first + size)
        X = rows[:, None].astype(float)
        first += size
        for arrays, count in assembler.add(X, rows):
            assert count == batch_size == len(arrays["X"]) == len(arrays["y"])
            np.testing.assert_array_equal(arrays["X"][:, 0], arrays["y"])
            kept.append(int(arrays["y"] is rows))
            batches.append(arrays["y"])
    if (last := assembler.flush()) is not None:
        arrays, count = last
        assert len(arrays["y"]) == batch_size
        assert 0 < count < batch_size
        batches.append(arrays["y"][:count])
    return batches, kept


@pytest.mark.parametrize("seed", range(5))
def test_assembling_keeps_every_row_in_order_as_the_cutter_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([0, 3, 16, 16, 16, 40], size=30).tolist()
    batches, _ = _assembled(sizes, batch_size=16)
    expected = _recut(sizes, batch_size=16)  # the cutter's batches: the oracle
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_assembling_honours_max_samples_and_hands_on_whole_batches() -> None:
    batches, kept = _assembled([8, 10, 10, 10], batch_size=8, max_samples=25)
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(25))
    assert [len(b) for b in batches] == [8, 8, 8, 1]
    assert kept == [1, 0, 0]  # the first batch is the incoming one; others are copies


def test_a_copying_add_copies_whole_batches_too_and_undo_forgets_it() -> None:
    assembler = BatchAssembler(4)
    X, y = np.arange(6.0)[:, None], np.arange(6)
    assert assembler.add(X[:2], y[:2]) == []
    mark = assembler.mark()
    done = assembler.add(X[2:6], y[2:6], copy=True)
    assert [arrays["y"].tolist() for arrays, _ in done] == [[0, 1, 2, 3]]
    assert [(start, stop) for _, start, stop in assembler.written] == [(2, 4), (0, 2)]
    assembler.undo(mark)
    whole = assembler.add(X[:4], y[:4], copy=True)  # rows 2.. again, as if never added
    assert whole[0][0]["y"].tolist() == [0, 1, 0, 1]
    assert not np.shares_memory(whole[0][0]["X"], X)


def test_assembled_plain_batches_are_copies_checked_like_check_batch() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0, 2, 1, 1, 0, 2], np.int32)
    model, assembler = SoftmaxRegression(3, 3), BatchAssembler(4)
    layout, done = assemble_batch(model, (X, y), assembler, where="b")
    assert layout is not None
    assert layout[0].dtype == np.int64
    assert layout[1] is False
    assert [arrays["y"].dtype for arrays, _ in done] == [np.int64, np.int64]
    np.testing.assert_array_equal(np.concatenate([a["X"] for a, _ in done]), X[:8])
    assert not any(np.shares_memory(a["X"], X) for a, _ in done)
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(at.DataError, match="stream batch 2: X has a non-finite value"):
        assemble_batch(model, (bad, y), assembler, where="stream batch 2")
    assert assembler.flush()[1] == 2  # the refused batch left no rows behind  # type: ignore[index]


def _xy(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3)), np.array([0, 1, 2, 1, 0, 2])[:n]


def test_a_valid_batch_comes_back_in_the_models_dtypes() -> None:
    X, y = _xy()
    features, labels, _ = check_batch(SoftmaxRegression(3, 3), (X, y.astype(float)), where="b")  # type: ignore[misc]
    assert features.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, y)


def test_one_class_and_datasets_are_fine_in_a_batch() -> None:
    X, _ = _xy()
    model = SoftmaxRegression(3, 3)
    assert check_batch(model, (X, np.full(6, 2)), where="b") is not None
    assert check_batch(model, Dataset(X, np.full(6, 1)), where="b") is not None


def test_an_empty_batch_is_skipped() -> None:
    X, y = _xy()
    assert check_batch(SoftmaxRegression(3, 3), (X[:0], y[:0]), where="b") is None


def _one_row(value: object) -> object:
    """``value`` (an empty array or frame) with one row of zeros (of ones for weights)."""
    if isinstance(value, pd.DataFrame):
        return pd.DataFrame(np.zeros((1, value.shape[1])), columns=value.columns)
    array = np.asarray(value)
    return np.zeros((1, *array.shape[1:]), array.dtype)


_EMPTY_F = np.zeros((0, 3), np.float32)
_NO_LABELS = np.zeros(0, np.int64)


@pytest.mark.parametrize(
    ("model", "item", "options", "message"),
    [
        (SoftmaxRegression(3, 3), (np.zeros((0, 2)), _NO_LABELS), {}, "dataset has 2 features"),
        (SoftmaxRegression(3, 3), (np.zeros((0, 3), "U1"), _NO_LABELS), {}, "X has dtype <U1"),
        (SoftmaxRegression(3, 3), (np.zeros((0, 3, 2)), _NO_LABELS), {}, "X must be 2-D"),
        (SoftmaxRegression(3, 3), (_EMPTY_F, np.zeros((0, 2), np.int64)), {}, "must be 1-D"),
        (SoftmaxRegression(3, 3), (_EMPTY_F, np.zeros(0, "U1")), {}, "y has dtype <U1"),
        (SoftmaxRegression(3, 3), (_EMPTY_F, _NO_LABELS), {"weighted": True}, "has no sample"),
        (LinearRegression(3), (_EMPTY_F, np.zeros((0, 2))), {}, "targets y must have shape"),
        (
            SoftmaxRegression(3, 3),
            (pd.DataFrame(_EMPTY_F, columns=["a", "b", "z"]), _NO_LABELS),
            {"names": ("a", "b", "c")},
            "'z'",
        ),
    ],
)
def test_an_empty_batch_of_a_wrong_shape_is_refused_as_one_with_rows(
    model: at.models.Model, item: tuple[object, ...], options: dict[str, object], message: str
) -> None:
    """An empty poll is skipped, but it was not checked at all: one of the wrong width,
    dtype or target shape passed silently. The oracle: the error of the same batch with
    one row."""
    names = options.pop("names", None)
    options["names"] = None if names is None else NameRecord(names)  # type: ignore[arg-type]
    with pytest.raises(at.DataError) as with_rows:
        check_batch(model, tuple(_one_row(part) for part in item), where="b", **options)  # type: ignore[arg-type]
    options["names"] = None if names is None else NameRecord(names)  # type: ignore[arg-type]
    with pytest.raises(type(with_rows.value), match=message) as empty:
        check_batch(model, item, where="b", **options)  # type: ignore[arg-type]
    assert str(empty.value).startswith("b: a batch of no rows")
    assert str(empty.value).endswith(str(with_rows.value).removeprefix("b: "))


@pytest.mark.parametrize(
    "item",
    [
        (_EMPTY_F, _NO_LABELS),
        ([], []),  # no row shape to check
        (np.zeros((0, 3), np.int32), np.zeros(0, np.float64)),  # converted, as with rows
        (pd.DataFrame(_EMPTY_F, columns=["a", "b", "c"]), pd.Series(_NO_LABELS)),
        (_EMPTY_F, _NO_LABELS, np.zeros(0)),
    ],
)
def test_an_empty_batch_of_the_right_shape_is_skipped(item: tuple[object, ...]) -> None:
    names = NameRecord(("a", "b", "c"))
    model, weighted = SoftmaxRegression(3, 3), len(item) == 3
    assert check_batch(model, item, where="b", names=names, weighted=weighted) is None
    assert names.names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("item", "error", "message"),
    [
        ((np.full((2, 3), np.inf), [0, 1]), at.DataError, "batch 7: X has a non-finite value"),
        ((np.zeros((2, 3)), [0, 3]), at.DataError, r"batch 7: labels must be in 0\.\.2"),
        ((np.zeros((2, 3)), [0.5, 1]), at.DataError, "batch 7: labels y must be whole"),
        ((np.zeros((2, 2)), [0, 1]), at.DataError, "batch 7: dataset has 2 features"),
        ((np.array([["a", "b", "c"]]), [0]), at.DataTypeError, "batch 7: X has dtype <U1"),
        ((np.zeros((2, 3)),), at.DataTypeError, "batch 7: got tuple, not an"),
        (np.zeros((2, 3)), at.DataTypeError, "batch 7: got ndarray, not an"),
    ],
)
def test_bad_batches_are_named(item: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        check_batch(SoftmaxRegression(3, 3), item, where="batch 7")
    assert isinstance(caught.value.__cause__, at.DataError)  # the original check, chained


def test_regression_batches_share_the_first_batchs_targets() -> None:
    X, _ = _xy()
    model = LinearRegression(3)
    first = check_batch(model, (X, np.arange(6)), where="b")
    assert first is not None
    assert first[1].dtype == np.float32  # integer targets become the model's float dtype
    later = check_batch(model, (X, np.arange(6.0)), where="b", like=first[1][:0])
    assert later is not None
    assert later[1].dtype == np.float32


def test_outputs_must_not_change_mid_stream_for_a_model_that_takes_any() -> None:
    class AnyOutputs(LinearRegression):
        n_outputs = None  # check_data then accepts (n,) and (n, k) targets alike

    X, _ = _xy()
    like = np.zeros((0,), np.float32)
    with pytest.raises(at.DataError, match=r"b: .* first batch had targets of shape \(n,\);"):
        check_batch(AnyOutputs(3), (X, np.zeros((6, 2))), where="b", like=like)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_a_checked_batch_owns_its_arrays(as_dataset: bool) -> None:
    X, y = _xy()
    X = X.astype(np.float32)  # the model's dtype: nothing to convert, so nothing copied
    item = Dataset(X, y) if as_dataset else (X, y)
    checked = check_batch(SoftmaxRegression(3, 3), item, where="b")
    assert checked is not None
    assert not np.shares_memory(checked[0], X)
    assert not np.shares_memory(checked[1], y)
    np.testing.assert_array_equal(checked[0], X)


# A float32 table with integer labels takes check_batch's few-pass path; it must accept
# and refuse exactly what the general path (_inputs.prepare) does, with the same errors.
_F32 = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ((np.full((2, 3), np.nan, np.float32), np.array([0, 1])), "X has a non-finite value"),
        ((_F32, np.array([0, 3])), r"labels must be in 0\.\.2"),
        ((_F32, np.array([-1, 1])), r"labels must be in 0\.\.2"),
        ((_F32, np.array([0, 2**63 + 5], np.uint64)), "y holds the label 9223372036854775813"),
        ((np.zeros((2, 2), np.float32), np.array([0, 1])), "dataset has 2 features"),
        ((_F32, np.array([0, 1, 2])), "X has 2 rows but y has 3"),
    ],
)
def test_plain_float_batches_are_refused_as_by_the_general_path(
    item: tuple[np.ndarray, np.ndarray], message: str
) -> None:
    with pytest.raises(at.DataError, match=f"batch 7: {message}"):
        check_batch(SoftmaxRegression(3, 3), item, where="batch 7")


@pytest.mark.parametrize("labels", [np.int64, np.int32, np.uint8])
def test_plain_float_batches_come_back_as_from_the_general_path(labels: type) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)).astype(np.float32), rng.integers(0, 3, 50).astype(labels)
    model = SoftmaxRegression(3, 3)
    checked = check_batch(model, (X, y), where="b")
    oracle = at.data.Dataset(X, y, dtype=model.dtype)  # the general path's conversion
    assert checked is not None
    assert checked[0].dtype == oracle.X.dtype
    assert checked[1].dtype == oracle.y.dtype == np.int64
    np.testing.assert_array_equal(checked[0], oracle.X)
    np.testing.assert_array_equal(checked[1], oracle.y)
    assert checked[2] is None
    assert not np.shares_memory(checked[0], X)
    assert not np.shares_memory(checked[1], y)


def test_an_owned_plain_batch_is_checked_in_place_and_handed_on() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1], np.int64)
    model, assembler = SoftmaxRegression(3, 3), BatchAssembler(4)
    _, done = assemble_batch(model, (X, y), assembler, where="b", owned=True)
    assert done[0][0]["X"] is X  # trained on as it is: nobody else holds it
    assert done[0][0]["y"] is y
    X[2, 0] = np.inf
    with pytest.raises(at.DataError, match="stream batch 1: X has a non-finite value"):
        assemble_batch(model, (X, y), assembler, where="stream batch 1", owned=True)
