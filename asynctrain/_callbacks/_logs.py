"""Training logs: every epoch's metrics to a CSV file or a TensorBoard event file.

File work runs on one ``asynctrain-log`` thread per logger and fit (opened in
``on_fit_start``, closed in ``on_fit_end``), never on the event loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from asynctrain._callbacks._tfevents import EventFile
from asynctrain._control import FitControl
from asynctrain._events import Callback, EpochEvent
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._offloop import await_without_orphans

T = TypeVar("T")
_FIELDS = ("epoch", "loss", "val_loss", "val_accuracy", "seconds", "samples_per_s", "steps")


def epoch_values(event: EpochEvent) -> dict[str, float | int]:
    """The logged values of ``event``: its fields, then its chosen metrics."""
    return {name: getattr(event, name) for name in _FIELDS} | event.metrics


class _LogThread:
    """One thread for a logger's file work during a fit, awaited without orphans."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="asynctrain-log"
        )

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await await_without_orphans(self._executor.submit(fn, *args))

    def close(self) -> None:
        # Called once the last work was awaited: the join is immediate.
        self._executor.shutdown(wait=True)


class _FileLogger(Callback):
    """Opens a log at the fit's start, writes each epoch, closes it at the end.

    It follows one fit at a time: a second fit running meanwhile with the same logger is
    refused at its start. Followed, the second fit's start replaced the first fit's log
    (left open, its thread running), its end closed the first fit's log, and the first
    fit then failed at its next epoch.
    """

    def __init__(self) -> None:
        self._thread: _LogThread | None = None
        self._log: Any = None
        self._fit: FitControl | None = None  # the fit being logged

    def _open(self) -> Any:
        raise NotImplementedError

    def _write(self, log: Any, event: EpochEvent) -> None:
        raise NotImplementedError

    def _file(self) -> Path:
        """The file the open log writes (for errors)."""
        raise NotImplementedError

    async def on_fit_start(self, fit: FitControl) -> None:
        """Open the log (off the loop).

        Raises:
            ConfigError: the logger is logging another fit that is still running, or
                its log cannot be opened.
        """
        if self._fit is not None:
            raise ConfigError(
                f"{self!r} is logging another fit already; give each fit that runs at "
                "the same time a logger (and a file) of its own"
            )
        self._fit, self._thread = fit, _LogThread()  # taken before the open is awaited
        try:
            self._log = await self._thread.run(self._open)
        except BaseException as exc:
            self._thread.close()
            self._thread, self._fit = None, None
            if isinstance(exc, OSError):  # every error asynctrain raises is an AsyncTrainError
                raise ConfigError(
                    f"{self!r} cannot open its log ({exc.strerror or exc}); create its "
                    "directory, or pass a path that can be written"
                ) from exc
            raise

    async def on_epoch(self, event: EpochEvent) -> None:
        """Write the epoch's values (off the loop).

        Raises:
            ConfigError: the write failed (a full disk, a read-only directory): the
                message names the logger and its file, and ``__cause__`` is the
                ``OSError`` (its ``errno``). The log is closed; the rows of the epochs
                before stay, and so do the fit's checkpoints.
        """
        if self._thread is None:
            raise ConfigError(f"{self!r} runs inside a fit: pass it in callbacks=[...]")
        try:
            await self._thread.run(self._write_or_close, self._log, event)
        except OSError as exc:
            raise ConfigError(
                f"{self!r} could not write {self._file()} at epoch {event.epoch} "
                f"({exc.strerror or exc}); free some space, or log to a path that can be "
                "written. The epochs before are in it; the fit's checkpoints are intact"
            ) from exc

    def _write_or_close(self, log: Any, event: EpochEvent) -> None:
        try:
            self._write(log, event)
        except OSError:
            # Closed now: the close in on_fit_end would flush the torn write again and
            # fail with a second, bare OSError in place of this one.
            with contextlib.suppress(OSError):
                log.close()
            raise

    async def on_fit_end(self, fit: FitControl) -> None:
        """Close the log and its thread (not those of another fit it refused to log)."""
        if fit is not self._fit:
            return
        thread, log, self._thread, self._log = self._thread, self._log, None, None
        self._fit = None
        if thread is not None:
            try:
                await thread.run(log.close)
            finally:
                thread.close()


class CSVLogger(_FileLogger):
    """Write one CSV row per epoch: its numbers and the chosen validation metrics.

    Columns: ``epoch, loss, val_loss, val_accuracy, seconds, samples_per_s, steps``, then
    the metrics of ``fit(metrics=[...])`` (``val_f1``, ...). Floats are written exactly
    (``repr``); a value the fit did not have is ``nan``. Each row is flushed when its
    epoch ends, so the file can be followed while training runs.

    Args:
        path: the CSV file; its directory must exist.
        append: add rows to an existing file (writing the header only into an empty
            one) instead of starting it afresh at each fit. The rows follow the file's
            header: a column this fit lacks is ``nan``, and a fit with a column the
            header lacks (a metric the earlier fits did not choose) fails at its first
            epoch, before any row of it is written. A fit resumed from a checkpoint
            (``resume=True``) first drops the rows written after that checkpoint was
            taken (the epochs it trains again), so each epoch has one row. A last row
            without its line end (torn by a write that failed: a full disk) is cut off.

    Raises:
        ConfigError: (at a fit's first epoch) ``append=True`` to a file whose header
            lacks one of the fit's columns.
        ConfigTypeError: a bad argument.

    Example:
        >>> logger = CSVLogger("run/epochs.csv")
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        super().__init__()
        if not isinstance(path, str | os.PathLike):
            raise ConfigTypeError(f"path must be a str or a path, got {path!r}")
        if not isinstance(append, bool):
            raise ConfigTypeError(f"append must be True or False, got {append!r}")
        self.path, self.append = Path(path), append
        self._columns: list[str] | None = None
        # The lines (header included) the file holds for this fit, and whether the file
        # may hold more: rows written after the checkpoint a fit resumed from.
        self._lines = 0
        self._cut = False

    def state_dict(self) -> dict[str, Any]:
        """The file and its lines so far: a resumed fit drops the rows written after."""
        return {"path": str(self.path), "lines": self._lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry on from a checkpoint's :meth:`state_dict`: with ``append``, the rows the
        file got after it (epochs the resumed fit trains again) are dropped before the
        first row of this fit is written. Another file, or one with no more lines than
        then, is left alone.

        Raises:
            TypeError, KeyError: a state this callback did not write.
        """
        path, lines = state["path"], state["lines"]
        if type(path) is not str or type(lines) is not int or lines < 0:
            raise TypeError(f"path {path!r} and lines {lines!r} are not a path and a count")
        if self.append and path == str(self.path) and lines < self._lines:
            self._lines, self._cut = lines, True

    def _open(self) -> IO[str]:
        log = self.path.open("a" if self.append else "w", newline="", encoding="utf-8")
        # The columns of the rows already there: appended rows must line up with them (a
        # fit with other metrics wrote rows longer or shorter than the header).
        self._columns, self._lines, self._cut = None, 0, False
        if log.tell() > 0:
            _cut_torn_row(log, self.path)
            try:
                with self.path.open(newline="", encoding="utf-8") as written:
                    lines = written.readlines()
                self._columns = next(csv.reader(lines[:1]), None) or None
                self._lines = len(lines)
            except (UnicodeDecodeError, csv.Error) as exc:
                log.close()
                raise ConfigError(
                    f"{self.path} is not a CSV file to append to ({exc}); pass another path"
                ) from None
        return log

    def _cut_to_lines(self, log: IO[str]) -> None:
        """Drop the file's lines after its first :attr:`_lines` with one truncate (a
        reader sees the rows before or after it, never part of a row)."""
        log.flush()
        kept = self.path.read_bytes().splitlines(keepends=True)[: self._lines]
        log.truncate(sum(len(line) for line in kept))
        if not kept:  # the header went too: the next row writes it again
            self._columns = None
        self._cut = False

    def _write(self, log: IO[str], event: EpochEvent) -> None:
        if self._cut:
            self._cut_to_lines(log)
        values = epoch_values(event)
        writer = csv.writer(log)
        if self._columns is None:
            self._columns = list(values)
            writer.writerow(self._columns)
            self._lines += 1
        extra = [name for name in values if name not in self._columns]
        if extra:
            raise ConfigError(
                f"{self.path} has the columns {', '.join(self._columns)}; this fit also "
                f"logs {', '.join(extra)}: log it to another file, or pass append=False "
                "to start the file afresh"
            )
        row = (values.get(name, math.nan) for name in self._columns)
        writer.writerow(repr(v) if isinstance(v, float) else v for v in row)
        log.flush()
        self._lines += 1

    def _file(self) -> Path:
        return self.path

    def __repr__(self) -> str:
        return f"CSVLogger({str(self.path)!r}, append={self.append})"


def _cut_torn_row(log: IO[str], path: Path) -> None:
    """Cut the last line of ``path`` (open as ``log`` to append) if it has no line end: a
    row (or header) a failed write tore, whose values may be cut short (``0.12`` of
    ``0.1234``). Every row the logger writes ends in one; appended to, the torn row ran
    on into the first new one."""
    data = path.read_bytes()
    whole = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    if whole < len(data):
        log.truncate(whole)


class TensorBoardLogger(_FileLogger):
    """Write every epoch's values as TensorBoard scalars (``tensorboard --logdir ...``).

    One scalar per value of :class:`CSVLogger`'s columns (``loss``, ``val_loss``, ...,
    the chosen metrics), at step = epoch; NaN values (no validation data) are left out.
    Writes a new event file into ``logdir`` per fit (at its first epoch), with the
    protos of tensorboardX (the extra ``pip install 'asynctrain[tensorboard]'``); each
    epoch's event is on disk when the epoch ends. A fit resumed from a checkpoint
    (``resume=True``) writes on in the file the checkpoint was taken during, first
    dropping the events written after it (the epochs it trains again), so each epoch
    is in the logdir once.

    Args:
        logdir: the run's directory (created if missing).

    Raises:
        ConfigError: tensorboardX is not installed.
        ConfigTypeError: a bad argument.

    Example:
        >>> logger = TensorBoardLogger("runs/softmax")  # doctest: +SKIP
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        super().__init__()
        if not isinstance(logdir, str | os.PathLike):
            raise ConfigTypeError(f"logdir must be a str or a path, got {logdir!r}")
        if importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError(
                "TensorBoardLogger needs tensorboardX: pip install 'asynctrain[tensorboard]'"
            )
        self.logdir = Path(logdir)

    def state_dict(self) -> dict[str, Any] | None:
        """The event file and its bytes so far: a resumed fit drops the events after."""
        log: EventFile | None = self._log
        if log is None:
            return None
        return {"logdir": str(self.logdir), "file": log.name, "size": log.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry on from a checkpoint's :meth:`state_dict`: the fit writes on in that
        event file, from the length it had then. A state of another logdir is left alone.

        Raises:
            TypeError, KeyError: a state this callback did not write.
        """
        logdir, name, size = state["logdir"], state["file"], state["size"]
        if type(logdir) is not str or not EventFile.is_name(name):
            raise TypeError(f"logdir {logdir!r} and file {name!r} are not a path and its file")
        if type(size) is not int or size < 0:
            raise TypeError(f"size {size!r} is not a count of bytes")
        log: EventFile | None = self._log
        if log is not None and logdir == str(self.logdir):
            log.continue_at(name, size)

    def _open(self) -> EventFile:
        self.logdir.mkdir(parents=True, exist_ok=True)
        return EventFile(self.logdir)

    def _write(self, log: EventFile, event: EpochEvent) -> None:
        values = epoch_values(event)
        del values["epoch"]
        log.add_scalars(
            {name: float(v) for name, v in values.items() if not math.isnan(v)},
            step=event.epoch,
        )

    def _file(self) -> Path:
        log: EventFile = self._log
        return self.logdir / log.name

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.logdir)!r})"
