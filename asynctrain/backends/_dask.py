"""DaskBackend: shard work on a Dask distributed cluster, driven from the caller's loop.

``distributed``'s ``Client(asynchronous=True)`` lives on the running event loop, so nothing
here blocks the loop or polls. Dask places one store actor on each worker
(:mod:`asynctrain.backends._dask_worker`); calls go to the actors in batches
(:mod:`asynctrain.backends._dask_lane`), carrying slot ids rather than arrays
(:mod:`asynctrain.backends._dask_shared`). The backend follows the cluster's membership
through the scheduler's events: a worker that joins gets a store as it joins, placed apart
from the calls, and takes calls once it has it; a worker that leaves or dies has its calls
re-run on another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import signal
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import numpy.typing as npt

try:
    import distributed
    from distributed.deploy.adaptive import Adaptive
    from distributed.protocol.pickle import dumps as dask_dumps
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("DaskBackend needs Dask distributed: pip install 'asynctrain[dask]'") from exc

from asynctrain._checks import check_int
from asynctrain._exceptions import (
    AsyncTrainError,
    BackendError,
    ConfigError,
    ConfigTypeError,
    StateError,
)
from asynctrain._offloop import off_loop
from asynctrain._types import State
from asynctrain.backends._base import readonly
from asynctrain.backends._dask_address import check_address
from asynctrain.backends._dask_lane import ClientClosed, Lane, LaneLost, Traffic
from asynctrain.backends._dask_shared import DaskShared, content_id, nbytes, pack
from asynctrain.backends._dask_worker import WorkerStore
from asynctrain.backends._lifecycle import Lifecycle, on_opening_loop
from asynctrain.backends._thread import default_workers

T = TypeVar("T")
LOST_WORKER_RETRIES = 3  # times a call may lose the worker running it before it fails
DEFAULT_IN_FLIGHT = 256  # calls outstanding at once, by default
DEFAULT_WAIT = 30.0  # seconds to wait for a worker when none is left
DEFAULT_CONNECT = 10.0  # seconds to wait for a connection to the scheduler at an address
STORE_TIMEOUT = 10.0  # seconds open, resize and a call with no worker wait for new stores
DEFAULT_KEEP = 1 << 30  # bytes of data the workers keep between fits, by default
KEEP_MIN = 1 << 16  # smaller shared arrays are not kept between fits (nor hashed)

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

    State stays on the workers between tasks: each worker keeps a store (a Dask actor)
    holding the slot contents it was sent, by id, so the dataset reaches a worker once,
    a new parameter version once per worker, and a step's tasks carry indices and ids.
    A shard goes to the same worker every step (shard ``s`` to the ``s % n``-th of ``n``
    workers), so local mode's per-shard state never moves. Calls to one worker made
    together (a step's shards) travel in one message and their results come back in one
    reply, straight between this client and the worker.

    The backend follows the cluster: a worker that joins (``cluster.scale``, adaptive
    scaling, a ``dask worker`` started by hand) takes shards once its store is placed,
    as a rule from the next step (a worker busy with other work when it joins places it
    once that work is done, and no call waits for it meanwhile); the calls of a worker
    that leaves or dies are re-run on the others (a call that loses
    ``LOST_WORKER_RETRIES + 1`` workers fails). With no worker left, calls wait up to
    ``wait_for_workers`` seconds for one to join. Results are reduced by shard, not by
    worker, so none of this changes the trained parameters. (The backend learns of joins
    and departures by subscribing the client to the scheduler's ``"all"`` event topic; a
    handler of your own on that topic is replaced.)

    Args:
        address: a scheduler address, e.g. ``"tls://scheduler:8786"``.
        client: an existing ``distributed.Client(asynchronous=True)`` on this loop.
        workers: processes of the local cluster (default: usable cores); with an address
            or client, wait at open until the cluster has that many workers (up to
            ``wait_for_workers`` seconds).
        security: a ``distributed.Security`` for TLS connections to ``address``.
        allow_insecure: accept a plain-TCP address off this machine (logs a warning).
        dashboard: serve the local cluster's dashboard; True for 127.0.0.1:8787, or an
            address such as ``"127.0.0.1:8788"``.
        max_in_flight: calls outstanding at once (default 256).
        wait_for_workers: seconds to wait for workers to join (default 30): at open, for
            the ``workers`` asked of a cluster at ``address`` or ``client`` (and in
            :meth:`resize`, for the new size); in a call, for one worker when the cluster
            has none. Then it fails with a BackendError saying how many it wanted and
            found.
        connect_timeout: seconds to wait for a connection to the scheduler at
            ``address`` (default 10; distributed's own default is 30), then fail with a
            BackendError naming the address. Every client the backend makes (for an
            ``address`` or its own local cluster) gives up a connection to a worker
            after as long; a ``client`` handed over keeps its own timeout.
        adaptive: ``(minimum, maximum)`` workers: the local cluster the backend starts
            scales between them with the number of shard tasks in flight.
        keep_bytes: bytes of a fit's data (shared arrays of ``KEEP_MIN`` bytes or more:
            the dataset, its partitions, the validation set) the workers keep after the
            fit, most recently used first, so that a later fit on the same arrays does
            not send them again (default 1 GiB; 0: send them every fit). Arrays are
            recognised by a hash of their contents; a read-only array's hash is
            remembered while it lives, so do not change the memory behind a read-only
            array between fits (a Dataset's arrays must not change anyway).

    Raises:
        ConfigError: both ``address`` and ``client``; a plain-TCP remote address without
            ``allow_insecure``; a synchronous client; bad counts or seconds; ``adaptive``
            with a cluster the backend did not start.
        BackendError: (at open) the scheduler at ``address`` did not answer within
            ``connect_timeout`` seconds, or the cluster had fewer than ``workers`` workers
            after ``wait_for_workers`` seconds.

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
        wait_for_workers: float = DEFAULT_WAIT,
        connect_timeout: float = DEFAULT_CONNECT,
        adaptive: tuple[int, int] | None = None,
        keep_bytes: int = DEFAULT_KEEP,
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
        self._adaptive = None if adaptive is None else _check_adaptive(adaptive, local)
        if self._adaptive is not None and self._wanted is None:
            self._wanted = self._adaptive[0] or 1
        self._size = self._wanted or (default_workers() if local else 0)
        self._limit = (
            DEFAULT_IN_FLIGHT
            if max_in_flight is None
            else check_int("max_in_flight", max_in_flight)
        )
        self._wait = _check_seconds("wait_for_workers", wait_for_workers)
        self._connect_timeout = _check_seconds("connect_timeout", connect_timeout, above=True)
        self._keep_bytes = check_int("keep_bytes", keep_bytes, minimum=0)
        self._kept: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._security = security
        self._dashboard = dashboard
        self._given = client
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the client's, once open
        self._cluster: Any = None
        self._in_flight = asyncio.Semaphore(self._limit)
        self._handles: weakref.WeakSet[DaskShared] = weakref.WeakSet()
        self._lanes: dict[str, Lane] = {}
        self._actors: dict[str, Any] = {}  # worker address -> its store actor's future
        self._placements: dict[str, asyncio.Task[None]] = {}  # stores on their way
        self._order: list[Lane] = []  # lanes by address: shard s goes to _order[s % n]
        self._stale = True  # membership changed since the lanes were last synced
        self._joined = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._running = 0  # calls in run(), for the adaptive target
        self._closing = False
        self.traffic = Traffic()
        """Array bytes sent to and returned from the workers, and calls (see Traffic)."""
        self.lost_workers = 0
        """Workers that left or died while the backend used them (for reports)."""

    @property
    def workers(self) -> int:
        """How many workers run shard tasks now (once open: the cluster's size; once
        closed: the last size it had)."""
        return len(self._lanes) if self._client is not None else self._size

    @workers.setter
    def workers(self, value: int) -> None:
        if self._client is not None:
            raise StateError(f"{self!r} is open: change its size with await backend.resize(n)")
        self._size = check_int("workers", value)

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
        self._closing = False
        self._loop = asyncio.get_running_loop()
        try:
            self._client = await self._connect()
            _Events.attach(self._client, self)
            if self._wanted is not None and self._cluster is None:
                await self._await_workers(self._wanted)
            if self._adaptive is not None:
                low, high = self._adaptive
                self._cluster.adapt(minimum=low, maximum=high, Adaptive=self._adaptive_policy)
            await self._sync_lanes()
        except BaseException:
            await self._close()
            raise

    def _adaptive_policy(self, cluster: Any, **options: Any) -> Adaptive:
        return _FollowTasks(cluster, backend=self, **options)

    async def _connect(self) -> Any:
        if self._given is not None:
            loop: Any = self._given.loop
            if loop.asyncio_loop is not asyncio.get_running_loop():
                raise ConfigError(f"{self._given!r} runs on another event loop than this one")
            if self._given.status != "running":  # not awaited yet (its scheduler_info empty)
                raise ConfigError(
                    f"{self._given!r} is {self._given.status}, not running; hand over a "
                    "started client: client = await Client(address, asynchronous=True)"
                )
            return self._given
        if self.address is not None:
            client = _Client(
                self.address,
                asynchronous=True,
                security=self._security,
                set_as_default=False,
                timeout=self._connect_timeout,
            )
            try:
                return await _started(client)
            except BaseException as exc:
                if isinstance(exc, OSError):  # distributed's connect timing out, too
                    raise BackendError(
                        f"cannot reach the Dask scheduler at {self.address!r} within "
                        f"connect_timeout={self._connect_timeout:g} seconds; check the "
                        "address and that the scheduler runs there"
                    ) from exc
                # distributed's "TLS expects a `ssl_context` argument": no TLS settings
                if isinstance(exc, TypeError) and self._tls_unset():
                    raise ConfigError(
                        f"{self.address!r} is a TLS address but no TLS settings were given: "
                        "pass security=distributed.Security(tls_ca_file=..., "
                        "tls_client_cert=..., tls_client_key=...), or set "
                        "distributed.comm.tls.* in Dask's configuration"
                    ) from exc
                raise
        # Ours before it starts, so that _open's clean-up closes it when the start fails
        # or the open is cancelled, once it has started.
        self._cluster = _LocalCluster(**self._local_options())
        await _whole(self._cluster)
        client = _Client(
            self._cluster, asynchronous=True, set_as_default=False, timeout=self._connect_timeout
        )
        return await _started(client)

    async def _await_workers(self, wanted: int) -> None:
        """Return once the cluster has ``wanted`` workers; BackendError naming how many it
        has after ``wait_for_workers`` seconds (distributed's own wait has no deadline)."""
        try:
            async with asyncio.timeout(self._wait):
                await self._client.wait_for_workers(wanted)
                return
        except TimeoutError as exc:
            found = len(await self._client.nthreads())
            if found >= wanted:  # they were there (wait_for_workers=0 has no time to ask)
                return
            raise BackendError(
                f"DaskBackend wanted {wanted} Dask workers and found {found} at the "
                f"scheduler {self._client.scheduler.address} within wait_for_workers="
                f"{self._wait:g} seconds; start more workers, ask for fewer, or raise "
                "DaskBackend(wait_for_workers=...)"
            ) from exc

    def _tls_unset(self) -> bool:
        return str(self.address).startswith("tls://") and self._security is None

    def _local_options(self) -> dict[str, Any]:
        dashboard = self._dashboard
        address = "127.0.0.1:8787" if dashboard is True else (dashboard or None)
        # Even without a dashboard the scheduler serves /health on 8787; keep it on a free
        # loopback port so two local clusters never collide.
        http = {} if address else {"dashboard_address": "127.0.0.1:0"}
        return {
            "n_workers": self._size,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": address,
            "scheduler_kwargs": http,
            "asynchronous": True,
            "worker_class": _Nanny,
        }

    async def _close(self) -> None:
        # The client, its connections and the local cluster live on the opening loop.
        await on_opening_loop(self._loop, self._close_here, closed=self._abandon)

    async def _close_here(self) -> None:
        self._closing = True  # nothing is kept for a later fit: the stores go too
        self._joined.set()  # calls waiting for a worker hear of the close now
        placements, self._placements = list(self._placements.values()), {}
        for placement in placements:
            placement.cancel()  # its store is released (the client is still there)
        await asyncio.gather(*placements, return_exceptions=True)
        for handle in list(self._handles):
            await self.release(handle)
        self._kept.clear()
        lanes, self._lanes, self._order = list(self._lanes.values()), {}, []
        for lane in lanes:
            await lane.close()
        actors, self._actors = list(self._actors.values()), {}
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            _Events.detach(client, self)
            for actor in actors:
                actor.release()
        if client is not None and client is not self._given:
            await client.close()
        if cluster is not None:
            await cluster.close()

    def _abandon(self) -> None:
        """Close without the loop that opened the backend, which is closed: nothing can be
        sent or awaited any more. The local cluster's worker processes are killed and
        reaped (its scheduler and nannies lived on that loop, and its workers would wait
        for them for ever); a remote cluster drops the stores once this process's
        connections to it close. Blocks while the workers are reaped."""
        self._closing = True
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        self._placements, self._lanes, self._order, self._actors = {}, {}, [], {}
        for handle in list(self._handles):
            self._drop_handle(handle)
        self._kept.clear()
        if client is not None:
            _Events.detach(client, self, tell=False)
        if client is not None and client is not self._given:
            _abort_connections(client)
        if cluster is not None:
            _kill_workers(cluster)

    # -- membership ----------------------------------------------------------------------

    def _on_event(self, msg: Mapping[str, Any]) -> None:
        """A scheduler event: a worker joined or left (see :class:`_Events`)."""
        action = msg.get("action")
        if action == "add-worker":
            self._stale = True
            self._joined.set()
            worker = msg.get("worker")
            if isinstance(worker, str):  # its store now: it may take the next step's calls
                self._place_soon(worker)
        elif action == "remove-worker":
            self._stale = True
            address = str(msg.get("worker"))
            self._drop(address, "the scheduler removed it")
            placement = self._placements.pop(address, None)
            if placement is not None:  # its store was on its way: it never will arrive
                placement.cancel()

    def _drop(self, address: str, why: str, only: Lane | None = None) -> None:
        """Stop using the worker at ``address`` (only if its lane is ``only``, if given:
        a worker may have rejoined at that address with a new lane)."""
        if only is not None and self._lanes.get(address) is not only:
            return
        lane = self._lanes.pop(address, None)
        if lane is not None:
            self.lost_workers += 1
            lane.lose(LaneLost(f"Dask worker {address} left: {why}"))
            self._reorder()
        actor = self._actors.pop(address, None)
        if actor is not None:
            actor.release()

    async def _sync_lanes(self, *, wait: bool = True) -> None:
        """Give every worker of the cluster a lane (and a store); forget departed ones.

        A new worker's store is placed in the background (:meth:`_place`): the worker
        takes calls once it has it. With ``wait``, return once the stores are placed, or
        after ``STORE_TIMEOUT`` seconds: a worker busy with other work when it joined
        places its store once that work is done, and stalls no call meanwhile.
        """
        async with self._sync_lock:
            if self._stale:
                self._stale = False  # an event during the sync sets it again
                try:
                    present: dict[str, int] = await self._client.nthreads()
                    self._check_not_closing()  # closed meanwhile: it has no client left
                except BaseException as exc:
                    # Cancelled (the fit was) or failed: the workers that joined have no
                    # lane yet, and without this no later call would look for them again.
                    self._stale = True
                    if isinstance(exc, Exception) and not isinstance(exc, StateError):
                        self._check_not_closing(cause=exc)  # the close broke the call
                        self._check_client()
                    if isinstance(exc, OSError):  # distributed's CommClosedError too
                        raise self._scheduler_lost(repr(exc)) from exc
                    raise
                for address in [a for a in self._lanes if a not in present]:
                    self._drop(address, "it is no longer in the cluster")
                for address in present:
                    self._place_soon(address)
        placing = list(self._placements.values())
        if wait and placing:
            await asyncio.wait(placing, timeout=STORE_TIMEOUT)  # they go on after it
            self._check_not_closing()

    def _place_soon(self, address: str) -> None:
        """Start placing a store on the worker at ``address``, unless it has one coming."""
        if self._client is None or self._closing:
            return
        if address not in self._lanes and address not in self._placements:
            placement = asyncio.get_running_loop().create_task(self._place(address))
            self._placements[address] = placement

    async def _place(self, address: str) -> None:
        """Give the worker at ``address`` a store and a lane, however long its store takes
        to place (a task of the worker's, after those it runs); nothing if it leaves."""
        try:
            future = await self._store_on(address)
        finally:
            if self._placements.get(address) is asyncio.current_task():
                del self._placements[address]
        if future is None:
            return
        self._actors[address] = future
        self._lanes[address] = Lane(address, future.key, self._client.rpc, self.traffic)
        self._reorder()
        self._joined.set()  # a call waiting for a worker takes this one

    def _reorder(self) -> None:
        self._order = sorted(self._lanes.values(), key=lambda lane: lane.address)
        self._size = len(self._lanes)

    async def _store_on(self, address: str) -> Any:
        """A store actor on the worker at ``address`` (its future), or None if it failed.

        It may take long: the store's task runs after the tasks the worker is running. A
        worker that dies or leaves meanwhile never places it (the scheduler keeps the
        task, bound to that worker, waiting for ever): its removal cancels the placement.
        """
        future = self._client.submit(
            WorkerStore,
            actor=True,
            workers=[address],
            allow_other_workers=False,
            pure=False,
            key=f"asynctrain-store-{uuid.uuid4().hex}",
        )
        try:
            await future
        except asyncio.CancelledError:
            future.release()  # no store is left behind on the worker
            raise
        except Exception:
            future.release()
            return None
        return future

    async def _lane_for(self, shard: int | None) -> Lane:
        """The lane of ``shard`` (or the least busy one), waiting for a worker if none.

        Raises StateError once the backend closes: a call it was running hears LaneLost
        and comes back here for another lane, and there is no client left to find one.
        """
        self._check_not_closing()
        self._check_client()
        if self._stale:
            await self._sync_lanes(wait=False)  # a new worker takes calls once it is ready
        if not self._order:
            await self._wait_for_workers()
        lanes = self._order
        if shard is not None:
            return lanes[shard % len(lanes)]
        return min(lanes, key=lambda lane: lane.outstanding)

    async def _wait_for_workers(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while not self._order:
            self._check_not_closing()
            self._joined.clear()
            self._stale = True
            await self._sync_lanes()  # one may have joined before the event was cleared
            if self._order:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise BackendError(
                    f"no Dask worker is left and none joined within wait_for_workers="
                    f"{self._wait:g} seconds; start workers (dask worker <scheduler>, "
                    "cluster.scale(n)) or raise DaskBackend(wait_for_workers=...)"
                )
            try:
                await asyncio.wait_for(self._joined.wait(), left)
            except TimeoutError:
                continue
            self._check_not_closing()

    async def _open_here(self) -> None:
        """Open on first use; refuse another loop than the one that opened the backend
        (its client's, whose futures and connections complete only there)."""
        await self._ensure_open()
        if asyncio.get_running_loop() is not self._loop:
            raise StateError(
                f"{self!r} belongs to the event loop that opened it; use it there "
                "(aclose and release work from any loop)"
            )

    def _check_not_closing(
        self, during: str = "a call ran or waited on it", cause: BaseException | None = None
    ) -> None:
        """Raise StateError if the backend was closed (while ``during`` went on; chained
        to ``cause``, the error the close made it meet)."""
        if self._closing:
            raise StateError(f"{self!r} was closed while {during}") from cause

    def _check_client(self) -> None:
        """Raise if the client in use is closed or closing: StateError for a client
        handed over (its owner closed it under the backend), BackendError for the
        backend's own (it lost its scheduler and gave up reconnecting)."""
        client = self._client
        if client is None or client.status not in ("closing", "closed"):
            return
        if client is self._given:
            raise ClientClosed(
                f"{self!r}: its Dask client {client!r} was closed while the backend used "
                "it; close the DaskBackend (or let its fit end) before the client handed "
                "to it"
            )
        raise self._scheduler_lost(f"its client is {client.status}")

    def _scheduler_lost(self, why: object) -> BackendError:
        return BackendError(
            f"{self!r} lost its Dask scheduler {self._client.scheduler.address}: it stopped "
            f"or cannot be reached ({why}); its workers went with it"
        )

    async def resize(self, workers: int) -> None:
        """Scale the local cluster this backend started to ``workers`` processes.

        Takes effect between steps while a fit runs: tasks already sent to a leaving
        worker finish or are re-run elsewhere, and shards spread over the new pool from
        the next step on. The parameters stay bit-identical to a fixed-size run.
        Concurrent calls take effect one after another.

        Raises:
            ConfigError: the backend did not start its cluster (scale your own cluster:
                the backend follows it), or it adapts (``adaptive=``); a bad count.
            BackendError: the cluster did not reach ``workers`` within
                ``wait_for_workers`` seconds.

        Example:
            >>> async def grow(backend):  # doctest: +SKIP
            ...     await backend.resize(4)
            ...     assert backend.workers == 4
        """
        size = check_int("workers", workers)
        await self._open_here()
        if self._cluster is None:
            raise ConfigError(
                f"{self!r} did not start its cluster, so it cannot resize it; scale the "
                "cluster itself (cluster.scale(n), more dask workers) and the backend "
                "follows it"
            )
        if self._adaptive is not None:
            raise ConfigError(
                f"{self!r} adapts between {self._adaptive} workers; it cannot also be "
                "resized by hand (create it without adaptive=)"
            )
        # One at a time: a resize to 1 made while one to 2 waited for its second worker
        # left that one waiting for ever (Lifecycle.resize's promise, kept here too).
        async with self._open_lock:
            if self.state is State.CLOSED:
                raise StateError(f"{self!r} is closed; create a new DaskBackend")
            try:
                await self._scale(size)
            except Exception as exc:
                # aclose does not wait for a resize: the client and cluster it closed fail
                # the awaits under way in their own ways (or it had dropped them).
                self._check_not_closing("it resized", exc)
                raise

    async def _scale(self, size: int) -> None:
        self._cluster.scale(size)
        await self._cluster  # the cluster's spec realised: workers started or retired
        self._check_not_closing("it resized")
        if size:
            await self._await_workers(size)
            self._check_not_closing("it resized")
        self._size = size
        self._stale = True
        await self._sync_lanes()

    # -- running ---------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on a Dask worker; see :class:`~asynctrain.backends.Backend`.

        Shared handles among ``args`` reach the worker as views of their slots, from what
        the worker keeps; slots the task writes come back with its result. A user
        exception keeps its type (the worker's traceback is in its notes). Cancelling the
        caller drops a call not yet sent; one already sent finishes on its worker (Dask
        cannot interrupt it), unawaited.

        Raises:
            BackendError: the call lost every worker it was sent to (up to
                ``LOST_WORKER_RETRIES + 1``), or no worker was left for
                ``wait_for_workers`` seconds.
            StateError: the backend was closed before or while the call ran.
        """
        await self._open_here()
        call, handles = pack(fn, args)
        shard = call.shard
        self._running += 1
        try:
            async with self._in_flight:
                losses, misses = 0, 0
                while True:
                    lane = await self._lane_for(shard)
                    try:
                        envelope = await lane.submit(call, handles)
                    except LaneLost as exc:
                        self._drop(lane.address, repr(exc), lane)
                        losses += 1
                        if losses > LOST_WORKER_RETRIES:
                            raise BackendError(
                                f"Dask task {_name(fn)} lost {losses} workers that ran it "
                                f"(last: {exc}); look at the workers' logs"
                            ) from exc
                        continue
                    if not envelope.missed:
                        break
                    misses += 1
                    if misses > len(handles) + LOST_WORKER_RETRIES:
                        raise BackendError(
                            f"Dask task {_name(fn)} could not get its shared data to a worker"
                        )
                    for position, cid in envelope.missed:
                        if cid is None:  # it read a slot that a task wrote: send those
                            handles[position].carry_returned()
                        else:  # the worker no longer holds it: send it again
                            lane.known.discard(cid)
        finally:
            self._running -= 1
        if envelope.error is not None:
            raise envelope.error
        for handle, written in zip(handles, envelope.writes, strict=True):
            handle.receive(written, lane.known)
            self.traffic.returned += sum(nbytes(arrays) for _, arrays in written.values())
        result: T = envelope.result
        return result

    def check_picklable(self, *objects: object) -> None:
        """Raise ConfigTypeError if any of ``objects`` cannot be sent to a Dask worker.

        Dask falls back to cloudpickle, so lambdas and closures travel; locks, open files,
        sockets and the like do not.
        """
        for obj in objects:
            try:
                _dumps(obj)
            except AsyncTrainError as exc:  # the object says what is wrong and what to do
                raise ConfigTypeError(
                    f"{obj!r:.120} cannot be sent to a Dask worker: {exc}"
                ) from exc
            except Exception as exc:
                raise ConfigTypeError(
                    f"{obj!r:.120} cannot be sent to a Dask worker ({exc}); keep locks, open "
                    "files and connections out of it, or use backend='thread'"
                ) from exc

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> DaskShared:
        """Make ``arrays`` reachable from the workers; return the handle tasks carry.

        Nothing is sent yet: each worker receives the arrays with its first task that
        uses the handle, and keeps them. A worker that kept equal arrays from an earlier
        fit (see ``keep_bytes``) is not sent them again.
        """
        await self._open_here()
        slots = check_int("slots", slots)
        size = nbytes(arrays)
        cid = None
        if slots == 1 and KEEP_MIN <= size <= self._keep_bytes:  # data, not a buffer
            cid = await off_loop(content_id, arrays)
            if cid in self._kept:
                self._kept.move_to_end(cid)
        handle = DaskShared(readonly(arrays), slots, content_id=cid)
        self._handles.add(handle)
        return handle

    async def release(self, shared: Any) -> None:
        """Have the workers drop what they keep of ``shared`` (tasks already running keep
        theirs); later tasks with it raise StateError.

        Safe on another event loop than the one that opened the backend, as
        :meth:`aclose` is: the workers are told from the opening loop (whose client it
        is), or not at all once that loop is closed (they drop it with the client).
        """
        if not isinstance(shared, DaskShared):
            return
        drop = functools.partial(self._drop_handle, shared)
        await on_opening_loop(self._loop, functools.partial(self._release, shared), closed=drop)

    def _drop_handle(self, shared: DaskShared) -> None:
        self._handles.discard(shared)
        shared.release()

    async def _release(self, shared: DaskShared) -> None:
        self._drop_handle(shared)
        keep, drop = self._keep(shared)
        calls = []
        for lane in self._order:
            kept = [cid for cid in keep if cid in lane.known]
            dropped = [cid for cid in drop if cid in lane.known]
            # Asked by token, not by the ids it knows: a content-named slot's id may have
            # been forgotten here (evicted for another handle) while the worker binds it.
            if not (kept or dropped or shared.token in lane.tokens):
                continue
            lane.tokens.discard(shared.token)
            lane.known = {c for c in lane.known if not c.startswith(shared.token) and c not in drop}
            calls.append(self._forget(lane, shared.token, kept, dropped))
        if self._client is not None and calls:
            await asyncio.gather(*calls)

    def _keep(self, shared: DaskShared) -> tuple[list[str], list[str]]:
        """The contents of ``shared`` the workers keep for later fits (none, or its first
        contents), and the kept ones that make room for them (least recently used)."""
        cid = shared.content_id
        if cid is None or not shared.holds_first() or self._closing:
            return [], []
        self._kept[cid] = nbytes(shared.read(0))
        self._kept.move_to_end(cid)
        drop = []
        while sum(self._kept.values()) > self._keep_bytes:
            old, _ = self._kept.popitem(last=False)
            drop.append(old)
        return ([cid] if cid in self._kept else []), drop

    async def _forget(self, lane: Lane, token: str, keep: list[str], drop: list[str]) -> None:
        try:
            await lane.ask("forget", [token], keep, drop)
        except LaneLost as exc:  # the worker is gone, and what it kept with it
            self._drop(lane.address, repr(exc), lane)
        except ClientClosed:  # the client was closed: its stores went with it
            pass

    async def kept(self, *, later: bool = False) -> dict[str, int]:
        """Bytes of shared contents each worker keeps for this backend's handles, by
        address; with ``later``, the bytes of data each keeps from finished fits for
        later ones instead (see ``keep_bytes``). A worker that is gone (or goes while it
        is asked) is left out, as soon as its connection breaks or the scheduler reports
        it gone.

        Example:
            >>> async def report(backend):  # doctest: +SKIP
            ...     return await backend.kept()
            {'tcp://127.0.0.1:40547': 1048576, 'tcp://127.0.0.1:45741': 1048576}
        """
        await self._open_here()
        kept: dict[str, int] = {}
        for lane in list(self._order):
            try:
                reply = await lane.ask("held")
            except LaneLost as exc:  # it keeps nothing now
                self._drop(lane.address, repr(exc), lane)
                continue
            if reply.get("status") == "OK":
                held = reply["result"]
                kept[lane.address] = sum(v for k, v in held.items() if (k == "kept") is later)
        return kept

    def __repr__(self) -> str:
        where = self.address or ("client" if self._given is not None else "local")
        return f"<DaskBackend {where} workers={self.workers} {self.state}>"


class _Nanny(distributed.Nanny):
    """A nanny that starts its worker with glibc's default ``malloc`` tuning, and leaves
    this process's environment as it found it.

    Dask's nannies export ``MALLOC_TRIM_THRESHOLD_=65536`` to their workers, which also
    turns off glibc's adaptive mmap threshold: every freed block of 128 KB or more (a
    shard's activations, its gradient) goes back to the kernel and is faulted in again on
    the next task. Measured: about a quarter of a worker's CPU time on the reference MLP's
    ``local`` rounds. The local clusters this backend starts keep the default; clusters
    of your own keep their settings.

    A nanny sets its worker's "pre-spawn" variables (``OMP_NUM_THREADS=1`` and the like)
    in *this* process's ``os.environ`` to spawn it, and leaves them there: every process
    the caller starts later would inherit them. They are put back as they were once the
    worker has started (:class:`_SpawnEnvironment`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pre_spawn_env.pop("MALLOC_TRIM_THRESHOLD_", None)
        self.env.pop("MALLOC_TRIM_THRESHOLD_", None)

    async def instantiate(self) -> Any:
        """Start the worker process (also on a restart), the environment restored after."""
        with _SPAWN_ENVIRONMENT.held(self.pre_spawn_env):
            return await super().instantiate()


class _SpawnEnvironment:
    """The variables of this process's environment that nannies starting workers change,
    as they were before the first of them, put back when the last is done (nannies start
    concurrently: a later one must not take the first one's changes for the original)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._saved: dict[str, str | None] = {}

    @contextlib.contextmanager
    def held(self, names: Iterable[str]) -> Iterator[None]:
        with self._lock:
            self._holds += 1
            for name in names:
                self._saved.setdefault(name, os.environ.get(name))
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                if not self._holds:
                    for name, value in self._saved.items():
                        if value is None:
                            os.environ.pop(name, None)
                        else:
                            os.environ[name] = value
                    self._saved.clear()


_SPAWN_ENVIRONMENT = _SpawnEnvironment()


class _Events:
    """One subscription per client to the scheduler's ``"all"`` events, passed on to every
    backend using that client (a client has one handler per topic)."""

    _backends: ClassVar[weakref.WeakKeyDictionary[Any, weakref.WeakSet[DaskBackend]]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def attach(cls, client: Any, backend: DaskBackend) -> None:
        backends = cls._backends.get(client)
        if backends is None:
            backends = cls._backends[client] = weakref.WeakSet()

            def handler(event: tuple[float, Any]) -> None:
                msg = event[1]
                if isinstance(msg, Mapping):
                    for each in list(backends):
                        each._on_event(msg)

            client.subscribe_topic("all", handler)
        backends.add(backend)

    @classmethod
    def detach(cls, client: Any, backend: DaskBackend, *, tell: bool = True) -> None:
        """Stop passing ``client``'s events to ``backend``; the last backend off a client
        unsubscribes it (if ``tell``: not when the client's loop is closed)."""
        backends = cls._backends.get(client)
        if backends is None:
            return
        backends.discard(backend)
        if not backends:
            del cls._backends[client]
            if tell and client.status == "running":
                client.unsubscribe_topic("all")


class _FollowTasks(Adaptive):
    """Adaptive scaling whose target is the backend's shard tasks in flight (Dask's own
    target counts scheduler tasks, and the backend's calls go to actors, not tasks)."""

    def __init__(self, cluster: Any, *, backend: DaskBackend, **options: Any) -> None:
        super().__init__(cluster, **options)
        self._backend = weakref.ref(backend)

    async def target(self) -> int:
        backend = self._backend()
        wanted = 0 if backend is None else backend._running
        return int(max(self.minimum, min(self.maximum, wanted)))


def _abort_connections(client: Any) -> None:
    """Close the sockets of ``client`` (whose loop is closed) without its loop: the
    scheduler sees it gone and drops what it held for it (the stores), as it would when
    this process exits."""
    batched = getattr(client, "scheduler_comm", None)
    comms = [getattr(batched, "comm", None)]
    for pool in (client.rpc.available, client.rpc.occupied):
        comms += [comm for each in pool.values() for comm in each]
    for comm in comms:
        if comm is not None:
            with contextlib.suppress(Exception):  # best effort: the process's exit will do
                comm.abort()
    client.status = "closed"  # its __del__ would make a close coroutine nobody awaits


async def _whole(cluster: Any) -> None:
    """Start ``cluster``, to the end even if the caller is cancelled meanwhile (which then
    hears CancelledError once it has started).

    distributed cannot close a cluster cancelled while its nannies start their workers:
    an assertion fails on a nanny still starting, and its worker process runs on.
    """
    start = asyncio.ensure_future(cluster)
    try:
        await asyncio.shield(start)
    except asyncio.CancelledError:
        while not start.done():
            with contextlib.suppress(asyncio.CancelledError):  # a second cancel, too
                await asyncio.wait([start])
        if not start.cancelled():
            start.exception()  # retrieved: the cancel is what the caller hears
        raise


async def _started(client: Any) -> Any:
    """``client``, connected; closed if it fails or is cancelled (here, not by its
    ``__del__`` at some later collection, on a loop that may be closed by then: "IOLoop is
    closed")."""
    try:
        return await client
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise


def _kill_workers(cluster: Any) -> None:
    """SIGKILL the worker processes of the nannies of ``cluster`` (a LocalCluster whose
    loop is closed) and wait until distributed's watcher threads have reaped them (a join
    here would race them for the exit status; they warn when they lose)."""
    for nanny in list(cluster.workers.values()):
        process = getattr(getattr(nanny, "process", None), "process", None)  # AsyncProcess
        child = getattr(process, "_process", None)  # its multiprocessing.Process
        if process is None or child is None or child.pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        process.close()  # stops its thread that waits for orders from the loop
        # That one and the thread that reaps it (all nannies' threads have the same names):
        # those given it.
        for thread in [t for t in threading.enumerate() if child in getattr(t, "_args", ())]:
            thread.join(STORE_TIMEOUT)


def _check_adaptive(adaptive: Any, local: bool) -> tuple[int, int]:
    if not local:
        raise ConfigError(
            "adaptive= scales a LocalCluster the backend starts; for your own cluster call "
            "cluster.adapt(...) on it (the backend follows it)"
        )
    if not isinstance(adaptive, tuple) or len(adaptive) != 2:
        raise ConfigTypeError(f"adaptive must be a (minimum, maximum) pair, got {adaptive!r}")
    low = check_int("adaptive minimum", adaptive[0], minimum=0)
    high = check_int("adaptive maximum", adaptive[1])
    if low > high:
        raise ConfigError(f"adaptive minimum {low} exceeds its maximum {high}")
    return low, high


def _check_seconds(name: str, value: Any, *, above: bool = False) -> float:
    """``value`` as seconds: finite and >= 0 (> 0 if ``above``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value > 0 if above else value >= 0) or value == float("inf"):
        bound = "> 0" if above else ">= 0"
        raise ConfigError(f"{name} must be finite and {bound} seconds, got {value!r}")
    return float(value)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))
