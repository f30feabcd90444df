"""Can an object cross a process boundary? Checked before any work starts."""

from __future__ import annotations

import pickle
import sys
from typing import Any

from asynctrain._exceptions import AsyncTrainError, ConfigTypeError

_ADVICE = (
    "define it at module level in an importable module (not a lambda, a closure or a class "
    "defined inside a function), or use backend='thread'"
)


class _Discard:
    """A file that forgets what is written: the check needs no copy of the pickle."""

    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        # Protocol 5 hands large buffers (a big numpy array) over as a PickleBuffer.
        return memoryview(data).nbytes


class _Probe(pickle.Pickler):
    """A pickler that also refuses what only an interactive ``__main__`` defines."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) or callable(obj):
            module = getattr(obj, "__module__", None)
            if module == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
                raise pickle.PicklingError(
                    f"{obj!r} is defined in an interactive session, which worker processes "
                    "cannot import"
                )
        return NotImplemented


def check_picklable(*objects: object) -> None:
    """Raise if any of ``objects`` cannot be sent to a worker process.

    Args:
        objects: what tasks will carry, e.g. the model and the shard function.

    Raises:
        ConfigTypeError: naming the object and the reason, and saying to define it at module
            level or use the thread backend; or, when the object's own pickling raised
            an asynctrain error (a TorchModel of a parametrized module), what it says.

    Example:
        >>> check_picklable(len, (1, 2))
        >>> try:
        ...     check_picklable(lambda x: x)
        ... except ConfigTypeError as exc:
        ...     print("module level" in str(exc))
        True
    """
    for obj in objects:
        try:
            _Probe(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        except AsyncTrainError as exc:  # the object says what is wrong and what to do
            raise ConfigTypeError(
                f"{_short_repr(obj)} cannot be sent to a worker process: {exc}"
            ) from exc
        except Exception as exc:
            raise ConfigTypeError(
                f"{_short_repr(obj)} cannot be sent to a worker process ({exc}); {_ADVICE}"
            ) from exc


def _short_repr(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."
