"""Parameter-shaped dicts on one buffer (asynctrain.optim._flat): the element-wise passes
run once over the buffer and give the bits of the per-array loop (the oracle: the same
optimizer on ordinary dicts)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from asynctrain import optim
from asynctrain.optim import _flat, apply_updates
from asynctrain.optim._flat import FlatArrays, buffers, buffers_in, flat_zeros

SHAPES = {"W": (7, 5), "b": (5,), "s": ()}


def _params(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {k: np.asarray(rng.normal(size=s), np.float32) for k, s in SHAPES.items()}


def _plain(tree: Any) -> Any:
    """``tree`` with every dict an ordinary dict of separate arrays (no shared buffer)."""
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        items = [_plain(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    return tree.copy() if isinstance(tree, np.ndarray) else tree


def test_views_of_one_buffer_in_key_order() -> None:
    arrays = flat_zeros(_params(), 2.0)
    assert isinstance(arrays, FlatArrays)
    assert arrays.flat is not None
    assert list(arrays) == list(SHAPES)
    assert arrays.flat.size == 35 + 5 + 1
    assert all(np.shares_memory(v, arrays.flat) and v.shape == SHAPES[k] for k, v in arrays.items())
    arrays.flat[35:40] = 1.0
    assert (arrays["b"] == 1.0).all()
    assert (arrays["W"] == 2.0).all()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.__setitem__("b", np.ones(5, np.float32)),
        lambda d: d.pop("s"),
        lambda d: d.update(b=np.ones(5, np.float32)),
        lambda d: d.setdefault("new", np.ones(1, np.float32)),
        lambda d: d.__delitem__("W"),
        lambda d: d.popitem(),
        lambda d: d.clear(),
    ],
)
def test_any_change_to_the_entries_forgets_the_buffer(change: Callable[[Any], Any]) -> None:
    arrays = flat_zeros(_params())
    change(arrays)
    assert isinstance(arrays, FlatArrays)
    assert arrays.flat is None
    assert buffers_in((arrays,)) == list(arrays.values())  # then walked like any dict


def test_pickles_and_copies_as_a_plain_dict() -> None:
    arrays = flat_zeros(_params(), 3.0)
    for other in (pickle.loads(pickle.dumps(arrays)), copy.deepcopy(arrays)):
        assert type(other) is dict
        assert other.keys() == arrays.keys()
        assert all(np.array_equal(other[k], arrays[k]) for k in arrays)


def test_mixed_dtypes_or_non_contiguous_arrays_stay_separate() -> None:
    mixed = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float64)}
    strided = {"a": np.zeros((4, 4), np.float32)[:, ::2]}
    for like in (mixed, strided):
        arrays = flat_zeros(like)
        assert type(arrays) is dict
        assert all(v.flags.c_contiguous for v in arrays.values())


def test_buffers_match_across_dicts_or_fall_back_per_key() -> None:
    a, b = flat_zeros(_params()), flat_zeros(_params())
    [(whole_a, whole_b)] = buffers(a, b)
    assert whole_a is a.flat
    assert whole_b is b.flat
    per_key = buffers(a, dict(b))
    assert [t[0].shape for t in per_key] == list(SHAPES.values())


OPTIMIZERS = {
    "adam": lambda: optim.adam(1e-2),
    "sgd_momentum": lambda: optim.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: optim.rmsprop(1e-2),
    "adagrad": lambda: optim.adagrad(1e-1),
    "schedule": lambda: optim.adam(optim.cosine_decay(1e-2, decay_steps=50)),
    "adamw_clipped": lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(1e-2)),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_one_pass_over_the_buffer_gives_the_bits_of_the_per_array_loop(
    make: Callable[[], optim.GradientTransformation],
) -> None:
    opt, rng = make(), np.random.default_rng(1)
    flat_params, plain_params = _params(), _params()
    flat_state, plain_state = opt.init(flat_params), _plain(opt.init(plain_params))
    assert any(type(a) is FlatArrays for a in _dicts(flat_state))
    for _ in range(20):
        grads = {k: np.asarray(rng.normal(size=s), np.float32) for k, s in SHAPES.items()}
        updates, flat_state = opt.update(_on_one_buffer(grads), flat_state, flat_params)
        flat_params = apply_updates(flat_params, updates)
        updates, plain_state = opt.update(dict(grads), plain_state, plain_params)
        plain_params = apply_updates(plain_params, _plain(updates))
    assert isinstance(flat_params, FlatArrays)
    assert flat_params.flat is not None
    for key in SHAPES:
        assert flat_params[key].tobytes() == plain_params[key].tobytes()


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_key"])
def test_passes_in_blocks_give_the_bits_of_passes_over_whole_arrays(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], optim.GradientTransformation], flat: bool
) -> None:
    """Parameters larger than a block (a 300 x 250 float32 weight, 75,000 values, is three
    blocks of at most 32,768) train to the same bits as with no blocks at all (the
    oracle: one pass over each whole array)."""
    shapes = {"W": (300, 250), "b": (250,), "s": ()}
    # One float64 entry keeps every dict per key (no buffer holds two dtypes).
    dtypes = {"W": np.float32, "b": np.float32, "s": np.float32 if flat else np.float64}

    def trained() -> dict[str, np.ndarray[Any, Any]]:
        opt, rng = make(), np.random.default_rng(2)
        params = {k: np.asarray(rng.normal(size=v), dtypes[k]) for k, v in shapes.items()}
        params = _on_one_buffer(params) if flat else params
        state = opt.init(params)
        for _ in range(5):
            grads = {k: np.asarray(rng.normal(size=v), dtypes[k]) for k, v in shapes.items()}
            if flat:
                grads = _on_one_buffer(grads)
            updates, state = opt.update(grads, state, params)
            params = apply_updates(params, updates)
        return params

    blocked = trained()
    assert len(buffers(blocked, blocked)) == (3 if flat else 5)
    monkeypatch.setattr(_flat, "BLOCK_BYTES", 1 << 40)
    assert len(buffers(blocked, blocked)) == (1 if flat else 3)
    whole = trained()
    for key in shapes:
        assert blocked[key].tobytes() == whole[key].tobytes()


def _on_one_buffer(arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    flat = flat_zeros(arrays)
    for key, value in arrays.items():
        np.copyto(flat[key], value)
    return flat


def _dicts(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [tree]
    if isinstance(tree, tuple):
        return [d for item in tree for d in _dicts(item)]
    return []


@pytest.mark.parametrize("flat", [True, False], ids=["buffers", "dicts"])
def test_next_params_is_apply_updates_read_only(flat: bool) -> None:
    # The version the updater publishes: apply_updates' bits (the oracle), every array
    # read-only, the inputs untouched; two buffers of one layout take the one-addition path.
    from asynctrain._engine._update import next_params

    params, updates = _params(0), _params(1)
    if flat:
        params, updates = _flat_copy(params), _flat_copy(updates)
    before = {k: v.copy() for k, v in params.items()}
    expected = apply_updates(_plain(params), _plain(updates))
    new = next_params(params, updates)
    assert isinstance(new, FlatArrays)
    assert new.flat is not None
    assert not new.flat.flags.writeable
    for key, value in expected.items():
        assert new[key].shape == value.shape
        assert new[key].dtype == value.dtype
        assert new[key].tobytes() == value.tobytes()
        assert not new[key].flags.writeable
        assert params[key].tobytes() == before[key].tobytes()


def _flat_copy(arrays: dict[str, np.ndarray[Any, Any]]) -> FlatArrays:
    out = flat_zeros(arrays)
    assert isinstance(out, FlatArrays)
    for key, value in arrays.items():
        out[key][...] = value
    return out


def _adam_by_element(
    settings: tuple[float, float, float, float], count: int, g: Any, mu: Any, nu: Any
) -> None:
    """Adam then the learning rate, in place, one element at a time in numpy scalars of
    the arrays' dtype, each setting cast to that dtype as numpy 2 casts a Python float
    (NEP 50): the oracle for the 0-d operands, rounding after every operation."""
    b1, b2, eps, lr = settings
    cast = g.dtype.type
    square_factor = cast((1.0 - b2) / (1.0 - b1) ** 2)
    correction1, correction2 = cast(1.0 - b1**count), cast(1.0 - b2**count)
    for i in range(g.size):
        scaled = g[i] * cast(1.0 - b1)
        mu[i] = mu[i] * cast(b1) + scaled
        nu[i] = nu[i] * cast(b2) + scaled * scaled * square_factor
        denominator = np.sqrt(nu[i] / correction2) + cast(eps)
        g[i] = mu[i] / denominator / correction1 * cast(-lr)


# b1 = -0.0 right after 0.0: two settings one cache would confuse (the sign of a zero
# factor shows in the bits of the moments).
ADAM_SETTINGS = [(0.9, 0.999, 1e-8, 1e-3), (0.0, 0.5, 1e-3, 0.1), (-0.0, 0.5, 1e-3, 0.1)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=["default", "b1=0", "b1=-0"])
def test_settings_taken_as_0d_arrays_give_the_bits_of_python_floats(
    dtype: Any, settings: tuple[float, float, float, float]
) -> None:
    if dtype is np.float16 and settings[2] < 1e-4:  # 1e-8 is 0 in float16: refused
        settings = (*settings[:2], 1e-4, settings[3])
    b1, b2, eps, lr = settings
    opt = optim.adam(lr, b1=b1, b2=b2, eps=eps)
    rng = np.random.default_rng(3)
    params = _on_one_buffer({k: np.zeros(s, dtype) for k, s in SHAPES.items()})
    state = opt.init(params)
    size = sum(int(np.prod(shape)) for shape in SHAPES.values())
    mu, nu = np.zeros(size, dtype), np.zeros(size, dtype)
    with np.errstate(all="ignore"):  # float16 squares overflow: the bits of inf count too
        for count in range(1, 30):
            scale = 10.0 ** rng.integers(-8, 8)
            grads = {k: np.asarray(rng.normal(size=s) * scale, dtype) for k, s in SHAPES.items()}
            expected = np.concatenate([g.ravel() for g in grads.values()])
            _adam_by_element(settings, count, expected, mu, nu)
            updates, state = opt.update(_on_one_buffer(grads), state, params)
            assert updates.flat.tobytes() == expected.tobytes()
            assert state[0].mu.flat.tobytes() == mu.tobytes()
            assert state[0].nu.flat.tobytes() == nu.tobytes()


@pytest.mark.parametrize("value", [0.0, -0.0, 0.1, -2.5])
def test_constants_keep_the_value_and_the_sign_of_a_zero(value: float) -> None:
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for _ in range(2):  # the second time from the cache, if cached
            (got,) = _flat.constants(dtype, value)
            assert got.shape == ()
            assert got.dtype == dtype
            assert got.tobytes() == np.array(value, dtype).tobytes()
    with pytest.raises(ValueError, match="read-only"):
        _flat.constants(np.dtype(np.float32), 0.5)[0][()] = 1.0
