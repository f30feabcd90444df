"""Framed messages on a worker socket: never blocking the parent's loop; blocking in the worker.

A frame is 8 bytes of body length (little endian) then the body. The parent's end is
non-blocking on every event loop (uvloop makes any descriptor it watches non-blocking, so
a blocking design cannot be relied on there): writes that do not fit the socket buffer
wait in a queue of memoryviews and go out as the loop reports the socket writable; reads
are reassembled from whatever arrives, a large body straight into its own buffer. So a
64 MB frame never stalls the loop, a stopped worker never freezes it, and no frame is
ever cut short. The worker's end stays blocking: the worker has nothing else to do.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable, Sequence

HEADER = 8
_SCRATCH = 256 * 1024  # bytes read per wake-up while no large body is pending
_SMALL = 64 * 1024  # a worker's frame up to this size goes out in one send
_MAX_BUFFERS = 64  # buffers per sendmsg (well under any IOV_MAX)
Buffer = bytes | bytearray | memoryview


def header(size: int) -> bytes:
    """The 8-byte length prefix of a body of ``size`` bytes."""
    return size.to_bytes(HEADER, "little")


class Pipe:
    """The parent's end of a worker socket, driven by ``loop``'s readiness callbacks.

    Args:
        sock: a connected stream socket (the parent's end of a socketpair).
        on_frame: called on the loop with each complete body received, in order.

    ``send`` queues a frame and returns at once; ``drain`` reads what is already there
    (a reply written just before the worker died). Errors and end-of-file end the pipe
    quietly: the worker's exit, seen through its sentinel, says what happened.
    """

    def __init__(self, sock: socket.socket, on_frame: Callable[[bytearray], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._out: collections.deque[memoryview] = collections.deque()
        self._scratch = bytearray(_SCRATCH)
        self._pending = 0  # bytes of the scratch buffer not yet parsed
        self._body: bytearray | None = None  # a large body being filled in place
        self._filled = 0
        self.closed = False
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet written to the socket."""
        return sum(len(view) for view in self._out)

    def send(self, parts: Sequence[Buffer]) -> None:
        """Queue one frame whose body is ``parts`` joined (never copied); never blocks."""
        if self.closed:
            return
        size = sum(len(memoryview(part).cast("B")) for part in parts)
        waiting = bool(self._out)
        self._out.append(memoryview(header(size)))
        self._out.extend(memoryview(part).cast("B") for part in parts if len(part))
        if not waiting:
            self._write()
            if self._out and not self.closed:
                self._loop.add_writer(self._fd, self._write)

    def drain(self) -> None:
        """Deliver every complete frame already in the socket (the worker has exited)."""
        while self._reading and self._read_once():
            pass

    def close(self) -> None:
        """Stop watching the socket and close it; queued output is dropped."""
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        if self._out:
            self._loop.remove_writer(self._fd)
            self._out.clear()
        self._sock.close()

    def abandon(self) -> None:
        """Close the socket without touching its loop, which has been closed (its watches
        went with it); queued output is dropped."""
        self.closed = True
        self._out.clear()
        self._sock.close()

    def _write(self) -> None:
        try:
            sent = self._sock.sendmsg(list(_first(self._out, _MAX_BUFFERS)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the worker is gone: its sentinel reports how
            self._out.clear()
            self._loop.remove_writer(self._fd)
            return
        while sent:
            view = self._out[0]
            if sent < len(view):
                self._out[0] = view[sent:]
                break
            sent -= len(view)
            self._out.popleft()
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One ``recv_into``; False once nothing more can be read now."""
        if self._body is not None:
            target = memoryview(self._body)[self._filled :]
        else:
            target = memoryview(self._scratch)[self._pending :]
        try:
            count = self._sock.recv_into(target)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            count = 0
        if count == 0:  # end-of-file: the worker is exiting
            self._stop_reading()
            return False
        if self._body is not None:
            self._filled += count
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self._on_frame(body)
        else:
            self._pending += count
            self._parse()
        return not self.closed

    def _parse(self) -> None:
        """Deliver the complete frames in the scratch buffer; keep a partial one for later."""
        view, start = memoryview(self._scratch), 0
        while self._pending - start >= HEADER:
            size = int.from_bytes(view[start : start + HEADER], "little")
            begin = start + HEADER
            available = self._pending - begin
            if size <= available:
                start = begin + size
                self._on_frame(bytearray(view[begin:start]))
                continue
            if HEADER + size > _SCRATCH:  # a large body: read the rest straight into it
                self._body = bytearray(size)
                self._body[:available] = view[begin : self._pending]
                self._filled, start = available, self._pending
            break
        rest = self._pending - start
        view.release()
        self._scratch[:rest] = self._scratch[start : self._pending]
        self._pending = rest

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)


def _first(queue: collections.deque[memoryview], count: int) -> list[memoryview]:
    return [queue[i] for i in range(min(count, len(queue)))]


def send_frame(sock: socket.socket, body: Buffer) -> None:
    """Write one frame on a blocking socket (the worker's end)."""
    if len(body) <= _SMALL:
        sock.sendall(header(len(body)) + bytes(body))
    else:
        sock.sendall(header(len(body)))
        sock.sendall(body)


def recv_frame(sock: socket.socket) -> bytearray:
    """Read one frame from a blocking socket (the worker's end).

    Raises:
        EOFError: the parent closed its end (or died), between frames or inside one.
    """
    size = int.from_bytes(_recv_exactly(sock, HEADER), "little")
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, filled = memoryview(buffer), 0
    while filled < size:
        count = sock.recv_into(view[filled:])
        if count == 0:
            raise EOFError(f"the pipe ended {size - filled} bytes short of a frame")
        filled += count
    return buffer
