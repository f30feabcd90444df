"""Pick a backend by name; the module behind a name is imported only when it is asked for."""

from __future__ import annotations

import importlib
from typing import Any

from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain.backends._base import Backend

# name -> (module, class). Process and Dask backends pull in heavier machinery, so their
# modules load lazily, as anyio does with its backends.
_BACKENDS: dict[str, tuple[str, str]] = {
    "dask": ("asynctrain.backends._dask", "DaskBackend"),
    "inline": ("asynctrain.backends._inline", "InlineBackend"),
    "process": ("asynctrain.backends._process", "ProcessBackend"),
    "thread": ("asynctrain.backends._thread", "ThreadBackend"),
}


def register_backend(name: str, module: str, cls: str) -> None:
    """Make ``backend=name`` resolve to ``module.cls`` (imported on first use)."""
    _BACKENDS[name] = (module, cls)


def backend_names() -> list[str]:
    """The names ``get_backend`` accepts, sorted."""
    return sorted(_BACKENDS)


def get_backend(spec: str | Backend, *, workers: int | None = None) -> tuple[Backend, bool]:
    """Resolve ``spec`` to a backend and say whether the caller owns it.

    A name creates a new backend (owned: the caller must ``aclose`` it); an object is used
    as is (not owned: whoever created it closes it).

    Raises:
        ConfigError: an unknown name, or ``workers`` given with a backend object.
        ConfigTypeError: ``spec`` is neither a name nor a backend.
    """
    if isinstance(spec, str):
        if spec not in _BACKENDS:
            names = ", ".join(repr(n) for n in backend_names())
            raise ConfigError(f"unknown backend {spec!r}; choose one of {names}")
        module, cls = _BACKENDS[spec]
        factory: Any = getattr(importlib.import_module(module), cls)
        backend: Backend = factory() if spec == "inline" else factory(workers=workers)
        return backend, True
    if isinstance(spec, Backend):
        if workers is not None:
            raise ConfigError(
                f"workers={workers} was given with a backend object {spec!r}; "
                "set workers on the backend itself"
            )
        return spec, False
    raise ConfigTypeError(
        f"backend must be a name ({', '.join(backend_names())}) or a Backend, got {spec!r}"
    )
