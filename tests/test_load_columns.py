"""Weights, label columns and feature names from files: ``load(..., label=, weight=)`` for
every format, and the command line's ``--label-column``, ``--weight`` and
``--class-weight``, checked against the library called directly (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import asynctrain as at
from asynctrain._cli import main
from asynctrain.data import Dataset, load

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def table() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 240
    X = rng.standard_normal((n, 3))
    y = (X @ [1.0, -2.0, 0.5] > 0).astype(np.int64)
    w = rng.integers(1, 4, n).astype(np.float64)
    return {"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "target": y, "w": w}


def _write_csv(path: Path, columns: dict[str, np.ndarray], order: list[str]) -> Path:
    rows = np.column_stack([columns[name] for name in order])
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    path.write_text(",".join(order) + "\n" + body + "\n")
    return path


def _expected(table: dict[str, np.ndarray], names: list[str]) -> Dataset:
    X = np.column_stack([table[name] for name in names]).astype(np.float32)
    return Dataset(X, table["target"], sample_weight=table["w"], feature_names=names)


def _same(got: Dataset, want: Dataset) -> None:
    np.testing.assert_array_equal(np.asarray(got.X), np.asarray(want.X))
    np.testing.assert_array_equal(np.asarray(got.y), np.asarray(want.y))
    np.testing.assert_array_equal(np.asarray(got.sample_weight), np.asarray(want.sample_weight))
    assert got.feature_names == want.feature_names


def test_csv_label_and_weight_columns_by_name_and_index(tmp_path: Path, table: dict) -> None:
    path = _write_csv(tmp_path / "t.csv", table, ["w", "a", "target", "b", "c"])
    want = _expected(table, ["a", "b", "c"])
    _same(load(path, label="target", weight="w"), want)
    _same(load(path, label=2, weight=0), want)
    _same(load(path, label=-3, weight="w"), want)


def test_npz_dir_and_npy_weights(tmp_path: Path, table: dict) -> None:
    X = np.column_stack([table[k] for k in "abc"]).astype(np.float32)
    y, w = table["target"], table["w"]
    np.savez(tmp_path / "d.npz", X=X, y=y, weights=w)
    (tmp_path / "dir").mkdir()
    for name, array in (("X", X), ("y", y), ("w", w)):
        np.save(tmp_path / "dir" / f"{name}.npy", array)
    np.save(tmp_path / "w.npy", w)
    for data in (
        load(tmp_path / "d.npz", weight="weights"),
        load(tmp_path / "dir", weight="w"),
        load(tmp_path / "dir" / "X.npy", tmp_path / "dir" / "y.npy", weight=tmp_path / "w.npy"),
    ):
        np.testing.assert_array_equal(np.asarray(data.X), X)
        np.testing.assert_array_equal(np.asarray(data.sample_weight), w)
    assert load(tmp_path / "d.npz").sample_weight is None


def test_parquet_file_and_directory(tmp_path: Path, table: dict) -> None:
    whole = pa.table(table)
    pq.write_table(whole, tmp_path / "t.parquet", row_group_size=64)
    (tmp_path / "parts").mkdir()
    pq.write_table(whole.slice(0, 100), tmp_path / "parts" / "part-0.parquet")
    pq.write_table(whole.slice(100), tmp_path / "parts" / "part-1.parquet")
    want = _expected(table, ["a", "b", "c"])
    _same(load(tmp_path / "t.parquet", label="target", weight="w"), want)
    _same(load(tmp_path / "parts", label="target", weight="w"), want)
    renamed = whole.rename_columns(["a", "b", "c", "label", "w"])
    pq.write_table(renamed, tmp_path / "default.parquet")
    assert load(tmp_path / "default.parquet").feature_names == ("a", "b", "c", "w")


def test_bad_label_and_weight_options_are_clear(tmp_path: Path, table: dict) -> None:
    path = _write_csv(tmp_path / "t.csv", table, ["a", "b", "c", "target", "w"])
    with pytest.raises(at.ConfigError, match="both name column 4"):
        load(path, label="w", weight=-1)
    with pytest.raises(at.DataError, match="no column 'weights'"):
        load(path, label="target", weight="weights")
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(at.DataError, match="no array named 'w'"):
        load(tmp_path / "d.npz", weight="w")
    with pytest.raises(at.ConfigTypeError, match="weight must be a name"):
        load(tmp_path / "d.npz", weight=1)
    with pytest.raises(at.ConfigTypeError, match="weight must be a column name"):
        load(path, weight=1.5)  # type: ignore[arg-type]
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    with pytest.raises(at.ConfigTypeError, match="label must be a name"):
        load(tmp_path / "t.parquet", label=3)
    np.savez(tmp_path / "bad.npz", X=np.zeros((2, 2)), y=np.zeros(2), w=np.array([1.0, -1.0]))
    with pytest.raises(at.DataError, match=r"bad\.npz"):
        load(tmp_path / "bad.npz", weight="w")


def _train(argv: list[str], out: Path) -> dict:
    common = ["--model", "logreg", "--no-validation", "--no-progress", "--json", "--seed", "1"]
    assert main([*argv, *common, "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def test_cli_weights_equal_the_library_fit(
    tmp_path: Path, table: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_csv(tmp_path / "t.csv", table, ["a", "target", "b", "w", "c"])
    argv = ["train", str(path), "--label-column", "target", "--weight", "w", "--epochs", "3"]
    argv += ["--batch-size", "64", "--optimizer", "sgd", "--lr", "0.1"]
    saved = _train(argv, tmp_path / "m.npz")
    trainer = at.Trainer(
        at.models.LogisticRegression(3), at.optim.sgd(0.1, momentum=0.9), backend="inline",
        batch_size=64, seed=1,
    )  # fmt: skip
    result = at.run(trainer.fit(_expected(table, ["a", "b", "c"]), epochs=3))
    for key, value in result.params.items():
        np.testing.assert_array_equal(saved[key], value)
    spec = json.loads(str(saved["__asynctrain_model__"]))
    assert spec["feature_names"] == ["a", "b", "c"]


def test_cli_integer_weights_equal_repeated_rows(tmp_path: Path, table: dict) -> None:
    """One full-batch SGD step: a weight of k counts like k copies of the row."""
    weighted = _write_csv(tmp_path / "w.csv", table, ["a", "b", "c", "target", "w"])
    repeats = table["w"].astype(np.int64)
    repeated = {k: np.repeat(v, repeats) for k, v in table.items() if k != "w"}
    plain = _write_csv(tmp_path / "r.csv", repeated, ["a", "b", "c", "target"])
    step = ["--epochs", "1", "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "100000"]
    one = _train(["train", str(weighted), "--weight", "w", *step], tmp_path / "1.npz")
    two = _train(["train", str(plain), *step], tmp_path / "2.npz")
    for key in ("w", "b"):
        np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-7)


def test_cli_class_weight_balanced_equals_explicit_weights(tmp_path: Path, table: dict) -> None:
    y = table["target"].copy()
    y[: len(y) * 3 // 4] = 1  # imbalanced: mostly 1s
    data = {**table, "target": y}
    counts = np.bincount(y)
    data["w"] = (len(y) / (2 * counts))[y]
    path = _write_csv(tmp_path / "t.csv", data, ["a", "b", "c", "target"])
    weighed = _write_csv(tmp_path / "w.csv", data, ["a", "b", "c", "target", "w"])
    step = ["--label-column", "target", "--epochs", "2", "--batch-size", "32"]
    weights = ",".join(f"{c}={float(data['w'][y == c][0])!r}" for c in (0, 1))
    balanced = _train(["train", str(path), "--class-weight", "balanced", *step], tmp_path / "b.npz")
    by_label = _train(["train", str(path), "--class-weight", weights, *step], tmp_path / "l.npz")
    explicit = _train(["train", str(weighed), "--weight", "w", *step], tmp_path / "e.npz")
    for key in ("w", "b"):
        np.testing.assert_allclose(balanced[key], explicit[key], rtol=1e-5)
        np.testing.assert_allclose(by_label[key], explicit[key], rtol=1e-5)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("2=1", "not LABEL=WEIGHT with a label of the data"),
        ("0=x", "'x' is not a number"),
        ("0:1", "not LABEL=WEIGHT"),
    ],
)
def test_cli_bad_class_weight_is_one_line(
    tmp_path: Path, table: dict, option: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_csv(tmp_path / "t.csv", table, ["a", "b", "c", "target", "w"])
    argv = ["train", str(path), "--label-column", "target", "--model", "logreg"]
    assert main([*argv, "--class-weight", option]) == 2
    assert message in capsys.readouterr().err


def test_predict_takes_a_headed_csv_by_column_name(tmp_path: Path, table: dict) -> None:
    trained = _write_csv(tmp_path / "t.csv", table, ["a", "b", "c", "target"])
    model = tmp_path / "m.npz"
    _train(["train", str(trained), "--label-column", "target", "--epochs", "2"], model)
    shuffled = _write_csv(tmp_path / "new.csv", table, ["c", "w", "a", "b"])  # no label
    by_name, by_position = tmp_path / "p1.npy", tmp_path / "p2.npy"
    assert main(["predict", str(model), str(shuffled), "--out", str(by_name)]) == 0
    assert main(["predict", str(model), str(trained), "--out", str(by_position)]) == 0
    np.testing.assert_array_equal(np.load(by_name), np.load(by_position))
    missing = _write_csv(tmp_path / "missing.csv", table, ["a", "b", "w"])
    assert main(["predict", str(model), str(missing), "--out", str(by_name)]) == 2
