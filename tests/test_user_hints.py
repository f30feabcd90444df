"""Misuse a new user makes, answered with asynctrain's own error and the right fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import asynctrain as at
from asynctrain import optim
from asynctrain.data import load


def test_an_optimizer_name_is_the_registered_alias() -> None:
    model = at.models.LogisticRegression(3)
    trainer = at.Trainer(model, "adam", backend="inline")  # type: ignore[arg-type]
    params = {"w": np.ones(3, dtype=np.float32)}
    grads = {"w": np.full(3, 0.5, dtype=np.float32)}
    theirs, _ = trainer.optimizer.update(dict(grads), trainer.optimizer.init(params), params)
    ours, _ = optim.adam().update(dict(grads), optim.adam().init(params), params)
    assert repr(trainer.optimizer) == repr(optim.adam())
    np.testing.assert_array_equal(theirs["w"], ours["w"])


def test_get_builds_each_alias_with_its_options() -> None:
    assert optim.names() == ["adagrad", "adam", "adamw", "rmsprop", "sgd"]
    assert repr(optim.get("sgd", 0.1, momentum=0.9)) == repr(optim.sgd(0.1, momentum=0.9))
    assert repr(optim.get("ADAMW", 1e-2)) == repr(optim.adamw(1e-2))


@pytest.mark.parametrize(
    ("optimizer", "error", "named"),
    [
        ("adma", at.ConfigError, "adagrad, adam, adamw"),
        (42, at.ConfigTypeError, "42"),
        ("sgd", at.ConfigTypeError, "learning_rate"),
    ],
)
def test_a_bad_optimizer_is_a_config_error(optimizer: object, error: type, named: str) -> None:
    with pytest.raises(error, match=named):
        at.Trainer(at.models.LogisticRegression(3), optimizer, backend="inline")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "meant"), [(" adam", "adam"), ("SGD\n", "sgd"), ("adma", "adam")])
def test_get_refuses_a_padded_or_misspelt_name_and_says_which_was_meant(
    name: str, meant: str
) -> None:
    """Case is ignored (``"ADAMW"`` above), whitespace is not stripped: the refusal
    listed the names but left the stray space to be spotted in a repr."""
    with pytest.raises(at.ConfigError, match=rf"did you mean '{meant}'\?\); the registered"):
        optim.get(name)


def test_get_names_no_guess_for_a_name_unlike_any() -> None:
    with pytest.raises(at.ConfigError, match=r"unknown optimizer 'lbfgs'; the registered names"):
        optim.get("lbfgs")


def test_get_refuses_an_unknown_option() -> None:
    with pytest.raises(at.ConfigTypeError, match="momentum"):
        optim.get("adam", 1e-3, momentum=0.9)


async def test_run_inside_a_running_loop_says_to_await() -> None:
    async def main() -> int:
        return 1

    coroutine = main()
    with pytest.raises(at.StateError, match="await"):
        at.run(coroutine)
    assert coroutine.cr_frame is None  # closed, so no "never awaited" warning


def test_string_labels_are_told_to_encode_not_to_cast(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), y=np.array(["cat", "dog", "cat"]))
    with pytest.raises(at.DataError) as caught:
        load(tmp_path / "d.npz")
    assert "np.unique(y, return_inverse=True)" in str(caught.value)
    assert "float32" not in str(caught.value)


@pytest.mark.parametrize("name", ["d.npz", "X.npy"])
def test_a_garbage_file_gets_no_advice_to_unpickle(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"not numpy at all " * 20)
    np.save(tmp_path / "y.npy", np.zeros(3))
    with pytest.raises(at.DataError) as caught:
        load(tmp_path / name, tmp_path / "y.npy" if name.endswith(".npy") else None)
    message = str(caught.value)
    assert "unsafely" not in message
    assert "allow_pickle=" not in message
    assert name in message
