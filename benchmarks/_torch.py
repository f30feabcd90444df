"""The model bridges: TorchModel (and JaxModel beside it) against plain framework loops.

* ``torch/overhead``: the reference MLP (128-256-10 on the ``mlp`` problem) as an
  ``nn.Sequential``, one epoch through ``TorchModel`` on the inline backend (1 shard) over
  a plain PyTorch loop on the same batches with the same Adam, both on 1 torch thread.
* ``torch/scaling/{thread,process}``: the same model at batch 4096, an epoch with 1
  worker over one with 2 (2 shards either way, so both compute the same thing).
* ``torch/digits``: a small CNN on scikit-learn's 8x8 digits to 97 % test accuracy
  (checked every epoch), asynctrain (thread backend, 2 workers, 2 shards) over the faster
  of plain PyTorch with 1 and with 2 threads; same model, and each side takes its faster
  of the same two settings (batch 64 with Adam 3e-3, batch 256 with Adam 1e-2).
* ``jax/overhead`` and ``jax/scaling/{thread,process}``: the same MLP as a
  ``JaxModel`` against a plain loop of the same jitted gradient and an Adam step.

Each figure's clock starts after a warm-up fit on rows that give every batch and shard
shape of the measured epochs (:func:`warm_up_rows`): JAX compiles once per shape and
process, the plain loop's jitted step (built once per process, as its user would) and
JaxModel's gradient alike, so neither side's measured epochs compile.

Uses only public ``asynctrain`` names. Run alone: ``python -m benchmarks._torch [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import importlib.util
import math
import sys
import time
from typing import Any

import numpy as np

import asynctrain as at
from benchmarks._command import run_alone
from benchmarks._figure import Figure, ratio_figure, skipped_figure
from benchmarks._scale import command, level, repeats

LEARNING_RATE = 1e-3
BATCH = 512  # the trainer's default batch size
SCALING_BATCH = 4096
SAMPLES = {"full": 200_000, "quick": 50_000, "smoke": 4_096}
DIGITS_TARGET = 0.97
DIGITS_EPOCHS = {"full": 60, "quick": 60, "smoke": 1}
# (batch size, Adam learning rate): both sides race with each and count their faster one.
DIGITS_GRID = ((64, 3e-3), (256, 1e-2))


# -- the models ---------------------------------------------------------------------------


def torch_mlp() -> Any:
    """The reference 128-256-10 MLP as an nn.Sequential, seeded."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))


def digits_cnn() -> Any:
    """The CNN of examples/torch_cnn_digits.py, seeded."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(128, 10),
    )


def jax_mlp(params: Any, X: Any) -> Any:
    """The reference MLP for JaxModel: relu(X W0 + b0) W1 + b1."""
    import jax

    hidden = jax.nn.relu(X @ params["W0"] + params["b0"])
    return hidden @ params["W1"] + params["b1"]


def jax_params(module: Any) -> dict[str, np.ndarray]:
    """The torch MLP's parameters laid out for :func:`jax_mlp` (same start for both)."""
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return {
        "W0": weights["0.weight"].T.copy(),
        "b0": weights["0.bias"].copy(),
        "W1": weights["2.weight"].T.copy(),
        "b1": weights["2.bias"].copy(),
    }


def bridge(kind: str) -> Any:
    """A fresh TorchModel or JaxModel of the reference MLP."""
    if kind == "torch":
        return at.models.TorchModel(torch_mlp())
    return at.models.JaxModel(jax_mlp, jax_params(torch_mlp()), input_shape=(128,))


# -- plain framework loops ----------------------------------------------------------------


def torch_step(model: Any, optimizer: Any, data: at.data.Dataset, rows: np.ndarray) -> None:
    """One plain PyTorch step on ``rows`` of ``data``: mean cross-entropy, backward, Adam."""
    import torch

    X = torch.from_numpy(np.take(data.X, rows, axis=0))
    y = torch.from_numpy(np.take(data.y, rows, axis=0))
    optimizer.zero_grad(set_to_none=True)
    loss: Any = torch.nn.functional.cross_entropy(model(X), y)
    loss.backward()
    optimizer.step()


def plain_torch_epoch(module: Any, data: at.data.Dataset, batch: int, threads: int) -> float:
    """Seconds of one epoch of a plain PyTorch loop on asynctrain's batches (seed 0)."""
    import torch

    torch.set_num_threads(threads)
    model = copy.deepcopy(module)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    order = at.data.epoch_order(len(data), seed=0, epoch=0)
    began = time.perf_counter()
    for start, stop in at.data.batch_bounds(len(data), batch):
        rows = order[start:stop]
        torch_step(model, optimizer, data, rows)
    return time.perf_counter() - began


@functools.lru_cache(maxsize=1)
def plain_jax_step() -> Any:
    """The plain loop's jitted step (gradient and Adam), built once per process as a JAX
    user writes it, so a warm-up compiles it as it compiles JaxModel's gradient."""
    import jax
    import jax.numpy as jnp

    def loss(p: Any, X: Any, y: Any) -> Any:
        out = jax_mlp(p, X)
        picked = jnp.take_along_axis(out, y[:, None], axis=1)[:, 0]
        return (jax.nn.logsumexp(out, axis=1) - picked).mean()

    @jax.jit
    def step(p: Any, m: Any, v: Any, t: Any, X: Any, y: Any) -> Any:
        g = jax.grad(loss)(p, X, y)
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        scale = LEARNING_RATE * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree.map(lambda w, a, b: w - scale * a / (jnp.sqrt(b) + 1e-8), p, m, v)
        return p, m, v

    return step


def plain_jax_epoch(params: dict[str, Any], data: at.data.Dataset, batch: int) -> float:
    """Seconds of one epoch of the same jitted gradient and a jitted Adam step."""
    import jax
    import jax.numpy as jnp

    step = plain_jax_step()
    p = {k: jnp.asarray(v) for k, v in params.items()}
    m = jax.tree.map(jnp.zeros_like, p)
    v = jax.tree.map(jnp.zeros_like, p)
    order = at.data.epoch_order(len(data), seed=0, epoch=0)
    bounds = at.data.batch_bounds(len(data), batch)
    began = time.perf_counter()
    for t, (start, stop) in enumerate(bounds, start=1):
        rows = order[start:stop]
        X, y = np.take(data.X, rows, axis=0), np.take(data.y, rows, axis=0)
        p, m, v = step(p, m, v, t, X, y.astype(np.int32))
    wait: Any = jax.block_until_ready
    wait(p)
    return time.perf_counter() - began


def warm_up_rows(data: at.data.Dataset, batch: int, batches: int) -> at.data.Dataset:
    """The first ``batches`` full batches of ``data`` and as many rows as its epoch's last,
    short batch: a warm-up epoch on them meets every batch (and shard) shape the measured
    epochs do, so JAX compiles each before the clock runs, on both sides."""
    rows = batches * batch + len(data) % batch
    return at.data.Dataset(data.X[:rows], data.y[:rows])


# -- asynctrain sides ---------------------------------------------------------------------


async def bridge_epoch(
    kind: str, data: at.data.Dataset, backend: Any, *, batch: int, shards: int
) -> float:
    """Seconds of one epoch of ``fit`` through a bridge, on an open backend."""
    model = bridge(kind)
    optimizer = at.optim.adam(LEARNING_RATE)
    trainer = at.Trainer(model, optimizer, backend=backend, batch_size=batch, shards=shards)
    async with trainer:
        await asyncio.sleep(0)
        began = time.perf_counter()
        await trainer.fit(data, epochs=1)
        return time.perf_counter() - began


def _missing(kind: str) -> str:
    """Why a figure cannot be measured here ("" if it can); JAX's start from torch's MLP."""
    for module in ("torch",) if kind == "torch" else ("torch", "jax"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'asynctrain[{module}]')"
    return ""


async def overhead(kind: str, quick: bool) -> Figure:
    """TorchModel/JaxModel on the inline backend over the plain loop, paired repeats."""
    name = f"{kind}/overhead"
    cmd = command("torch", quick)
    if note := _missing(kind):
        return skipped_figure(name, note, unit="x", reference="-", command=cmd)
    data = at.data.synthetic("mlp", n=SAMPLES[level(quick)], seed=0)
    warm = warm_up_rows(data, BATCH, 4)
    ours, theirs = [], []
    with _one_thread():
        await bridge_epoch(kind, warm, "inline", batch=BATCH, shards=1)
        _plain(kind, warm, BATCH)
        for i in range(repeats(quick)):
            if i % 2:
                theirs.append(_plain(kind, data, BATCH))
                ours.append(await bridge_epoch(kind, data, "inline", batch=BATCH, shards=1))
            else:
                ours.append(await bridge_epoch(kind, data, "inline", batch=BATCH, shards=1))
                theirs.append(_plain(kind, data, BATCH))
    plain = "PyTorch" if kind == "torch" else "JAX (jit, Adam step)"
    return ratio_figure(
        name,
        ours,
        theirs,
        reference=f"plain {plain} loop, same batches, 1 thread",
        target="<= 1.10",
        command=cmd,
        details={"samples": len(data), "batch_size": BATCH},
    )


def _plain(kind: str, data: at.data.Dataset, batch: int) -> float:
    if kind == "torch":
        return plain_torch_epoch(torch_mlp(), data, batch, threads=1)
    return plain_jax_epoch(jax_params(torch_mlp()), data, batch)


@contextlib.contextmanager
def _one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


async def scaling(kind: str, backend_name: str, quick: bool) -> Figure:
    """An epoch at batch 4096 with 1 worker over one with 2 (2 shards both)."""
    name = f"{kind}/scaling/{backend_name}"
    cmd = command("torch", quick)
    if note := _missing(kind):
        return skipped_figure(name, note, unit="x", reference="-", command=cmd)
    data = at.data.synthetic("mlp", n=SAMPLES[level(quick)], seed=0)
    warm = warm_up_rows(data, SCALING_BATCH, 1)
    times: dict[int, list[float]] = {1: [], 2: []}
    for workers in (1, 2):
        backend, _ = at.backends.get_backend(backend_name, workers=workers)
        async with backend:
            await bridge_epoch(kind, warm, backend, batch=SCALING_BATCH, shards=2)
            for _ in range(repeats(quick)):
                seconds = await bridge_epoch(kind, data, backend, batch=SCALING_BATCH, shards=2)
                times[workers].append(seconds)
    return ratio_figure(
        name,
        times[1],
        times[2],
        reference="1 worker / 2 workers, batch 4096, 2 shards",
        target=">= 1.6",
        command=cmd,
        details={"samples": len(data)},
    )


# -- digits CNN, time to 97 % -------------------------------------------------------------


def _digits() -> tuple[at.data.Dataset, at.data.Dataset]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)[:, None]
    return at.data.Dataset(X, bunch.target).split(0.25, seed=0)


class _StopAt(at.Callback):
    def __init__(self, target: float) -> None:
        self.target, self.reached = target, False

    def on_epoch(self, event: at.EpochEvent) -> bool:
        self.reached = event.val_accuracy >= self.target
        return self.reached


async def digits_asynctrain(epochs: int, batch: int, lr: float) -> tuple[float, bool]:
    """Seconds until the digits CNN reaches the target (checked every epoch)."""
    train, test = _digits()
    model = at.models.TorchModel(digits_cnn(), input_shape=(1, 8, 8))
    stop = _StopAt(DIGITS_TARGET)
    trainer = at.Trainer(
        model, at.optim.adam(lr), backend="thread", workers=2, batch_size=batch, shards=2
    )
    async with trainer:
        await asyncio.sleep(0)
        began = time.perf_counter()
        await trainer.fit(train, epochs=epochs, validation=test, callbacks=[stop])
        return time.perf_counter() - began, stop.reached


def digits_torch(epochs: int, threads: int, batch: int, lr: float) -> tuple[float, bool]:
    """The same race in a plain PyTorch loop with ``threads`` threads."""
    import torch

    train, test = _digits()
    torch.set_num_threads(threads)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    X_test, y_test = torch.from_numpy(np.array(test.X)), np.asarray(test.y)
    began = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = at.data.epoch_order(len(train), seed=0, epoch=epoch)
        for start, stop in at.data.batch_bounds(len(train), batch):
            rows = order[start:stop]
            torch_step(model, optimizer, train, rows)
        model.eval()
        with torch.no_grad():
            accuracy = float(np.mean(model(X_test).argmax(1).numpy() == y_test))
        if accuracy >= DIGITS_TARGET:
            return time.perf_counter() - began, True
    return time.perf_counter() - began, False


async def digits(quick: bool) -> list[Figure]:
    """asynctrain's time to 97 % over plain PyTorch's faster thread count."""
    cmd = command("torch", quick)
    name = "torch/digits"
    if note := _missing("torch") or ("" if importlib.util.find_spec("sklearn") else "no sklearn"):
        return [skipped_figure(name, note, unit="x", reference="-", command=cmd)]
    epochs = DIGITS_EPOCHS[level(quick)]
    ours: list[float] = []
    one: list[float] = []
    two: list[float] = []
    reached, smoke = True, level(quick) == "smoke"  # one smoke epoch reaches nothing
    for _ in range(repeats(quick)):
        best: dict[str | int, float] = {"ours": math.inf, 1: math.inf, 2: math.inf}
        for batch, lr in DIGITS_GRID:
            seconds, ok = await digits_asynctrain(epochs, batch, lr)
            best["ours"] = min(best["ours"], seconds if ok or smoke else math.inf)
            for threads in (1, 2):
                seconds, ok = await asyncio.to_thread(digits_torch, epochs, threads, batch, lr)
                best[threads] = min(best[threads], seconds if ok or smoke else math.inf)
        reached = reached and all(math.isfinite(v) for v in best.values())
        ours.append(best["ours"])
        one.append(best[1])
        two.append(best[2])
    faster = one if sorted(one)[len(one) // 2] <= sorted(two)[len(two) // 2] else two
    note = "" if reached else "a side missed 97 % within the epochs"
    return [
        ratio_figure(
            name,
            ours,
            faster,
            reference="plain PyTorch, faster of 1 and 2 threads, same CNN and settings",
            target="<= 1.0",
            command=cmd,
            details={
                "asynctrain": "thread backend, 2 workers, 2 shards",
                "grid": [list(setting) for setting in DIGITS_GRID],
                "torch_1_thread_s": one,
                "torch_2_threads_s": two,
                "asynctrain_s": ours,
            },
            note=note,
        )
    ]


async def run(quick: bool) -> list[Figure]:
    """The bridge figures: overhead, scaling and time to accuracy; JAX beside PyTorch."""
    figures = [await overhead("torch", quick)]
    for backend_name in ("thread", "process"):
        figures.append(await scaling("torch", backend_name, quick))
    figures += await digits(quick)
    figures.append(await overhead("jax", quick))
    for backend_name in ("thread", "process"):
        figures.append(await scaling("jax", backend_name, quick))
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("torch"))
