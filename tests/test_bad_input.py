"""Bad input fails before any work starts, with an asynctrain error naming the value."""

from __future__ import annotations

import numpy as np
import pytest

import asynctrain as at
from asynctrain.models import LogisticRegression, SoftmaxRegression


def _xy(n: int = 20, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"shards": 0}, "shards must be >= 1"),
        ({"shards": 9, "batch_size": 8}, "shards=9 is larger than batch_size=8"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"backend": "gpu"}, "unknown backend 'gpu'"),
        ({"nonfinite": "ignore"}, "nonfinite must be one of"),
        ({"mode": "turbo"}, "mode must be one of"),
        ({"workers": 0}, "workers must be >= 1"),
        # A checkpoint holds each setting as a 64-bit integer and refuses a larger one:
        # these trained, then their own checkpoints could not be resumed.
        ({"seed": 2**63}, r"seed must be <= 2\*\*63 - 1"),
        ({"seed": 2**64}, r"seed must be <= 2\*\*63 - 1"),
        ({"batch_size": 2**63}, r"batch_size must be <= 2\*\*63 - 1"),
        ({"batch_size": 2**63, "shards": 2**63}, r"batch_size must be <= 2\*\*63 - 1"),
        ({"mode": "local", "local_steps": 2**63}, r"local_steps must be <= 2\*\*63 - 1"),
        # ssp allocates a parameter copy per step in flight when the fit starts: a
        # million of them filled the machine's memory (the kernel killed the process).
        ({"mode": "ssp", "staleness": 2**63}, "more than the 1024 steps ssp keeps"),
        ({"mode": "ssp", "staleness": 10**6}, "more than the 1024 steps ssp keeps"),
        ({"mode": "ssp", "staleness": 1025}, "use mode='async'"),
    ],
)
def test_bad_trainer_settings(options: dict[str, object], fragment: str) -> None:
    with pytest.raises((at.ConfigError, at.ConfigTypeError), match=fragment):
        at.Trainer(SoftmaxRegression(4, 3), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("epochs", [0, -1, True, 1.0])
async def test_bad_epochs(epochs: object) -> None:
    X, y = _xy()
    with pytest.raises((at.ConfigError, at.ConfigTypeError), match="epochs"):
        await at.fit(SoftmaxRegression(4, 3), (X, y), epochs=epochs, backend="inline")  # type: ignore[arg-type]


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_bad_learning_rates(lr: float) -> None:
    with pytest.raises(at.ConfigError, match="learning_rate"):
        at.optim.adam(lr)


def test_not_a_model() -> None:
    with pytest.raises(at.ConfigTypeError, match="Model protocol"):
        at.Trainer(object())  # type: ignore[arg-type]


def _bad_data_cases() -> list[tuple[object, object, type[Exception], str]]:
    X, y = _xy()
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    return [
        (X_nan, y, at.DataError, "NaN"),
        (X, y[:-1], at.DataError, "20"),
        (X[:0], y[:0], at.DataError, "empty"),
        (X.astype(str), y, at.DataTypeError, "numeric"),
        (X[:, :3], y, at.DataError, "features"),
        (X, y + 5, at.DataError, "label"),
        (X, np.zeros_like(y), at.DataError, "class"),
    ]


@pytest.mark.parametrize(("X", "y", "error", "fragment"), _bad_data_cases())
async def test_bad_data_fails_before_work(
    X: object, y: object, error: type[Exception], fragment: str
) -> None:
    trainer = at.Trainer(SoftmaxRegression(4, 3), backend="inline")
    with pytest.raises(error, match=fragment):
        await trainer.fit((X, y))  # type: ignore[arg-type]
    assert trainer.state.step == 0


async def test_bad_binary_labels() -> None:
    X, _ = _xy()
    with pytest.raises(at.DataError, match="label"):
        await at.fit(LogisticRegression(4), (X, np.arange(20)), backend="inline")


async def test_bad_validation_data_is_named_as_such() -> None:
    # The checks are those of the training data, and so were the messages: "dataset has
    # 2 features" did not say which of the two datasets given to fit had them.
    X, y = _xy()
    model = SoftmaxRegression(4, 3)
    with pytest.raises(at.DataError, match=r"^validation data: dataset has 2 features"):
        await at.fit(model, (X, y), validation=(X[:, :2], y), backend="inline")
    with pytest.raises(at.DataError, match=r"^validation data: labels must be in 0\.\.2"):
        await at.fit(model, (X, y), validation=(X, y + 1), backend="inline")
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(at.DataError, match=r"^validation data: X has a non-finite value"):
        await at.fit(model, (X, y), validation=(bad, y), backend="inline")
    with pytest.raises(at.DataError, match=r"^dataset has 2 features"):  # training data
        await at.fit(model, (X[:, :2], y), validation=(X, y), backend="inline")


async def test_data_of_wrong_type() -> None:
    with pytest.raises(at.ConfigTypeError, match="Dataset"):
        await at.fit(SoftmaxRegression(4, 3), [1, 2, 3], backend="inline")  # type: ignore[arg-type]
