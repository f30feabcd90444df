"""Data frames and Arrow tables as X (pandas, polars, pyarrow): conversion, feature names,
their checks at predict and across fits, checkpoints, streams, jobs and the estimators.

The oracle is the same fit on numpy arrays: a frame is one way of passing columns, so the
parameters must be the same bits.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from _crafting import rezip

import asynctrain as at
from asynctrain._checkpoint._content import Checkpoint
from asynctrain._checkpoint._inspect import describe
from asynctrain._inputs import prepare
from asynctrain.data import Dataset
from asynctrain.data._frames import as_features, as_targets
from asynctrain.models import LogisticRegression, SoftmaxRegression

N, NAMES = 240, ["age", "income", "visits", "member"]


def _columns(seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of four dtypes: float64, float32, int64 and bool."""
    rng = np.random.default_rng(seed)
    return {
        "age": rng.standard_normal(N),
        "income": rng.standard_normal(N).astype(np.float32),
        "visits": rng.integers(-50, 50, N),
        "member": rng.random(N) > 0.5,
    }


def _labels(columns: dict[str, np.ndarray]) -> np.ndarray:
    return (columns["age"] + columns["visits"] / 50 > 0).astype(np.int64)


def _matrix(columns: dict[str, np.ndarray]) -> np.ndarray:
    """The numpy oracle: the columns stacked as float64 (every value exact)."""
    return np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])


def _pandas(columns: dict[str, Any]) -> Any:
    return pd.DataFrame(columns)


def _polars(columns: dict[str, Any]) -> Any:
    return pl.DataFrame(columns)


def _arrow(columns: dict[str, Any]) -> Any:
    return pa.table(columns)


def _batch(columns: dict[str, Any]) -> Any:
    return pa.RecordBatch.from_pydict(columns)


FRAMES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "pandas": _pandas,
    "polars": _polars,
    "pyarrow-table": _arrow,
    "pyarrow-batch": _batch,
}
SERIES: dict[str, Callable[[np.ndarray], Any]] = {
    "pandas": pd.Series,
    "polars": pl.Series,
    "pyarrow-array": pa.array,
    "pyarrow-chunked": lambda y: pa.chunked_array([y[:100], y[100:]]),
    "one-column-frame": lambda y: pd.DataFrame({"label": y}),
}


def _select(frame: Any, names: list[str]) -> Any:
    return frame[names] if isinstance(frame, pd.DataFrame) else frame.select(names)


def _trainer(model: Any = None, **options: Any) -> at.Trainer:
    options = {"backend": "inline", "batch_size": 32, "seed": 3} | options
    return at.Trainer(model or LogisticRegression(len(NAMES)), at.optim.adam(0.05), **options)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- conversion: the same bits as numpy ------------------------------------------------------


@pytest.mark.parametrize("library", FRAMES)
@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_a_frame_trains_the_bits_of_the_numpy_run(library: str, backend: str) -> None:
    columns = _columns()
    X, y = _matrix(columns), _labels(columns)
    async with _trainer(backend=backend, workers=2 if backend == "thread" else None) as trainer:
        reference = await trainer.fit((X, y), epochs=2)
    async with _trainer(backend=backend, workers=2 if backend == "thread" else None) as trainer:
        result = await trainer.fit((FRAMES[library](columns), y), epochs=2)
        assert trainer.feature_names == tuple(NAMES)
    assert _same(result.params, reference.params)
    assert result.feature_names == tuple(NAMES)
    assert reference.feature_names is None


async def test_a_frame_on_the_process_backend_trains_the_same_bits() -> None:
    columns = _columns()
    X, y = _matrix(columns), _labels(columns)
    reference = await _trainer().fit((X, y), epochs=2)
    async with _trainer(backend="process", workers=2) as trainer:
        result = await trainer.fit((_pandas(columns), pd.Series(y)), epochs=2)
    assert _same(result.params, reference.params)


@pytest.mark.parametrize("library", FRAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_columns_are_cast_once_to_the_models_dtype(library: str, dtype: type) -> None:
    columns = _columns()
    model = LogisticRegression(len(NAMES), dtype=dtype)
    data = prepare(model, (FRAMES[library](columns), _labels(columns)))
    assert data.X.dtype == dtype
    assert data.X.flags.c_contiguous
    np.testing.assert_array_equal(data.X, _matrix(columns).astype(dtype))
    assert data.feature_names == tuple(NAMES)


@pytest.mark.parametrize("library", FRAMES)
def test_the_default_dtype_follows_numpy(library: str) -> None:
    columns = _columns()
    wide = Dataset(FRAMES[library](columns), _labels(columns))  # a float64 column
    assert wide.dtype == np.float64
    assert wide.dtype == Dataset(_matrix(columns), _labels(columns)).dtype
    narrow = {k: v for k, v in columns.items() if k != "age"}  # float32, int64, bool
    assert Dataset(FRAMES[library](narrow), _labels(columns)).dtype == np.float64
    small = {"visits": columns["visits"].astype(np.int16), "member": columns["member"]}
    assert Dataset(FRAMES[library](small), _labels(columns)).dtype == np.float32


@pytest.mark.parametrize("kind", SERIES)
def test_y_may_be_a_series_or_an_arrow_column(kind: str) -> None:
    columns = _columns()
    y = _labels(columns)
    data = Dataset(_pandas(columns), SERIES[kind](y))
    np.testing.assert_array_equal(data.y, y)
    assert data.y.dtype == np.int64


def test_a_wide_frame_as_y_is_multi_output_targets() -> None:
    targets = pd.DataFrame({"a": [0.5, 1.5, 2.5], "b": [1, 2, 3]})
    data = Dataset(np.zeros((3, 2)), targets)
    np.testing.assert_array_equal(data.y, [[0.5, 1], [1.5, 2], [2.5, 3]])


def test_the_converted_array_is_a_new_one() -> None:
    frame = pd.DataFrame({"a": np.arange(4.0), "b": np.arange(4.0)})
    X, _ = as_features(frame, dtype=np.dtype(np.float64))
    assert not np.shares_memory(X, frame["a"].to_numpy())
    frame.loc[0, "a"] = 99.0  # the caller's frame changes: the array does not
    assert X[0, 0] == 0.0


def test_a_frame_without_string_names_is_like_an_array() -> None:
    X = np.random.default_rng(0).standard_normal((10, 3))
    data = Dataset(pd.DataFrame(X), np.arange(10) % 2)  # columns 0, 1, 2
    assert data.feature_names is None
    np.testing.assert_array_equal(data.X, X)


def test_dataset_keeps_names_through_subset_split_pickle_and_shared_memory() -> None:
    columns = _columns()
    data = Dataset(_pandas(columns), _labels(columns))
    first, second = data.split(0.25)
    for part in (data.subset([3, 1]), first, second, pickle.loads(pickle.dumps(data))):
        assert part.feature_names == tuple(NAMES)
    assert data.to_shared().feature_names == tuple(NAMES)
    assert prepare(LogisticRegression(4), data).feature_names == tuple(NAMES)  # recast


def test_arrays_may_be_named_too() -> None:
    data = Dataset(np.zeros((3, 2)), [0, 1, 0], feature_names=["a", "b"])
    assert data.feature_names == ("a", "b")
    with pytest.raises(at.DataError, match="2 names but X has 3 columns"):
        Dataset(np.zeros((3, 3)), [0, 1, 0], feature_names=["a", "b"])
    with pytest.raises(at.DataError, match=r"\['a'\] more than once"):
        Dataset(np.zeros((3, 2)), [0, 1, 0], feature_names=["a", "a"])
    with pytest.raises(at.ConfigTypeError, match="must be strings, got 3"):
        Dataset(np.zeros((3, 2)), [0, 1, 0], feature_names=["a", 3])  # type: ignore[list-item]
    with pytest.raises(at.ConfigError, match="a data frame's columns name its features"):
        Dataset(pd.DataFrame({"a": [1.0, 2.0]}), [0, 1], feature_names=["a"])


# -- hostile frames ----------------------------------------------------------------------


def _with(library: str, **extra: Any) -> Any:
    columns: dict[str, Any] = {"age": [1.0, 2.0, 3.0], "visits": [1, 2, 3]} | extra
    return FRAMES[library](columns)


@pytest.mark.parametrize("library", FRAMES)
def test_a_string_column_is_refused_by_name(library: str) -> None:
    frame = _with(library, city=["a", "b", "c"])
    with pytest.raises(at.DataTypeError, match=r"non-numeric column 'city' \(") as caught:
        Dataset(frame, [0, 1, 0])
    assert "drop" in str(caught.value)


@pytest.mark.parametrize(
    ("frame", "bad"),
    [
        (pd.DataFrame({"a": [1.0, 2.0], "c": pd.Categorical(["x", "y"])}), "'c' (category)"),
        (pd.DataFrame({"a": [1.0, 2.0], "t": pd.to_datetime(["2020", "2021"])}), "'t'"),
        (pd.DataFrame({"a": [1.0, 2.0], "o": np.array([1, 2], dtype=object)}), "'o' (object)"),
        (pd.DataFrame({"a": [1.0, 2.0], "z": [1j, 2j]}), "'z' (complex128)"),
        (pl.DataFrame({"a": [1.0, 2.0], "d": pl.Series([1, 2]).cast(pl.Decimal(10, 2))}), "'d'"),
        (pl.DataFrame({"a": [1.0, 2.0], "c": pl.Series(["x", "y"], dtype=pl.Categorical)}), "'c'"),
        (pa.table({"a": [1.0, 2.0], "s": pa.array(["x", "y"]).dictionary_encode()}), "'s'"),
        (pa.table({"a": [1.0, 2.0], "l": [[1], [2]]}), "'l' (list<item: int64>)"),
    ],
)
def test_columns_that_are_not_numbers_are_refused(frame: Any, bad: str) -> None:
    with pytest.raises(at.DataTypeError, match=re.escape(f"non-numeric column {bad}")):
        Dataset(frame, [0, 1])


def test_every_bad_column_is_named() -> None:
    frame = pd.DataFrame({"a": [1.0], "s": ["x"], "t": ["y"]})
    with pytest.raises(at.DataTypeError, match=r"columns 's' \(str\), 't' \(str\)"):
        Dataset(frame, [0])


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"a": [1.0, 2.0], "b": [1, None]}, dtype="Float64"),
        pd.DataFrame({"a": [1.0, 2.0], "b": pd.array([1, None], dtype="Int64")}),
        pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, np.nan]}),
        pl.DataFrame({"a": [1.0, 2.0], "b": [3, None]}),
        pl.DataFrame({"a": [1.0, 2.0], "b": [True, None]}),
        pl.DataFrame({"a": [1.0, 2.0], "b": [3.0, float("nan")]}),
        pa.table({"a": [1.0, 2.0], "b": pa.array([3, None])}),
        pa.table({"a": [1.0, 2.0], "b": pa.array([True, None])}),
    ],
)
def test_nulls_and_nan_are_refused_with_row_and_column(frame: Any) -> None:
    with pytest.raises(at.DataError, match=r"at row 1, column 1 \('b'"):
        Dataset(frame, [0, 1])


@pytest.mark.parametrize(
    ("value", "hint"), [(np.nan, "'b'; a null reads as NaN"), (np.inf, "'b'"), (-np.inf, "'b'")]
)
def test_only_a_nan_from_a_frame_is_said_to_be_maybe_a_null(value: float, hint: str) -> None:
    # an Inf was said to be "a null read as NaN" too, and so was a NaN of a plain array
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, value]})
    with pytest.raises(at.DataError, match=rf"at row 1, column 1 \({re.escape(hint)}\);"):
        Dataset(frame, [0, 1])
    with pytest.raises(at.DataError, match=r"at row 1, column 1 \('b'\);"):
        Dataset(frame.to_numpy(), [0, 1], feature_names=["a", "b"])
    with pytest.raises(at.DataError, match=r"y has a non-finite value \(nan\) at row 1 \(a null"):
        Dataset(frame.to_numpy()[:, :1], pd.Series([0, None], dtype="Int64"))


def test_nullable_numbers_without_nulls_are_numbers() -> None:
    frame = pd.DataFrame(
        {
            "i": pd.array([1, 2], dtype="Int64"),
            "f": pd.array([0.5, 1.5], dtype="Float64"),
            "b": pd.array([True, False], dtype="boolean"),
            "a": pd.Series([2.0, 3.0], dtype="float64[pyarrow]"),
        }
    )
    np.testing.assert_array_equal(Dataset(frame, [0, 1]).X, [[1, 0.5, 1, 2], [2, 1.5, 0, 3]])


def test_duplicated_column_names_are_refused() -> None:
    frame = pd.DataFrame([[1.0, 2.0, 3.0]], columns=["a", "b", "a"])
    with pytest.raises(at.DataError, match=r"column name \['a'\] more than once"):
        Dataset(frame, [0])
    table = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["x", "x"])
    with pytest.raises(at.DataError, match=r"\['x'\] more than once"):
        Dataset(table, [0])


def test_column_names_of_mixed_types_are_refused() -> None:
    frame = pd.DataFrame([[1.0, 2.0]], columns=["a", 7])
    with pytest.raises(at.DataTypeError, match=r"mixed types .* 7 of type int"):
        Dataset(frame, [0])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": [], "b": []}, dtype=float), "empty"),
        (pl.DataFrame({"a": []}, schema={"a": pl.Float64}), "empty"),
        (pd.DataFrame(index=range(3)), "pandas DataFrame with no columns"),
        (pa.table({}), "pyarrow Table with no columns"),
    ],
)
def test_empty_frames_are_refused(frame: Any, message: str) -> None:
    with pytest.raises(at.DataError, match=message):
        Dataset(frame, np.zeros(len(frame)))


def test_a_lazy_frame_must_be_collected() -> None:
    with pytest.raises(at.DataTypeError, match=r"LazyFrame.*X.collect\(\)"):
        Dataset(pl.DataFrame({"a": [1.0, 2.0]}).lazy(), [0, 1])


@pytest.mark.parametrize(
    ("y", "error", "message"),
    [
        (pd.Series(["cat", "dog"]), at.DataTypeError, "np.unique"),
        (pd.Series(["cat", "dog"], dtype="category"), at.DataTypeError, "category"),
        (pl.Series(["cat", "dog"]), at.DataTypeError, "String"),
        (pd.Series([0, None], dtype="Int64"), at.DataError, "y has a non-finite value"),
        (pa.array([0, None]), at.DataError, "y has a non-finite value"),
    ],
)
def test_bad_targets_are_refused(y: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Dataset(np.zeros((2, 1)), y)


def test_frames_are_read_only_where_they_are_given() -> None:
    code = (
        "import sys, numpy as np, asynctrain as at\n"
        "X = np.random.default_rng(0).standard_normal((64, 3))\n"
        "model = at.models.LogisticRegression(3)\n"
        "result = at.run(at.fit(model, (X, X[:, 0] > 0), backend='inline'))\n"
        "assert result.feature_names is None\n"
        "loaded = {'pandas', 'polars', 'pyarrow'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- feature names: checked at predict, across fits and checkpoints ---------------------------


async def _fitted(library: str = "pandas") -> tuple[at.Trainer, Any, np.ndarray]:
    columns = _columns()
    frame, y = FRAMES[library](columns), _labels(columns)
    trainer = _trainer()
    await trainer.fit((frame, y), epochs=2)
    return trainer, frame, y


@pytest.mark.parametrize("library", FRAMES)
async def test_predict_checks_the_columns(library: str) -> None:
    trainer, frame, _ = await _fitted(library)
    X = _matrix(_columns())
    expected = trainer.predict(X)  # a plain array: by position
    np.testing.assert_array_equal(trainer.predict(frame), expected)
    with pytest.raises(at.DataError, match=r"another order: \['income', 'age'"):
        trainer.predict(_select(frame, ["income", "age", "visits", "member"]))
    with pytest.raises(at.DataError, match=r"misses \['member'\]"):
        trainer.predict(_select(frame, ["age", "income", "visits"]))
    renamed = pd.DataFrame(X, columns=["age", "income", "visits", "vip"])
    with pytest.raises(at.DataError, match=r"misses \['member'\] and has .* \['vip'\]"):
        trainer.predict(renamed)


async def test_a_frame_at_predict_after_an_array_fit_is_taken_by_position() -> None:
    columns = _columns()
    trainer = _trainer()
    await trainer.fit((_matrix(columns), _labels(columns)))
    assert trainer.feature_names is None
    frame = _pandas(columns)
    np.testing.assert_array_equal(trainer.predict(frame), trainer.predict(_matrix(columns)))


async def test_a_later_fit_needs_the_same_columns() -> None:
    trainer, frame, y = await _fitted()
    step = trainer.state.step
    other = frame.rename(columns={"member": "vip"})
    with pytest.raises(at.DataError, match=r"data does not have .* misses \['member'\]"):
        await trainer.fit((other, y))
    with pytest.raises(at.DataError, match="validation has the trained columns in another"):
        await trainer.fit((frame, y), validation=(frame[NAMES[::-1]], y))
    assert trainer.state.step == step  # refused before any work
    await trainer.fit((_matrix(_columns()), y))  # arrays still fit, the names stay
    assert trainer.feature_names == tuple(NAMES)


async def test_validation_names_are_checked_against_the_data() -> None:
    columns = _columns()
    frame, y = _pandas(columns), _labels(columns)
    trainer = _trainer()
    with pytest.raises(at.DataError, match=r"validation does not have .* \['age'"):
        await trainer.fit((frame, y), validation=(frame.drop(columns="age"), y))
    assert trainer.state.step == 0
    assert trainer.feature_names is None


async def test_one_call_fit_reports_the_names() -> None:
    columns = _columns()
    model = LogisticRegression(len(NAMES))
    result = await at.fit(model, (_polars(columns), _labels(columns)), backend="inline")
    assert result.feature_names == tuple(NAMES)


@pytest.mark.parametrize("library", ["pandas", "polars", "pyarrow-table"])
async def test_names_survive_save_load_and_restore(library: str, tmp_path: Path) -> None:
    trainer, frame, _ = await _fitted(library)
    path = await trainer.save(tmp_path / "model.ckpt")
    assert Checkpoint.read(path).feature_names == tuple(NAMES)
    assert f"features    4 named: {', '.join(NAMES)}" in describe(path)
    loaded = _trainer()
    await loaded.load(path)
    assert loaded.feature_names == tuple(NAMES)
    model = LogisticRegression(len(NAMES))
    restored = await at.Trainer.restore(path, model, at.optim.adam(0.05), backend="inline")
    assert restored.feature_names == tuple(NAMES)
    np.testing.assert_array_equal(restored.predict(frame), trainer.predict(frame))
    with pytest.raises(at.DataError, match="another order"):
        restored.predict(_select(frame, NAMES[::-1]))


async def test_loading_an_array_checkpoint_forgets_the_names(tmp_path: Path) -> None:
    columns = _columns()
    plain = _trainer()
    await plain.fit((_matrix(columns), _labels(columns)))
    path = await plain.save(tmp_path / "plain.ckpt")
    assert "(no names: trained on arrays)" in describe(path)
    trainer, _, _ = await _fitted()
    await trainer.load(path)
    assert trainer.feature_names is None


async def test_resume_keeps_the_names_and_refuses_other_columns(tmp_path: Path) -> None:
    columns = _columns()
    frame, y = _pandas(columns), _labels(columns)
    whole = _trainer()
    reference = await whole.fit((frame, y), epochs=3)
    first = _trainer()
    await first.fit((frame, y), epochs=1, checkpoint_dir=tmp_path)
    resumed = _trainer()
    result = await resumed.fit((frame, y), epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert _same(result.params, reference.params)
    assert result.feature_names == resumed.feature_names == tuple(NAMES)
    again = _trainer()
    with pytest.raises(at.DataError, match=r"data has the trained columns in another order"):
        await again.fit(
            (_select(frame, NAMES[::-1]), y), epochs=4, checkpoint_dir=tmp_path, resume=True
        )


@pytest.mark.parametrize(
    "names",
    [["a", "b"], ["a", "a", "b", "c"], ["a", "b", "c", 4], "abcd"],
)
async def test_a_checkpoint_with_bad_names_is_refused(names: Any, tmp_path: Path) -> None:
    trainer, _, _ = await _fitted()
    saved = await trainer.save(tmp_path / "good.ckpt")

    def edit(manifest: dict[str, Any]) -> None:
        manifest["model"]["feature_names"] = names

    rezip(saved, tmp_path / "bad.ckpt", edit)
    with pytest.raises(at.CheckpointError, match=r"feature_names|feature names"):
        Checkpoint.read(tmp_path / "bad.ckpt")


async def test_a_checkpoint_without_names_reads_as_none(tmp_path: Path) -> None:
    trainer, _, _ = await _fitted()
    saved = await trainer.save(tmp_path / "new.ckpt")
    rezip(saved, tmp_path / "old.ckpt", lambda m: m["model"].pop("feature_names"))
    assert Checkpoint.read(tmp_path / "old.ckpt").feature_names is None


# -- streams, partial_fit, jobs ------------------------------------------------------------


async def test_a_stream_of_frames_trains_like_arrays() -> None:
    columns = _columns()
    frame, y = _polars(columns), _labels(columns)
    X = _matrix(columns)
    cuts = [(0, 70), (70, 150), (150, N)]
    reference = await _trainer().fit_stream([(X[a:b], y[a:b]) for a, b in cuts])
    trainer = _trainer()
    result = await trainer.fit_stream([(frame[a:b], pl.Series(y[a:b])) for a, b in cuts])
    assert _same(result.params, reference.params)
    assert result.feature_names == trainer.feature_names == tuple(NAMES)


async def test_a_stream_batch_with_other_columns_is_refused_by_number() -> None:
    columns = _columns()
    frame, y = _pandas(columns), _labels(columns)
    batches = [(frame[:100], y[:100]), (frame[100:][NAMES[::-1]], y[100:])]
    trainer = _trainer(batch_size=50)
    with pytest.raises(at.DataError, match="stream batch 1: X has the trained columns in"):
        await trainer.fit_stream(batches)
    assert trainer.state.step == 2  # the first batch, and nothing of the second
    assert trainer.feature_names == tuple(NAMES)


async def test_a_frame_pair_is_not_a_stream() -> None:
    columns = _columns()
    with pytest.raises(at.ConfigTypeError, match="not a stream of batches"):
        await _trainer().fit_stream((_pandas(columns), pd.Series(_labels(columns))))


async def test_partial_fit_takes_frames_and_checks_them() -> None:
    columns = _columns()
    frame, y = _pandas(columns), pd.Series(_labels(columns))
    trainer = _trainer()
    result = await trainer.partial_fit(frame, y)
    assert result.feature_names == trainer.feature_names == tuple(NAMES)
    with pytest.raises(at.DataError, match="partial_fit data: X does not have"):
        await trainer.partial_fit(frame.drop(columns="age"), y)


async def test_a_service_job_trains_on_a_frame_and_checks_predictions() -> None:
    columns = _columns()
    frame, y = _arrow(columns), pa.array(_labels(columns))
    async with at.TrainingService(backend="inline") as service:
        job = await service.start("frames", LogisticRegression(4), (frame, y), batch_size=32)
        result = await job.result()
        assert result.feature_names == tuple(NAMES)
        prediction = await job.predict(frame)
        assert len(prediction.values) == N
        with pytest.raises(at.DataError, match="another order"):
            await job.predict(frame.select(NAMES[::-1]))


async def test_a_softmax_model_takes_frames_of_each_library() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 3))
    y = rng.integers(0, 3, 120)
    names = ["x0", "x1", "x2"]
    results = []
    for make in (_pandas, _polars, _arrow):
        frame = make({name: X[:, j] for j, name in enumerate(names)})
        trainer = _trainer(SoftmaxRegression(3, 3), backend="thread", workers=2)
        results.append(await trainer.fit((frame, y), epochs=2))
    reference = await _trainer(SoftmaxRegression(3, 3)).fit((X, y), epochs=2)
    assert all(_same(r.params, reference.params) for r in results)


# -- the scikit-learn estimators -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("library", FRAMES)
def test_estimators_record_and_check_feature_names(library: str) -> None:
    from asynctrain.sklearn import AsyncLogisticRegression

    columns = _columns()
    frame, y = FRAMES[library](columns), _labels(columns)
    estimator = AsyncLogisticRegression(max_iter=3, backend="inline", random_state=0).fit(frame, y)
    assert list(estimator.feature_names_in_) == NAMES
    reference = AsyncLogisticRegression(max_iter=3, backend="inline", random_state=0).fit(
        _matrix(columns), y
    )
    np.testing.assert_array_equal(estimator.predict(frame), reference.predict(_matrix(columns)))
    with pytest.raises(ValueError, match="feature names"):
        estimator.predict(_select(frame, NAMES[::-1]))


@pytest.mark.parametrize("library", FRAMES)
def test_estimators_refuse_a_string_column_by_name(library: str) -> None:
    from asynctrain.sklearn import AsyncLinearRegression

    with pytest.raises(at.DataTypeError, match="non-numeric column 'city'") as caught:
        AsyncLinearRegression().fit(_with(library, city=["a", "b", "c"]), [0.0, 1.0, 2.0])
    assert isinstance(caught.value, ValueError)  # what scikit-learn's checks expect


def test_estimators_refuse_duplicated_names() -> None:
    from asynctrain.sklearn import AsyncLinearRegression

    frame = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=["a", "a"])
    with pytest.raises(at.DataError, match="more than once"):
        AsyncLinearRegression().fit(frame, [0.0, 1.0])


def test_targets_of_a_frame_keep_their_dtype() -> None:
    np.testing.assert_array_equal(as_targets(pl.DataFrame({"y": [1, 2]})), [1, 2])
    assert as_targets(pa.chunked_array([[True, False]])).dtype == np.bool_


class _ArrowStream:
    """A table of another library: it only exports the Arrow PyCapsule stream."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


async def test_any_arrow_stream_is_a_table() -> None:
    columns = _columns()
    X, y = _matrix(columns), _labels(columns)
    reference = await _trainer().fit((X, y))
    trainer = _trainer()
    result = await trainer.fit((_ArrowStream(_arrow(columns)), y))
    assert _same(result.params, reference.params)
    assert result.feature_names == tuple(NAMES)
    reordered = _ArrowStream(_arrow(columns).select(NAMES[::-1]))
    with pytest.raises(at.DataError, match="another order"):
        trainer.predict(reordered)
    with pytest.raises(at.DataTypeError, match="non-numeric column 'city'"):
        Dataset(_ArrowStream(pa.table({"city": ["a", "b"]})), [0, 1])


async def test_predict_refuses_a_lazy_frame_as_fit_does() -> None:
    async with _trainer(SoftmaxRegression(1, 2)) as trainer:
        await trainer.fit((pl.DataFrame({"a": [0.0, 1.0]}), [0, 1]))
        with pytest.raises(at.DataTypeError, match=r"LazyFrame.*X.collect\(\)"):
            trainer.predict(pl.DataFrame({"a": [1.0]}).lazy())
