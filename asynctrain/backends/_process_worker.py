"""What runs inside a worker process: the task loop, its resource limits and a parent watchdog.

Each worker's socket carries frames (see ``_process_pipe``). A task's frame body is 8
bytes of task id (little endian, signed) then the task (``_process_task``: its head, the
function and shared handles the worker unpickles once, and its tail); the reply is a
pickle of ``(task_id, ok, value)`` where ``value`` is the result or
``(pickled exception or None, traceback text)``: the exception is pickled on its own so
that one which cannot be rebuilt in the parent still arrives with the worker's traceback.
Task id :data:`CONTROL` carries a message with no reply: the key of a shared segment to
unmap (or :data:`PRUNE`: only drop the kept maps of shared files that are gone). Keeping
the id outside the pickle lets a worker answer even when ``fn`` or its arguments fail to
unpickle there. Once a reply is sent, the worker runs what the task deferred
(``_idle``) before it reads the next message.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import threading
import traceback

from threadpoolctl import threadpool_limits

from asynctrain.backends._idle import run_deferred, serve
from asynctrain.backends._malloc import keep_freed_memory
from asynctrain.backends._priority import lower_process_priority
from asynctrain.backends._process_pipe import recv_frame, send_frame
from asynctrain.backends._process_shared import forget, keep_file_maps
from asynctrain.backends._process_task import TaskDecoder

CONTROL = -1
PRUNE = ""  # the "key" of a control message that only drops maps of files gone
ORPHANED = 86  # exit code of a worker whose parent died while it was busy
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def task_id_bytes(task_id: int) -> bytes:
    """The first 8 bytes of a message body: the task id."""
    return task_id.to_bytes(8, "little", signed=True)


def encode_forget(key: str) -> bytes:
    """The message body that tells a worker to unmap the shared segment ``key``."""
    return task_id_bytes(CONTROL) + pickle.dumps(key)


_DECODER = TaskDecoder()  # this worker's heads of tasks (see _process_task)


def held_keys() -> set[str]:
    """Keys of the shared handles this worker keeps decoded task heads of (for tests)."""
    return _DECODER.keys()


def main(sock: socket.socket, blas_threads: int, niceness: int) -> None:
    """Serve tasks from ``sock`` until it reaches end-of-file (the parent closed or died)."""
    _limit(blas_threads, niceness)
    keep_freed_memory()
    keep_file_maps()
    _watch_parent()
    # Ctrl-C reaches the whole process group: the parent decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    decoder = _DECODER
    serve()  # tasks may leave work for the gap before the next one (``_idle``)
    while True:
        try:
            message = recv_frame(sock)
        except (EOFError, OSError):
            return
        task_id = int.from_bytes(message[:8], "little", signed=True)
        if task_id == CONTROL:
            key = pickle.loads(message[8:])
            decoder.forget(key)
            forget(key)
            continue
        try:
            send_frame(sock, _execute(decoder, task_id, memoryview(message)[8:]))
        except OSError:  # the parent closed the pipe while we worked: nobody to answer
            return
        run_deferred()


def _execute(decoder: TaskDecoder, task_id: int, payload: memoryview) -> bytes:
    """Run one task, in a fresh copy of the worker's context (as a thread worker runs it
    in a copy of its caller's): what the task sets there, numpy's error state
    (``np.seterr``) say, ends with it instead of changing every later task of the
    worker, whichever fit or trainer sends them."""
    try:
        fn, args = decoder.decode(payload)
        result = contextvars.copy_context().run(fn, *args)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: user code raised them
        return _failure(task_id, exc, traceback.format_exc())
    try:
        return pickle.dumps((task_id, True, result), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        text = f"the task's result cannot be pickled ({exc!r})"
        return pickle.dumps((task_id, False, (None, text)))


def _failure(task_id: int, exc: BaseException, text: str) -> bytes:
    try:
        pickled: bytes | None = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as problem:
        pickled = None
        text = (
            f"the task's exception {exc!r} cannot be pickled ({problem!r}); its traceback "
            f"in the worker:\n{text}"
        )
    return pickle.dumps((task_id, False, (pickled, text)), protocol=pickle.HIGHEST_PROTOCOL)


def _limit(blas_threads: int, niceness: int) -> None:
    """One BLAS thread pool of ``blas_threads`` and a lower priority than the parent
    (``_priority``)."""
    # numpy is already imported (the asynctrain package imports it), so its BLAS is limited
    # through threadpoolctl; the variables reach libraries user code loads later.
    for name in _THREAD_VARS:
        os.environ[name] = str(blas_threads)
    threadpool_limits(limits=blas_threads)
    lower_process_priority(niceness)


def _watch_parent() -> None:
    """Exit at once when the parent dies, even in the middle of a long task."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="asynctrain-watchdog", daemon=True).start()
