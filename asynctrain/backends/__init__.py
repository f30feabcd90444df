"""Executors for shard work: the ``Backend`` protocol and its implementations."""

from typing import TYPE_CHECKING, Any

from asynctrain.backends._base import Backend, LocalShared, SharedArrays
from asynctrain.backends._inline import InlineBackend
from asynctrain.backends._registry import backend_names, get_backend, register_backend
from asynctrain.backends._straggler import StragglerBackend
from asynctrain.backends._thread import ThreadBackend, default_workers

__all__ = [
    "Backend",
    "DaskBackend",
    "InlineBackend",
    "LocalShared",
    "ProcessBackend",
    "SharedArrays",
    "StragglerBackend",
    "ThreadBackend",
    "backend_names",
    "default_workers",
    "get_backend",
    "register_backend",
]

if TYPE_CHECKING:
    from asynctrain.backends._dask import DaskBackend
    from asynctrain.backends._process import ProcessBackend


def __getattr__(name: str) -> Any:
    # The process and Dask backends pull in multiprocessing or distributed: imported on
    # first use only.
    if name == "ProcessBackend":
        from asynctrain.backends._process import ProcessBackend

        return ProcessBackend
    if name == "DaskBackend":
        from asynctrain.backends._dask import DaskBackend

        return DaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
