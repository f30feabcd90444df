"""Train on a Dask cluster and get the same bits as on one machine.

With no address, DaskBackend starts a LocalCluster of worker processes on this event loop,
listening on 127.0.0.1 only; pass a scheduler address (``tls://host:8786``) to use a real
cluster. See docs/scaling-out.md.

Run: python examples/dask_cluster.py [scheduler-address]
"""

from __future__ import annotations

import sys

import asynctrain as at
from asynctrain.backends import DaskBackend


async def fit(backend: str | at.backends.Backend, data: at.data.Dataset) -> at.FitResult:
    model = at.models.SoftmaxRegression(data.n_features, 10)
    trainer = at.Trainer(model, at.optim.adam(1e-2), backend=backend, batch_size=1024, seed=0)
    return await trainer.fit(data, epochs=2)


async def main(address: str | None = None) -> bool:
    data = at.data.synthetic("softmax", n=8_000, seed=0)
    async with DaskBackend(address, workers=None if address else 2) as backend:
        print(f"training on {backend!r}")
        on_dask = await fit(backend, data)
    in_process = await fit("inline", data)
    same = all((on_dask.params[k] == in_process.params[k]).all() for k in in_process.params)
    print(
        f"{on_dask.steps} steps, loss {on_dask.history[-1].loss:.3f}; same bits as inline: {same}"
    )
    return same


if __name__ == "__main__":  # Dask starts worker processes by spawning: keep this guard
    at.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
