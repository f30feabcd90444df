"""Messages of every size reach process workers and come back, on both event loops, without
ever blocking the loop: 1 KB, 1 MB and 64 MB both ways, a stopped worker, large fits."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain.backends import ProcessBackend

SIZES = {"1KB": 1 << 10, "1MB": 1 << 20, "64MB": 64 << 20}


def echo(value: Any) -> Any:
    return value


def make(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def checksum(array: np.ndarray) -> int:
    return int(array.sum(dtype=np.uint64))


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_messages_of_every_size_cross_both_ways(size: int) -> None:
    arrays = [make(size, seed) for seed in range(3)]
    async with ProcessBackend(workers=2) as backend:
        echoed = await asyncio.gather(*(backend.run(echo, a) for a in arrays))  # both ways
        made = await backend.run(make, size, 7)  # a small task, a large reply
        summed = await backend.run(checksum, arrays[1])  # a large task, a small reply
    for sent, back in zip(arrays, echoed, strict=True):
        np.testing.assert_array_equal(back, sent)
    np.testing.assert_array_equal(made, make(size, 7))
    assert summed == checksum(arrays[1])


def test_asynctrain_run_sends_a_1mb_argument_and_gets_replies_of_every_size() -> None:
    # The repro: under at.run (uvloop) this never returned.
    async def main() -> tuple[float, list[int]]:
        async with ProcessBackend(workers=1) as backend:
            total = await backend.run(np.sum, np.ones(125_000))
            sizes = [len(await backend.run(make, n, 0)) for n in (20_000, 2_000_000) * 5]
        return float(total), sizes

    total, sizes = at.run(main())
    assert total == 125_000.0
    assert sizes == [20_000, 2_000_000] * 5


def _dataset(n: int, seed: int) -> at.data.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(np.int64)
    return at.data.Dataset(X, y)


async def _fit(backend: str, data: at.data.Dataset, **settings: Any) -> dict[str, np.ndarray]:
    model = at.models.LogisticRegression(4)
    async with at.Trainer(model, backend=backend, workers=2, seed=3, **settings) as trainer:
        result = await trainer.fit(data, epochs=1)
    return dict(result.params)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 131072, "shards": 2},
        {"batch_size": 8192, "shards": 2, "mode": "local", "local_steps": 8},
    ],
    ids=["sync-131072", "local-8x8192"],
)
async def test_fits_whose_tasks_exceed_the_socket_buffer_match_threads(
    settings: dict[str, Any],
) -> None:
    data = _dataset(140_000, seed=1)
    reference = await _fit("thread", data, **settings)
    params = await _fit("process", data, **settings)
    for key, value in reference.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


async def test_a_stopped_worker_never_freezes_the_loop_and_a_cancel_lands() -> None:
    big = make(64 << 20, 0)
    async with ProcessBackend(workers=1) as backend:
        await backend.run(echo, 1)
        (pid,) = backend.pids
        os.kill(pid, signal.SIGSTOP)
        task = asyncio.ensure_future(backend.run(echo, big))
        beats = 0
        for _ in range(20):  # a heartbeat: the loop keeps running while the frame waits
            await asyncio.sleep(0.005)
            beats += 1
        assert beats == 20
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pid not in backend.pids  # killed, although stopped
        np.testing.assert_array_equal(await backend.run(echo, big[:1000]), big[:1000])


async def test_a_large_share_is_allocated_and_copied_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asynctrain.backends import _process

    threads: list[bool] = []
    create = _process.create_shared

    def spy(arrays: Any, slots: int) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return create(arrays, slots)

    monkeypatch.setattr(_process, "create_shared", spy)
    async with ProcessBackend(workers=1) as backend:
        small = await backend.share({"x": np.ones(10)})
        large = await backend.share({"x": np.ones(1 << 18)}, slots=2)  # 4 MB: posix_fallocate
        np.testing.assert_array_equal(large.read(1)["x"], np.ones(1 << 18))
        await backend.release(small)
    assert threads == [True, False]  # the small one on the loop's thread, the large one not
