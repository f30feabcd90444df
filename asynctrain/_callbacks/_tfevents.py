"""A TensorBoard event file written record by record, that a resumed fit cuts and extends.

The file is a sequence of TFRecord frames (length, its masked CRC-32C, an ``Event``
proto, its masked CRC-32C); the first event names the file version. tensorboardX's
``SummaryWriter`` hands events to a thread of its own, whose ``flush`` does not wait for
them, and starts a new file each time: how far a file had got at a checkpoint is not
known, and a resumed fit wrote the epochs it trained again into a second file. Here
each record is written whole by the caller (the logger's ``asynctrain-log`` thread) and
the bytes written so far are counted, so a resumed fit cuts the file back to its length
at the checkpoint and appends to it: every epoch is in it once. The protos and the CRC
come from tensorboardX (the ``tensorboard`` extra), imported when a file is written.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

VERSION = "brain.Event:2"
_NAME = re.compile(r"events\.out\.tfevents\.[0-9]+\.[A-Za-z0-9-]+\.[0-9]+\.[0-9a-f]{8}")


class EventFile:
    """The event file of one logdir for a fit: created, or continued, at the first write.

    ``name`` and ``size`` (the bytes written, whole records only) are what a checkpoint
    keeps; :meth:`continue_at` takes them back.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.name = _new_name()
        self.size = 0
        self._cut = False  # continue ``name`` from its first ``size`` bytes
        self._file: IO[bytes] | None = None

    @staticmethod
    def is_name(name: object) -> bool:
        """Whether ``name`` is one an :class:`EventFile` gives its file (no directory)."""
        return isinstance(name, str) and _NAME.fullmatch(name) is not None

    def continue_at(self, name: str, size: int) -> None:
        """Write on in the logdir's file ``name`` from its first ``size`` bytes (what it
        held at a checkpoint), dropping what was written after; if it is gone, in a file
        of that name started afresh, and if it is shorter (not the file of then), in a
        new one."""
        self.close()  # (a fit hands the state back before its first epoch: none is open)
        self.name, self.size, self._cut = name, size, True

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Append one event of ``values`` (tag: value) at ``step`` and flush it."""
        event, summary, _ = _tensorboardx()
        scalars = [summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
        self._write(event(wall_time=time.time(), step=step, summary=summary(value=scalars)))
        assert self._file is not None
        self._file.flush()

    def close(self) -> None:
        """Close the file (if one was written)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _write(self, proto: Any) -> None:
        if self._file is None:
            self._file = self._opened()
            if self.size == 0:  # a new file: its first record names its version
                self._write(_tensorboardx()[0](wall_time=time.time(), file_version=VERSION))
        data = proto.SerializeToString()
        crc = _tensorboardx()[2]
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))
        self._file.write(record)  # one call: a crash leaves at most one torn record, last
        self.size += len(record)

    def _opened(self) -> IO[bytes]:
        path = self.logdir / self.name
        if self._cut:
            self._cut = False
            cut = _cut_to(path, self.size)
            if cut is not None:
                return cut
            self.size = 0
            if path.exists():  # shorter than at the checkpoint: not the file of then
                self.name = _new_name()
        return (self.logdir / self.name).open("xb")


def _cut_to(path: Path, size: int) -> IO[bytes] | None:
    """``path`` opened to append after its first ``size`` bytes (the rest dropped); None
    if it is missing or shorter."""
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        return None
    if os.fstat(file.fileno()).st_size < size:
        file.close()
        return None
    file.truncate(size)
    file.seek(size)
    return file


@functools.cache
def _tensorboardx() -> tuple[Any, Any, Callable[[bytes], int]]:
    """tensorboardX's ``Event`` and ``Summary`` protos and its masked CRC-32C."""
    event = importlib.import_module("tensorboardX.proto.event_pb2").Event
    summary = importlib.import_module("tensorboardX.proto.summary_pb2").Summary
    crc = importlib.import_module("tensorboardX.record_writer").masked_crc32c
    return event, summary, crc


def _new_name() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
    return f"events.out.tfevents.{int(time.time())}.{host}.{os.getpid()}.{secrets.token_hex(4)}"
