"""asynctrain's own forkserver: a multiprocessing context whose preload is ours alone.

``multiprocessing.set_forkserver_preload`` sets the preload of the one forkserver every
library in the process shares; setting it there changed the forkserver of any other code.
This context starts its own forkserver (``multiprocessing.forkserver.ForkServer``) with
numpy, asynctrain's worker and the caller's ``__main__`` imported once, so every worker
forked from it starts ready, and leaves the global forkserver as it found it.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from multiprocessing import forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.context import BaseContext
from typing import Any

PRELOAD = ["__main__", "asynctrain.backends._process_worker"]
_SERVER = forkserver.ForkServer()
_SERVER.set_forkserver_preload(PRELOAD)


class _Popen(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` launching through :data:`_SERVER` (CPython 3.11's
    ``_launch`` with the server swapped: the stock one is hard-wired to the global)."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = preparation_data(process_obj._name)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        fds: list[int] = self._fds  # type: ignore[attr-defined]
        self.sentinel, w = _SERVER.connect_to_new_process(fds)
        _parent_w = os.dup(w)  # the child's sentinel of this parent
        close_fds: Any = util.close_fds  # type: ignore[attr-defined]
        self.finalizer = util.Finalize(self, close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


def preparation_data(name: str) -> dict[str, Any]:
    """``spawn.get_preparation_data(name)`` without a start method the child cannot set.

    The child calls ``multiprocessing.set_start_method`` with the parent's default start
    method before anything else; in a joblib worker that is ``"loky"``, a context the
    child has not imported, so every worker died at start ("cannot find context for
    'loky'") and a fit failed after its retries.
    """
    data: dict[str, Any] = spawn.get_preparation_data(name)
    if data.get("start_method") not in multiprocessing.get_all_start_methods():
        data.pop("start_method", None)
    return data


class _Process(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


class _Context(BaseContext):
    _name = "forkserver"
    Process = _Process


def get_context(start_method: str) -> BaseContext:
    """The private forkserver context, or the stock one for ``"spawn"``."""
    if start_method == "forkserver":
        return _CONTEXT
    return multiprocessing.get_context(start_method)


_CONTEXT = _Context()
