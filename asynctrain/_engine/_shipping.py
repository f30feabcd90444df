"""A model crosses to worker processes once per fit, not with every task.

Tasks on the process and Dask backends pickle their arguments. A numpy model is a few
hundred bytes of configuration, but a bridged model (a PyTorch module, a JAX function
and its structure) can be megabytes, and unpickling a module costs milliseconds: far too
much to repeat for every shard task. So a fit shares the model's pickle like its data,
once, as a byte array (:func:`ship_model`), and tasks carry the small handle in the
model's place. A worker unpickles it on the first task that needs it and keeps it for
the rest of the fit (:func:`resolve_model`); a token in the shared bytes keys its cache.
In-process backends (inline, thread) carry the model object itself.
"""

from __future__ import annotations

import collections
import pickle
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from asynctrain.backends import LocalShared, SharedArrays

_KEEP = 4  # models a worker keeps unpickled: this fit's, and a few concurrent fits'
_cache: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
_lock = threading.Lock()
_loads = 0


async def ship_model(
    model: Any, data: SharedArrays, share: Callable[[Mapping[str, Any]], Awaitable[Any]]
) -> Any:
    """What tasks carry for ``model``: the model itself when the backend shares by
    reference (``data``, the fit's shared data, is a :class:`LocalShared`: its workers are
    in this process), else the handle of its pickle shared through ``share`` (the fit
    releases it)."""
    if isinstance(data, LocalShared):  # threads and inline: nothing is pickled
        return model
    # Arrays that own their bytes: a view of a bytes object is not something every
    # backend's share expects.
    blob = np.frombuffer(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
    return await share({"model": blob.copy(), "token": token.copy()})


def resolve_model(carried: Any) -> Any:
    """The model a task carries: itself, or unpickled once per process from its handle."""
    # A model has loss_and_grad, a handle has not: an attribute lookup, where an
    # isinstance check against the runtime-checkable SharedArrays costs ~10 us a task.
    if hasattr(carried, "loss_and_grad") or not isinstance(carried, SharedArrays):
        return carried
    arrays = carried.read(0)
    token = arrays["token"].tobytes()
    with _lock:
        model = _cache.get(token)
        if model is None:
            global _loads
            model = pickle.loads(arrays["model"].tobytes())
            _loads += 1
            _cache[token] = model
            while len(_cache) > _KEEP:
                _cache.popitem(last=False)
        _cache.move_to_end(token)
    return model


def loads() -> int:
    """How many models this process has unpickled from shared handles (for tests)."""
    return _loads
