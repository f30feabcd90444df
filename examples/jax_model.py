"""A JAX model trained by asynctrain: a pure ``apply_fn(params, X)``, gradients by jax.grad.

The parameters are a nested dict; asynctrain keeps them flat (``"hidden/w"``), float32,
and hands ``apply_fn`` the nested form. The loss and its gradient are compiled with
``jax.jit`` once per worker and shard shape.

Needs ``pip install 'asynctrain[jax,sklearn]'``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import asynctrain as at


def mlp(params: dict[str, Any], X: jax.Array) -> jax.Array:
    """64 -> 128 (relu) -> 10 scores. Module level: the process and Dask backends pickle it."""
    hidden = jax.nn.relu(X @ params["hidden"]["w"] + params["hidden"]["b"])
    return hidden @ params["out"]["w"] + params["out"]["b"]


def init(key: jax.Array, sizes: tuple[int, int, int] = (64, 128, 10)) -> dict[str, Any]:
    """He-normal weights, zero biases, drawn with jax.random."""
    first, second = jax.random.split(key)
    n_in, n_hidden, n_out = sizes
    return {
        "hidden": {
            "w": jax.random.normal(first, (n_in, n_hidden)) * jnp.sqrt(2.0 / n_in),
            "b": jnp.zeros(n_hidden),
        },
        "out": {
            "w": jax.random.normal(second, (n_hidden, n_out)) * jnp.sqrt(2.0 / n_hidden),
            "b": jnp.zeros(n_out),
        },
    }


async def main(epochs: int = 20) -> float:
    bunch = load_digits()
    data = at.data.Dataset((bunch.data / 16.0).astype(np.float32), bunch.target)
    train, test = data.split(0.25, seed=0)
    model = at.models.JaxModel(mlp, init(jax.random.key(0)), input_shape=(64,))
    print(model, sorted(model.init(np.random.default_rng(0))))
    result = await at.fit(
        model, train, optimizer=at.optim.adam(3e-3), epochs=epochs, batch_size=64, shards=2
    )
    accuracy = float(np.mean(model.predict(result.params, test.X) == test.y))
    print(f"{result.steps} steps in {result.seconds:.1f} s, test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main())
