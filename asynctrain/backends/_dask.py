"""DaskBackend: shard work on a Dask distributed cluster, driven from the caller's loop.

``distributed``'s ``Client(asynchronous=True)`` lives on the running event loop and its
futures are awaitable, so nothing here blocks the loop or polls. Shared arrays travel as
:mod:`asynctrain.backends._dask_shared` describes: scattered to every worker once, carried
by tasks when small, returned inside each task's result.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy.typing as npt

try:
    import distributed
    from distributed.client import FutureCancelledError
    from distributed.protocol.pickle import dumps as dask_dumps
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("DaskBackend needs Dask distributed: pip install 'asynctrain[dask]'") from exc

from asynctrain._checks import check_int
from asynctrain._exceptions import BackendError, ConfigError, ConfigTypeError, StateError
from asynctrain.backends._base import readonly
from asynctrain.backends._dask_address import check_address
from asynctrain.backends._dask_shared import Call, DaskShared, Payload, pack, run_on_worker
from asynctrain.backends._lifecycle import Lifecycle
from asynctrain.backends._thread import default_workers

T = TypeVar("T")
LOST_DATA_RETRIES = 3  # times a task may find its shared data lost with the workers

# distributed is only partly typed: its constructors are untyped calls to mypy.
_Client: Any = distributed.Client
_LocalCluster: Any = distributed.LocalCluster
_dumps: Any = dask_dumps


class DaskBackend(Lifecycle):
    """Run shard functions on a Dask distributed cluster.

    With no ``address`` or ``client`` it starts a ``LocalCluster`` of ``workers`` processes
    (one thread each) on the caller's loop, listening on 127.0.0.1 only and without a
    dashboard unless asked, and stops it on ``aclose``. Given an address it connects to
    that scheduler; given a ``Client`` it uses it. Either way it never closes a cluster
    (or a client) it did not create.

    Arrays given to ``share`` are scattered to every worker once; each task carries its
    indices, its step and the current parameters (scattered once per version instead when
    they reach a megabyte). Tasks awaited together are submitted together; at most
    ``max_in_flight`` are outstanding, because the client's bookkeeping for tasks in
    flight runs on the caller's loop. A worker lost mid-task costs a re-run of that task
    (Dask reschedules it, up to ``distributed.scheduler.allowed-failures`` times);
    cancelling the awaiting task cancels the Dask future.

    Args:
        address: a scheduler address, e.g. ``"tls://scheduler:8786"``.
        client: an existing ``distributed.Client(asynchronous=True)`` on this loop.
        workers: processes of the local cluster (default: usable cores); with an address
            or client, wait at open until the cluster has that many workers.
        security: a ``distributed.Security`` for TLS connections to ``address``.
        allow_insecure: accept a plain-TCP address off this machine (logs a warning).
        dashboard: serve the local cluster's dashboard; True for 127.0.0.1:8787, or an
            address such as ``"127.0.0.1:8788"``.
        max_in_flight: tasks outstanding at once; default twice the cluster's threads
            (at least 8).

    Raises:
        ConfigError: both ``address`` and ``client``; a plain-TCP remote address without
            ``allow_insecure``; a synchronous client; bad counts.

    Example:
        >>> import asynctrain as at
        >>> async def main():  # doctest: +SKIP
        ...     async with DaskBackend("tls://scheduler:8786", security=sec) as backend:
        ...         trainer = at.Trainer(model, backend=backend, mode="sync")
        ...         return await trainer.fit(data, epochs=3)
    """

    name = "dask"
    inline = False

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        workers: int | None = None,
        security: distributed.Security | None = None,
        allow_insecure: bool = False,
        dashboard: bool | str = False,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__()
        if address is not None and client is not None:
            raise ConfigError("pass either address= or client= to DaskBackend, not both")
        if client is not None and not getattr(client, "asynchronous", False):
            raise ConfigError(
                f"{client!r} is synchronous; create it with Client(..., asynchronous=True) "
                "on the event loop that trains"
            )
        if address is not None:
            check_address(address, allow_insecure=allow_insecure)
        self.address = address
        self._wanted = None if workers is None else check_int("workers", workers)
        local = address is None and client is None
        self.workers = self._wanted or (default_workers() if local else 0)
        self._limit = None if max_in_flight is None else check_int("max_in_flight", max_in_flight)
        self._security = security
        self._dashboard = dashboard
        self._given = client
        self._client: Any = None
        self._cluster: Any = None
        self._in_flight = asyncio.Semaphore(8)
        self._handles: weakref.WeakSet[DaskShared] = weakref.WeakSet()

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (the backend must be open)."""
        if self._client is None:
            raise StateError(f"{self!r} has no client; open it first (async with)")
        return self._client

    @property
    def dashboard_link(self) -> str | None:
        """The local cluster's dashboard URL, or None when it has none."""
        if self._cluster is None or not self._dashboard:
            return None
        return str(self._cluster.dashboard_link)

    async def _open(self) -> None:
        try:
            self._client = await self._connect()
            if self._wanted is not None and self._cluster is None:
                await self._client.wait_for_workers(self._wanted)
            threads: dict[str, int] = await self._client.nthreads()
        except BaseException:
            await self._close()
            raise
        self.workers = len(threads)
        self._in_flight = asyncio.Semaphore(self._limit or max(8, 2 * sum(threads.values())))

    async def _connect(self) -> Any:
        if self._given is not None:
            loop: Any = self._given.loop
            if loop.asyncio_loop is not asyncio.get_running_loop():
                raise ConfigError(f"{self._given!r} runs on another event loop than this one")
            return self._given
        if self.address is not None:
            try:
                return await _Client(
                    self.address, asynchronous=True, security=self._security, set_as_default=False
                )
            except OSError as exc:
                raise BackendError(f"cannot reach the Dask scheduler at {self.address!r}") from exc
        self._cluster = await _LocalCluster(**self._local_options())
        return await _Client(self._cluster, asynchronous=True, set_as_default=False)

    def _local_options(self) -> dict[str, Any]:
        dashboard = self._dashboard
        address = "127.0.0.1:8787" if dashboard is True else (dashboard or None)
        # Even without a dashboard the scheduler serves /health on 8787; keep it on a free
        # loopback port so two local clusters never collide.
        http = {} if address else {"dashboard_address": "127.0.0.1:0"}
        return {
            "n_workers": self.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": address,
            "scheduler_kwargs": http,
            "asynchronous": True,
        }

    async def _close(self) -> None:
        for handle in list(self._handles):
            await self.release(handle)
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None and client is not self._given:
            await client.close()
        if cluster is not None:
            await cluster.close()

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on a Dask worker; see :class:`~asynctrain.backends.Backend`.

        Shared handles among ``args`` reach the worker as views of their slots; slots the
        task writes come back with its result. A user exception keeps its type.
        Cancelling the caller cancels the Dask future: a queued task never starts; one
        already running finishes on its worker (Dask cannot interrupt it), unawaited.

        Raises:
            BackendError: the task killed every worker Dask allowed it, or the cluster
                cancelled it.
        """
        await self._ensure_open()
        call, handles = pack(fn, args)
        for _ in range(len(handles) + LOST_DATA_RETRIES + 1):
            envelope = await self._submit(fn, call, handles)
            if envelope is None:  # the cluster lost shared data: sent again, run again
                continue
            if not envelope.missed:
                break
            for position in envelope.missed:  # it read slots that tasks wrote
                handles[position].carry_returned()
        else:
            raise BackendError(f"Dask task {fn!r} could not get its shared data to a worker")
        for handle, written in zip(handles, envelope.writes, strict=True):
            handle.receive(written)
        result: T = envelope.result
        return result

    async def _submit(self, fn: Callable[..., Any], call: Call, handles: list[DaskShared]) -> Any:
        """The task's envelope, or None if it lost shared data (now scattered again)."""
        async with self._in_flight:
            carried = [await handle.carried(self._scatter) for handle in handles]
            future = self._client.submit(run_on_worker, call, carried, key=_key(fn), pure=False)
            try:
                return await self._outcome(future)
            except _CancelledByCluster:
                sent = [c for slots in carried for c in slots if not isinstance(c, Payload | None)]
                if await self._reshare_lost(handles, sent):
                    return None
                raise

    async def _reshare_lost(self, handles: list[DaskShared], sent: list[Any]) -> bool:
        """Scatter again whatever of ``sent`` the cluster lost; True if anything was lost."""
        live = [future for future in sent if future.status == "finished"]
        held = await self._client.who_has(live) if live else {}
        lost = {future.key for future in sent if not held.get(future.key)}
        for handle in handles:  # a concurrent task may have done it already: no-op then
            handle.reshare(lost)
        return bool(lost)

    async def _outcome(self, future: Any) -> Any:
        try:
            return await future
        except asyncio.CancelledError:
            # Take the task off the cluster: a queued one never starts, a running one's
            # result is dropped.
            await self._client.cancel([future], reason="the awaiting asyncio task was cancelled")
            raise
        except distributed.KilledWorker as exc:
            raise BackendError(
                f"Dask task {future.key} died with every worker that ran it ({exc}); raise "
                "distributed.scheduler.allowed-failures or look at the workers' logs"
            ) from exc
        except FutureCancelledError as exc:
            raise _CancelledByCluster(
                f"the cluster cancelled Dask task {future.key}: {exc}"
            ) from exc

    def check_picklable(self, *objects: object) -> None:
        """Raise ConfigTypeError if any of ``objects`` cannot be sent to a Dask worker.

        Dask falls back to cloudpickle, so lambdas and closures travel; locks, open files,
        sockets and the like do not.
        """
        for obj in objects:
            try:
                _dumps(obj)
            except Exception as exc:
                raise ConfigTypeError(
                    f"{obj!r:.120} cannot be sent to a Dask worker ({exc}); keep locks, open "
                    "files and connections out of it, or use backend='thread'"
                ) from exc

    async def _scatter(self, payload: Payload) -> Any:
        return await self._client.scatter(payload, broadcast=True, hash=False)

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> DaskShared:
        """Scatter ``arrays`` to every worker once; return the handle tasks carry."""
        await self._ensure_open()
        slots = check_int("slots", slots)
        owned = readonly(arrays)
        handle = DaskShared(owned, slots, await self._scatter(Payload(owned)))
        self._handles.add(handle)
        return handle

    async def release(self, shared: Any) -> None:
        """Drop the cluster's copies of ``shared`` (tasks already running keep theirs)."""
        if isinstance(shared, DaskShared):
            self._handles.discard(shared)
            for future in shared.release():
                future.release()

    def __repr__(self) -> str:
        where = self.address or ("client" if self._given is not None else "local")
        return f"<DaskBackend {where} workers={self.workers} {self.state}>"


class _CancelledByCluster(BackendError):
    """Dask cancelled a task itself, e.g. because shared data it needed was lost."""


def _key(fn: Callable[..., Any]) -> str:
    return f"asynctrain-{getattr(fn, '__name__', 'call')}-{uuid.uuid4().hex}"
