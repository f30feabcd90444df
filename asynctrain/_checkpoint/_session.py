"""Checkpoints in a running trainer: save and load off the loop, resume and save during fit.

Disk work runs on one writer thread per operation or fit (``asynctrain-checkpoint``); the
copy of the state it writes is taken where updates run (the updater), so it is always
one whole committed step. During a fit a write overlaps the following steps; the next save
(or the end of the fit) waits for it first, and a failed write stops the fit with its
:class:`~asynctrain.CheckpointError`. Cancelling stops a write within one 16 MiB chunk
(or before its rename), removes its temporary file and waits for the thread before
``CancelledError`` propagates; a fit that fails otherwise lets its write in flight land.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from asynctrain._checkpoint._content import (
    Checkpoint,
    OrderDigest,
    Payload,
    Subject,
    callback_keys,
    callback_states,
    checkpoint_name,
    checkpoint_step,
    copied_bytes,
    encode_state,
    fit_records,
    is_checkpoint_name,
    list_checkpoints,
    order_sha256,
    snapshot,
    write,
)
from asynctrain._checkpoint._format import SaveCancelled, sweep
from asynctrain._checkpoint._lock import LOCK_NAME, DirectoryLock, in_use
from asynctrain._checks import check_int
from asynctrain._engine._update import TrainState
from asynctrain._events import Event, StepEvent
from asynctrain._exceptions import AsyncTrainError, CheckpointError, ConfigError, ConfigTypeError
from asynctrain._offloop import await_without_orphans, off_loop
from asynctrain.data import steps_per_epoch

T = TypeVar("T")
PathLike = str | os.PathLike[str]
COPIED_ON_LOOP = 1 << 20
"""A snapshot that copies at most this many bytes (tens of microseconds) is taken on the
event loop when no update is in flight, instead of waiting for a hop to the update thread
and back (which, on a busy machine, waits for that thread to be scheduled)."""
Resume = bool | str
"""``fit``'s ``resume``: False, True (everything) or ``"params"`` (parameters only)."""


def restored_settings(checkpoint: Checkpoint, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the checkpoint's trainer settings where not given.

    Raises:
        CheckpointError: the checkpoint's settings are not ones a Trainer accepts.
    """
    found = checkpoint.settings()
    mode = options.get("mode", found.get("mode"))
    if not isinstance(mode, str):  # a mode object holds its options
        found = {k: v for k, v in found.items() if k not in ("mode", "local_steps", "staleness")}
    elif mode != found.get("mode"):  # another mode: the checkpoint's options are not its
        found = {k: v for k, v in found.items() if k not in ("local_steps", "staleness")}
    return found | options


def checked_options(
    directory: PathLike | None, *, every: int | None, keep: int | None, resume: Resume
) -> tuple[Path | None, int | None, int | None]:
    """``fit``'s checkpoint options, checked: the directory as a Path, ``every``, ``keep``.

    Raises:
        ConfigError, ConfigTypeError: a bad option, or one that needs a directory.
    """
    if not (isinstance(resume, bool) or resume == "params"):
        raise ConfigTypeError(f'resume must be True, False or "params", got {resume!r}')
    if directory is None and (every is not None or resume):
        raise ConfigError(
            "checkpoint_every and resume need a checkpoint_dir; pass checkpoint_dir=..."
        )
    return (
        None if directory is None else Path(directory),
        None if every is None else check_int("checkpoint_every", every),
        None if keep is None else check_int("keep", keep),
    )


class Writer:
    """One ``asynctrain-checkpoint`` thread, awaited without orphans; see the module doc."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="asynctrain-checkpoint"
        )

    def submit(self, fn: Callable[..., T], /, *args: Any) -> concurrent.futures.Future[T]:
        """Start ``fn(*args)`` on the writer thread."""
        return self._executor.submit(fn, *args)

    async def wait(self, future: concurrent.futures.Future[T]) -> T:
        """Await ``future``; if cancelled, stop the write and wait for the thread first."""
        return await await_without_orphans(future, on_cancel=self.cancel.set)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread and return its result."""
        return await off_loop(fn, *args, executor=self._executor, on_cancel=self.cancel.set)

    async def snapshot(self, subject: Subject) -> Payload:
        """A consistent copy of ``subject``'s committed state: where updates run, or on
        the loop when none is in flight and the copy is small (:data:`COPIED_ON_LOOP`)."""
        updater = subject.updater
        if updater is None:  # not open: nothing else changes the state
            return await self.run(snapshot, subject, subject.state)
        if updater.idle and copied_bytes(updater.state) <= COPIED_ON_LOOP:
            return snapshot(subject, updater.state)  # no await: no update can interleave
        return await updater.call(lambda: snapshot(subject, updater.state))

    def close(self) -> None:
        """Stop the thread; call once its last work is done (the join is then immediate)."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CheckpointSession:
    """What ``fit`` does with ``checkpoint_dir``, ``checkpoint_every``, ``keep`` and ``resume``.

    Saves after every ``every``-th step (a step that ends an epoch is saved after the
    epoch's validation, so the file holds the epoch boundary), at every epoch's end when
    ``every`` is None, and at the end of the fit; keeps the ``keep`` latest files.

    The trainer is reached only through ``subject`` (a fresh :class:`Subject` of it, for
    each use), ``current`` (its committed :class:`TrainState`) and ``restore`` (which
    sets its state, the feature names and the rows of the data trained on).
    Each save also keeps the states of the fit's ``callbacks`` (their ``state_dict()``,
    taken on the loop between events); a full resume hands them back through
    :meth:`restore_callbacks`, once their ``on_fit_start`` has run.

    Raises:
        ConfigError, ConfigTypeError: a bad option, before any work starts.
    """

    def __init__(
        self,
        directory: PathLike | None,
        *,
        every: int | None,
        keep: int | None,
        resume: Resume,
        subject: Callable[[], Subject],
        current: Callable[[], TrainState],
        restore: Callable[[TrainState, tuple[str, ...] | None, int | None], None],
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.directory, self.every, self.keep = checked_options(
            directory, every=every, keep=keep, resume=resume
        )
        self.subject, self.current, self.restore = subject, current, restore
        self.resume_latest = bool(resume)
        self.params_only = resume == "params"
        self._writer: Writer | None = None
        self._lock: DirectoryLock | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        self._due = False
        self._saved_step = -1
        self._last_epoch = -1  # the epoch count the fit ends at (set by resume)
        self._seen_step = 0  # the committed step at the last event (set by resume)
        # An epoch's order digest: computed on the writer by its first mid-epoch save only.
        self._digest: OrderDigest = functools.lru_cache(maxsize=1)(order_sha256)
        self.callbacks = list(callbacks)
        self._resumed: Checkpoint | None = None
        self.resumed_stopped = False
        """A full resume found the run stopped early by a callback: nothing is left."""

    async def __aenter__(self) -> Self:
        if self.directory is not None:
            subject = self.subject()
            encode_state(subject.optimizer, subject.state.opt_state, [])  # plain data?
            self._lock = DirectoryLock(self.directory)
            self._writer = Writer()
            fresh_at = None if self.resume_latest else subject.state.step
            try:
                await self._writer.run(_prepare_directory, self._lock, fresh_at)
            except BaseException:
                self._writer.close()  # the thread is done: the lock is held or not
                self._lock.release()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A write in flight is abandoned when the fit is cancelled (cancelling is prompt)
        # and otherwise lands: a fit that failed keeps its latest checkpoint.
        if self._writer is None:
            return
        try:
            if self._pending is not None:
                if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                    self._writer.cancel.set()
                await self._drain_behind(exc)
        finally:
            self._writer.close()
            if self._lock is not None:
                self._lock.release()

    async def _drain_behind(self, exc: BaseException | None) -> None:
        try:
            await self._drain()
        except SaveCancelled:
            pass
        except CheckpointError as failed:
            if exc is None:
                raise
            exc.add_note(f"and a checkpoint write failed: {failed}")

    async def resume(self, epochs: int, data: object) -> int:
        """Restore the latest checkpoint if asked; return the epochs left to train.

        With ``resume``, ``epochs`` counts every epoch of the run, restored or not; a
        run a callback stopped early has none left (a full resume of it, as the rerun of
        a finished run, returns at once with its state).
        """
        if self._writer is None:
            return epochs
        if self.resume_latest:
            await self._restore_latest(data)
            epochs = 0 if self.resumed_stopped else max(0, epochs - self.current().epoch)
        self._last_epoch = self.current().epoch + epochs
        self._seen_step = self.current().step
        return epochs

    async def _restore_latest(self, data: object) -> None:
        assert self._writer is not None
        found = await self._writer.run(list_checkpoints, self.directory)
        if not found:
            return
        checkpoint = await self._writer.run(Checkpoint.read, found[-1])
        samples = _samples_of(data)
        if samples is not None:
            await self._writer.run(checkpoint.check_data, samples)
        subject, params_only = self.subject(), self.params_only
        state = await self._writer.run(
            lambda: checkpoint.train_state(subject, params_only=params_only)
        )
        self.restore(state, checkpoint.feature_names, checkpoint.samples)
        self._saved_step = state.step
        self._resumed = None if params_only else checkpoint
        # resume="params" starts a new run from the parameters: it trains on.
        self.resumed_stopped = not params_only and checkpoint.stopped_early

    def restore_callbacks(self) -> None:
        """Hand each callback the state it kept in the checkpoint resumed from (its
        ``load_state_dict``); nothing without a full resume. A state kept by a callback
        the fit no longer has is left alone.

        Raises:
            CheckpointError: a callback refused its state (naming it).
        """
        if self._resumed is None:
            return
        states = self._resumed.callback_states()
        for key, callback in zip(callback_keys(self.callbacks), self.callbacks, strict=True):
            load = getattr(callback, "load_state_dict", None)
            if key in states and load is not None:
                try:
                    load(states[key])
                except (ValueError, TypeError, KeyError, AsyncTrainError) as exc:
                    raise CheckpointError(
                        f"{self._resumed.path}: {key} could not take back its state: {exc}"
                    ) from exc

    async def after(self, event: Event) -> None:
        """Save if ``event`` ends a checkpoint interval or the fit's last epoch (so the
        final write overlaps the fit's teardown); raise a failed earlier save's error."""
        if self._writer is None:
            return
        if self._pending is not None and self._pending.done():
            await self._drain()
        state = self.current()  # once a step: not a whole Subject
        if isinstance(event, StepEvent):
            # The local mode commits a round of steps at once and then reports each: the
            # state is saved once, at the round that reaches a multiple of ``every``.
            seen, self._seen_step = self._seen_step, state.step
            if self.every is not None and state.step // self.every > seen // self.every:
                if state.batch < self._steps_per_epoch():
                    await self._save()
                else:
                    self._due = True
        elif self._due or self.every is None or state.epoch == self._last_epoch:
            self._due = False
            await self._save()

    async def finish(self, stopped: bool = False) -> None:
        """Save the final state (unless just saved) and wait for every write to land.

        ``stopped``: a callback stopped the fit; the final checkpoint records it (saved
        again if need be), so a resume of the run returns at once instead of training on.
        """
        if self._writer is None:
            return
        await self._drain()
        if stopped or self.subject().state.step != self._saved_step:
            await self._save(stopped=stopped)
            await self._drain()

    async def _save(self, *, stopped: bool = False) -> None:
        assert self._writer is not None
        assert self.directory is not None
        await self._drain()
        payload = await self._writer.snapshot(self.subject())
        payload = payload._replace(callbacks=callback_states(self.callbacks), stopped_early=stopped)
        path = self.directory / checkpoint_name(payload.state.step)
        self._pending = self._writer.submit(
            write_and_prune, path, payload, self._writer.cancel, self.keep, self._digest
        )
        self._saved_step = payload.state.step

    async def _drain(self) -> None:
        future, self._pending = self._pending, None
        if future is not None:
            assert self._writer is not None
            await self._writer.wait(future)

    def _steps_per_epoch(self) -> int:
        subject = self.subject()
        return steps_per_epoch(subject.samples or 1, subject.config.batch_size)


def write_and_prune(
    path: Path,
    payload: Payload,
    cancel: threading.Event,
    keep: int | None = None,
    digest: OrderDigest = order_sha256,
) -> None:
    """Write ``payload`` to ``path``; then keep only the ``keep`` latest checkpoints there
    (``digest``: as :func:`~._content.write`'s).

    Raises:
        CheckpointError: the write failed, or an older checkpoint could not be removed
            (after trying the others; ``path`` is written then).
    """
    write(path, payload, cancel=cancel, digest=digest)
    if keep is None:
        return
    failed: OSError | None = None
    for old in list_checkpoints(path.parent)[:-keep]:
        if old != path:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # EPERM, EACCES, EROFS, ...: the others are still tried
                failed = failed or exc
    if failed is not None:
        raise CheckpointError(
            f"wrote checkpoint {path} but could not remove the older {failed.filename} to "
            f"keep the {keep} latest: {failed.strerror or failed}; make it removable, or "
            "pass keep=None to keep every checkpoint"
        ) from failed


def _prepare_directory(lock: DirectoryLock, fresh_at: int | None) -> None:
    """Lock the directory and sweep dead writers' temporaries.

    A fit that does not resume (``fresh_at``: its trainer's step) is refused a directory
    whose latest checkpoint lies further on, from another run: this fit's files would
    never be the latest, so a resume, ``restore`` or ``asynctrain predict`` of the
    directory would take that run's, one of the same step would be overwritten, and
    ``keep`` would prune this fit's. A trainer fitting again in its own directory is
    already at its latest step and goes on.
    """
    lock.acquire()
    sweep(lock.directory)
    if fresh_at is None:
        return
    found = list_checkpoints(lock.directory)
    if found and checkpoint_step(found[-1]) > fresh_at:
        raise CheckpointError(
            f"checkpoint_dir {lock.directory} holds the checkpoints of another run, up to "
            f"{found[-1].name}, while this fit starts at step {fresh_at}; pass resume=True "
            'to continue that run (resume="params" for its parameters only), or give this '
            "fit an empty directory"
        )


def _samples_of(data: Any) -> int | None:
    """The rows of ``data`` (a Dataset, or the X of a tuple), read without a scan; None
    when it does not tell (the fit then refuses the data itself)."""
    X = data[0] if isinstance(data, tuple) and data else data
    try:
        return len(X)
    except TypeError:  # scipy.sparse: "length is ambiguous", but its shape tells
        shape = getattr(X, "shape", None)
        if isinstance(shape, tuple) and shape and isinstance(shape[0], int):
            return shape[0]
        return None


def save_to(
    path: PathLike, payload: Payload, cancel: threading.Event, *, reserved: Path | None = None
) -> Path:
    """Write ``payload`` to ``path``, or into it under its step's name if it is a directory.

    ``reserved``: the checkpoint_dir of the fit running meanwhile, whose checkpoints
    (``step-<n>.ckpt``) are the fit's own.

    Raises:
        CheckpointError: ``path`` ends in a separator (it names a directory) but is no
            directory: ``Path`` would drop the separator and write a file of that name;
            ``path`` is (or would write) a checkpoint of ``reserved``, or of the
            checkpoint_dir of another running fit; or it would replace a fit's
            checkpoint that keeps what this one does not.
    """
    target = Path(path)
    if target.is_dir():
        target /= checkpoint_name(payload.state.step)
        return save_to(target, payload, cancel, reserved=reserved)
    if is_checkpoint_name(target.name):
        if reserved is not None:
            _refuse_fit_directory(target, reserved)
        _refuse_locked(target)
        _refuse_fit_checkpoint(target)
    text = os.fspath(path)
    if text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep)):
        raise CheckpointError(
            f"cannot save to {text}: it ends in a separator, so it names a directory, and "
            f"{target} is none; create the directory first, or name the file to write "
            f"(e.g. {target / 'latest.ckpt'})"
        )
    write_and_prune(target, payload, cancel)
    return target


def refuse_reserved(path: PathLike, reserved: Path | None) -> None:
    """Refuse now a save to ``path`` that :func:`save_to` would refuse for lying in
    ``reserved``, the running fit's checkpoint_dir: a ``step-<n>.ckpt`` there, or that
    directory itself (a save into it writes one), whatever its step.

    Raises:
        CheckpointError: as :func:`save_to` would, naming the directory.
    """
    target = Path(path)
    if target.is_dir():
        target /= checkpoint_name(0)
    if reserved is not None and is_checkpoint_name(target.name):
        _refuse_fit_directory(target, reserved)


def _refuse_fit_directory(target: Path, directory: Path) -> None:
    """Refuse ``target`` if it lies in ``directory``, the running fit's checkpoint_dir.

    Such a file holds no callbacks' states (nor anything else only the fit's own saves
    record), yet may be the directory's latest checkpoint, which a resume then takes: an
    EarlyStopping would wait its patience afresh. The fit's checkpoints take theirs after
    every callback has seen the event; one taken from a callback could not.
    """
    try:
        inside = os.path.samefile(target.parent, directory)
    except OSError:  # a parent that does not exist is not the fit's directory
        return
    if inside:
        raise CheckpointError(
            f"cannot save to {target}: it would be a checkpoint of the running fit's "
            f"checkpoint_dir {directory}, without what the fit's own checkpoints keep (its "
            "callbacks' states), and a resume would take it for the latest; the fit saves "
            "there itself (checkpoint_every=...): save to another directory, or under a name "
            f"that is not step-<n>.ckpt (e.g. {directory / 'manual.ckpt'})"
        )


def _refuse_locked(target: Path) -> None:
    """Refuse ``target``, a ``step-<n>.ckpt``, in the checkpoint_dir of a running fit (of
    another trainer, or another process: one holding its lock).

    It would be one of that fit's checkpoints, from another run: a resume of the
    directory would take it if its step is the latest, and ``keep`` would prune it or,
    for it, the fit's own.
    """
    if in_use(target.parent):
        raise CheckpointError(
            f"cannot save to {target}: {target.parent} is in use by a running fit (it holds "
            f"{target.parent / LOCK_NAME}), whose checkpoints step-<n>.ckpt are its own; "
            "save to another directory, or under a name that is not step-<n>.ckpt (e.g. "
            f"{target.parent / 'manual.ckpt'})"
        )


def _refuse_fit_checkpoint(target: Path) -> None:
    """Refuse to write over ``target``, a ``step-<n>.ckpt``, if it keeps what a save does
    not (a fit's final checkpoint after the fit: the same step's name).

    Written over, the directory's resume would lose them: a run stopped early would train
    on, an EarlyStopping would wait its patience afresh.
    """
    records = fit_records(target)
    if records:
        raise CheckpointError(
            f"cannot save to {target}: it is a fit's checkpoint and keeps "
            f"{' and '.join(records)}, which a save does not; written over, a resume of "
            f"{target.parent} would lose them. It is left as it is: save under another "
            f"name (e.g. {target.parent / 'manual.ckpt'}) or into another directory"
        )
