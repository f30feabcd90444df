"""The quick paths of a fit's checkpoints hold what the general ones hold, bit for bit.

* A small file is zipped in memory and written with one call; a large one is streamed.
  Both make the same bytes, and both leave the previous file intact when cancelled or
  out of space.
* A snapshot is taken on the event loop when no update is in flight (no hop to the update
  thread); it equals one taken on the update thread, a fit resumed from it ends with the
  bits of the uninterrupted run, and an update in flight is waited for.
* The SHA-256 of an epoch's order is computed once per epoch of a fit, and only mid-epoch
  (an epoch boundary's resume continues no order); the oracle recomputes it with numpy.
* The final checkpoint of a fit is started at its last epoch's end, before the fit's
  resources are released, and holds the fit's last state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reliability import FullDisk, softmax_trainer, state_bits

import asynctrain as at
from asynctrain._checkpoint import Checkpoint, list_checkpoints, read, temporaries
from asynctrain._checkpoint import _content as checkpoint_content
from asynctrain._checkpoint import _format as checkpoint_format
from asynctrain._checkpoint import _session as checkpoint_session
from asynctrain._checkpoint._format import SaveCancelled, write
from asynctrain._checkpoint._session import Writer
from asynctrain._cli import main
from asynctrain._engine._update import Updater
from asynctrain.data import synthetic
from asynctrain.optim._tree import leaves


@pytest.fixture
def data() -> at.data.Dataset:
    return synthetic("softmax", n=500, seed=2)


def _arrays(scale: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "params/W": rng.standard_normal((64 * scale, 32)).astype(np.float32),
        "params/b": np.arange(32, dtype=np.float64),
        "opt_state/0": np.array(3, dtype=np.int64),
    }


def _streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_format, "IN_MEMORY", -1)


@pytest.mark.parametrize("scale", [1, 200])  # 8 KiB and 1.6 MiB of arrays
def test_in_memory_and_streamed_files_are_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: int
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # the members' timestamps
    arrays = _arrays(scale)
    write(tmp_path / "memory.ckpt", {"note": "same"}, arrays)
    monkeypatch.setattr(checkpoint_format, "IN_MEMORY", 10 << 20)
    write(tmp_path / "forced-memory.ckpt", {"note": "same"}, arrays)
    _streamed(monkeypatch)
    write(tmp_path / "streamed.ckpt", {"note": "same"}, arrays)
    content = (tmp_path / "streamed.ckpt").read_bytes()
    assert (tmp_path / "memory.ckpt").read_bytes() == content
    assert (tmp_path / "forced-memory.ckpt").read_bytes() == content
    manifest, back = read(tmp_path / "memory.ckpt")
    assert manifest["note"] == "same"
    assert {k: v.tobytes() for k, v in back.items()} == {k: v.tobytes() for k, v in arrays.items()}


@pytest.mark.parametrize("path", ["memory", "streamed"])
@pytest.mark.parametrize("failure", ["enospc", "cancel-mid-file"])
def test_a_failed_write_on_either_path_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, failure: str
) -> None:
    target = tmp_path / "a.ckpt"
    write(target, {"note": "old"}, _arrays())
    before = target.read_bytes()
    if path == "streamed":
        _streamed(monkeypatch)
    cancel = threading.Event()
    if failure == "enospc":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), 300))
        expected: type[Exception] = at.CheckpointError
    else:
        real_sink_write = checkpoint_format._HashingSink.write

        def cancelled_after_the_first_array(sink: Any, chunk: Any) -> int:
            written = int(real_sink_write(sink, chunk))
            cancel.set()
            return written

        sink = checkpoint_format._HashingSink
        monkeypatch.setattr(sink, "write", cancelled_after_the_first_array)
        expected = SaveCancelled
    with pytest.raises(expected) as caught:
        write(target, {"note": "new"}, _arrays(2), cancel=cancel)
    if failure == "enospc":
        assert "No space left on device" in str(caught.value)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert read(target)[0]["note"] == "old"
    assert temporaries(tmp_path) == []


def _record_snapshot_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    threads: list[str] = []
    real = checkpoint_content.snapshot

    def recorded(subject: Any, state: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(subject, state)

    monkeypatch.setattr(checkpoint_session, "snapshot", recorded)
    return threads


def _same_run(a: Checkpoint, b: Checkpoint) -> None:
    for section in ("state", "rng", "config", "model"):
        assert a.manifest[section] == b.manifest[section], section
    assert a.manifest["optimizer"] == b.manifest["optimizer"]
    assert a.arrays.keys() == b.arrays.keys()
    for key, value in a.arrays.items():
        assert value.dtype == b.arrays[key].dtype, key
        assert value.tobytes() == b.arrays[key].tobytes(), key


async def test_a_snapshot_on_the_loop_equals_one_on_the_update_thread(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = _record_snapshot_threads(monkeypatch)
    options = {"epochs": 2, "checkpoint_every": 2, "keep": None}
    await softmax_trainer(backend="thread").fit(data, checkpoint_dir=tmp_path / "loop", **options)
    on_loop, threads[:] = list(threads), []
    monkeypatch.setattr(checkpoint_session, "COPIED_ON_LOOP", -1)
    await softmax_trainer(backend="thread").fit(data, checkpoint_dir=tmp_path / "hop", **options)
    loop_thread = threading.current_thread().name
    assert on_loop == [loop_thread] * 5  # steps 2, 4, 6, 8 and 10 (the end)
    assert len(threads) == 5
    assert all(name.startswith("asynctrain-update") for name in threads)
    quick, general = list_checkpoints(tmp_path / "loop"), list_checkpoints(tmp_path / "hop")
    assert [p.name for p in quick] == [p.name for p in general]
    for a, b in zip(quick, general, strict=True):
        _same_run(Checkpoint.read(a), Checkpoint.read(b))


class InterruptAt(at.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step(self, event: at.StepEvent) -> None:
        if event.step + 1 == self.steps:
            raise RuntimeError(f"interrupted after {self.steps} steps")


@pytest.mark.parametrize("interrupt", [3, 7])  # resumed mid-epoch 0, and mid-epoch 1
async def test_a_fit_resumed_from_a_loop_snapshot_ends_with_the_reference_bits(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch, interrupt: int
) -> None:
    reference = softmax_trainer(backend="thread")
    await reference.fit(data, epochs=2)
    threads = _record_snapshot_threads(monkeypatch)
    options: dict[str, Any] = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 2}
    with pytest.raises(RuntimeError, match="interrupted"):
        await softmax_trainer(backend="thread").fit(
            data, callbacks=[InterruptAt(interrupt)], **options
        )
    assert threads
    assert set(threads) == {threading.current_thread().name}
    assert Checkpoint.read(tmp_path).counter("batch") > 0  # taken mid-epoch
    resumed = softmax_trainer(backend="thread")
    await resumed.fit(data, resume=True, **options)
    assert state_bits(resumed.state) == state_bits(reference.state)


async def test_an_update_in_flight_is_waited_for_by_the_snapshot() -> None:
    trainer = softmax_trainer()
    subject = trainer._checkpoint_subject()
    updater = Updater(trainer.optimizer, subject.state, nonfinite="raise", inline=False)
    moments = [a for _, a in leaves(updater.state.opt_state)]
    started, go = threading.Event(), threading.Event()

    def update_in_place() -> None:
        started.set()
        assert go.wait(10)
        for array in moments:
            array += 1

    try:
        assert updater.idle
        update = asyncio.create_task(updater.call(update_in_place))
        await asyncio.sleep(0)
        assert not updater.idle
        assert started.wait(10)
        with Writer() as writer:
            snapshot = asyncio.create_task(
                writer.snapshot(dataclasses.replace(subject, updater=updater))
            )
            await asyncio.sleep(0.05)
            assert not snapshot.done()  # it waits behind the update ...
            go.set()
            await update
            payload = await snapshot
        assert updater.idle
        pairs = zip(payload.opt_arrays, moments, strict=True)
        assert all((copy == array).all() for copy, array in pairs)
        assert any(array.any() for array in moments)  # ... and holds what it changed
    finally:
        go.set()
        updater.close()


async def test_a_cancelled_call_leaves_the_updater_idle() -> None:
    trainer = softmax_trainer()
    updater = Updater(trainer.optimizer, trainer.state, nonfinite="raise", inline=False)
    started, go = threading.Event(), threading.Event()

    def blocked() -> None:
        started.set()
        assert go.wait(10)

    try:
        call = asyncio.create_task(updater.call(blocked))
        await asyncio.sleep(0)
        assert started.wait(10)
        call.cancel()
        await asyncio.sleep(0.02)
        assert not updater.idle  # the call has started: the cancel waits for it
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert updater.idle
    finally:
        go.set()
        updater.close()


def _order_sha256(samples: int, seed: int, epoch: int) -> str:
    order = np.random.default_rng([seed, epoch]).permutation(samples).astype(np.int64)
    return hashlib.sha256(order.tobytes()).hexdigest()


async def test_the_order_digest_is_computed_once_an_epoch_and_only_mid_epoch(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: list[tuple[int, int, int]] = []
    real = checkpoint_content.order_sha256

    def counted(samples: int, seed: int, epoch: int) -> str:
        computed.append((samples, seed, epoch))
        return real(samples, seed, epoch)

    monkeypatch.setattr(checkpoint_session, "order_sha256", counted)
    await softmax_trainer(backend="thread").fit(
        data, epochs=2, checkpoint_dir=tmp_path, checkpoint_every=2, keep=None
    )
    assert computed == [(500, 1, 0), (500, 1, 1)]  # 5 steps an epoch: saves 2, 4 and 6, 8
    for path in list_checkpoints(tmp_path):
        checkpoint = Checkpoint.read(path)
        rng, batch = checkpoint.section("rng"), checkpoint.counter("batch")
        expected = _order_sha256(500, 1, checkpoint.counter("epoch")) if batch else None
        assert rng["order_sha256"] == expected, path.name
        assert rng["samples"] == 500
        checkpoint.check_data(500)


async def test_the_final_checkpoint_starts_before_the_fit_lets_go_of_its_resources(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = softmax_trainer(backend="thread")
    running: list[tuple[int, bool]] = []
    real = checkpoint_content.snapshot

    def recorded(subject: Any, state: Any) -> Any:
        running.append((state.step, trainer._running))
        return real(subject, state)

    monkeypatch.setattr(checkpoint_session, "snapshot", recorded)
    result = await trainer.fit(data, epochs=2, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert running == [(3, True), (6, True), (9, True), (10, True)]  # the end: still running
    final = Checkpoint.read(tmp_path)
    assert (final.counter("step"), final.counter("epoch"), final.counter("batch")) == (10, 2, 0)
    assert result.steps == 10
    fresh = softmax_trainer()
    await fresh.load(tmp_path)
    assert state_bits(fresh.state) == state_bits(trainer.state)


async def test_inspect_shows_the_order_digest_mid_epoch_only(
    tmp_path: Path, data: at.data.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    await softmax_trainer().fit(data, checkpoint_dir=tmp_path, checkpoint_every=2, keep=None)
    middle, end = tmp_path / "step-000000000004.ckpt", tmp_path / "step-000000000005.ckpt"
    assert main(["inspect", str(middle)]) == 0
    digest = _order_sha256(500, 1, 0)
    assert f"next batch 4; 500 samples, order {digest[:12]}…" in capsys.readouterr().out
    assert main(["inspect", str(end)]) == 0
    out = capsys.readouterr().out
    assert "next batch 0; 500 samples\n" in out
    assert ", order " not in out
