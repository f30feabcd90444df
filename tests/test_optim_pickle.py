"""Optimizers and schedules pickle (the process backend ships them to its workers)."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest

from asynctrain import optim

SCHEDULES: dict[str, Callable[[], optim.Schedule]] = {
    "constant": lambda: optim.constant_schedule(0.1),
    "step_decay": lambda: optim.step_decay(0.1, every=2, factor=0.5),
    "cosine_decay": lambda: optim.cosine_decay(0.1, decay_steps=5, alpha=0.1),
    "linear_warmup": lambda: optim.linear_warmup(0.1, warmup_steps=2),
    "linear_warmup_then": lambda: optim.linear_warmup(
        0.1, warmup_steps=2, then=optim.cosine_decay(0.1, decay_steps=3)
    ),
    "warmup_cosine_decay": lambda: optim.warmup_cosine_decay(
        0.1, warmup_steps=2, decay_steps=6, end_value=0.01
    ),
}

OPTIMIZERS: dict[str, Callable[[], optim.GradientTransformation]] = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd_momentum": lambda: optim.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optim.adam(1e-2),
    "adamw": lambda: optim.adamw(1e-2, weight_decay=0.1),
    "adagrad": lambda: optim.adagrad(0.1),
    "rmsprop": lambda: optim.rmsprop(1e-2, momentum=0.5),
    "adam_scheduled": lambda: optim.adam(
        optim.warmup_cosine_decay(0.1, warmup_steps=2, decay_steps=6)
    ),
    "sgd_scheduled": lambda: optim.sgd(optim.step_decay(0.1, every=2, factor=0.5)),
    "chain": lambda: optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.add_decayed_weights(0.01),
        optim.scale_by_rms(),
        optim.trace(0.5),
        optim.scale(2.0),
        optim.scale_by_adagrad(),
        optim.scale_by_adam(),
        optim.scale_by_learning_rate(optim.constant_schedule(0.1)),
    ),
}


def _run(opt: optim.GradientTransformation, steps: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    state = opt.init(params)
    for _ in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_round_trips_through_pickle(name: str) -> None:
    opt = OPTIMIZERS[name]()
    copy = pickle.loads(pickle.dumps(opt))
    assert repr(copy) == repr(opt)
    expected, got = _run(OPTIMIZERS[name]()), _run(copy)
    for key in expected:
        assert got[key].tobytes() == expected[key].tobytes(), key


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_round_trips_through_pickle(name: str) -> None:
    schedule = SCHEDULES[name]()
    copy = pickle.loads(pickle.dumps(schedule))
    assert [copy(s) for s in range(10)] == [schedule(s) for s in range(10)]
    assert repr(optim.sgd(copy)) == repr(optim.sgd(schedule))


def test_optimizer_state_pickles_mid_run() -> None:
    opt = optim.adam(1e-2)
    params = {"w": np.ones(3)}
    state = opt.init(params)
    _, state = opt.update({"w": np.full(3, 0.5)}, state, params)
    restored = pickle.loads(pickle.dumps(state))
    a, _ = opt.update({"w": np.ones(3)}, state, params)
    b, _ = opt.update({"w": np.ones(3)}, restored, params)
    assert a["w"].tobytes() == b["w"].tobytes()
