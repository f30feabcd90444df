"""One Dask worker as the backend sees it: its store actor, what it holds, and a batch.

Calls for a worker made in the same turn of the event loop (the shards of one step) are
sent together, in one message straight to the worker's
:class:`~asynctrain.backends._dask_worker.WorkerStore` actor, and their envelopes come
back together in the reply: no scheduler hop, no per-task ``result()``. At most one batch
per worker is in flight, so the worker receives contents before the ids that refer to
them; calls made meanwhile wait and go in the next batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from distributed.protocol.serialize import to_serialize

from asynctrain._exceptions import BackendError, StateError
from asynctrain.backends._dask_shared import Call, Content, DaskShared, Envelope, nbytes

# distributed is only partly typed.
_to_serialize: Any = to_serialize
MAX_BATCH = 256  # calls per message to one worker


@dataclass
class Traffic:
    """Array bytes that crossed between the owner and the workers, and calls sent.

    ``sent`` counts slot contents sent to workers (the dataset once per worker, each
    parameter version once per worker that uses it); ``returned`` counts slots that
    tasks wrote and sent back (gradients). Arguments other than shared handles (indices,
    ids) are not counted: they are small.
    """

    sent: int = 0
    returned: int = 0
    calls: int = 0
    batches: int = 0


class LaneLost(BackendError):
    """The worker went away (died, retired) before it answered: run the call elsewhere."""


class _Item:
    __slots__ = ("call", "future", "handles")

    def __init__(self, call: Call, handles: list[DaskShared], future: asyncio.Future[Envelope]):
        self.call, self.handles, self.future = call, handles, future


class Lane:
    """The calls on their way to one worker, and the slot ids that worker holds.

    Args:
        address: the worker's address.
        actor: the key of its store actor (the backend holds the actor's future).
        rpc: the client's connection pool (``client.rpc``).
        traffic: the backend's counters, which this lane adds to.
    """

    def __init__(self, address: str, actor: str, rpc: Any, traffic: Traffic) -> None:
        self.address = address
        self.traffic = traffic
        self.actor = actor
        self._rpc = rpc
        self.known: set[str] = set()
        self.tokens: set[str] = set()  # handles whose tasks came here: it may bind their slots
        self.lost: BaseException | None = None
        self.sent = 0  # calls sent, for reports
        self._pending: list[_Item] = []
        self._flying: list[_Item] = []  # the batch in flight (at most one)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def outstanding(self) -> int:
        """Calls queued or in flight on this worker."""
        return len(self._pending) + len(self._flying)

    def submit(self, call: Call, handles: list[DaskShared]) -> asyncio.Future[Envelope]:
        """Queue ``call`` for this worker's next batch; its future gets the envelope (or
        :class:`LaneLost`). Cancelling the future before the batch leaves drops the call."""
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            future.set_exception(LaneLost(f"Dask worker {self.address} is gone"))
            return future
        self._pending.append(_Item(call, handles, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if not self._scheduled and not self._flying:
            self._scheduled = True
            # After the tasks that are ready now have run: a step's shards join one batch.
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._flying or self.lost is not None:
            return
        items: list[_Item] = []
        batch: list[tuple[Call, list[Any]]] = []
        while self._pending and len(items) < MAX_BATCH:
            item = self._pending.pop(0)
            if item.future.done():  # cancelled while it waited: it never starts
                continue
            try:
                carried = [handle.carried(self.known) for handle in item.handles]
            except BaseException as exc:  # a released handle: this caller hears of it
                item.future.set_exception(exc)
                continue
            items.append(item)
            batch.append((item.call, carried))
            self.tokens.update(handle.token for handle in item.handles)
            self.traffic.sent += sum(
                nbytes(c.payload.arrays)
                for slots in carried
                for c in slots
                if isinstance(c, Content)
            )
        if not items:
            return
        self._flying = items
        self.traffic.calls += len(items)
        self.traffic.batches += 1
        task = asyncio.get_running_loop().create_task(self._send(items, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[_Item], batch: list[tuple[Call, list[Any]]]) -> None:
        try:
            reply = await self._rpc(self.address).actor_execute(
                actor=self.actor,
                function="execute",
                args=[_to_serialize(batch)],
                kwargs={},
            )
            if reply.get("status") != "OK":
                raise LaneLost(f"Dask worker {self.address} refused the batch: {reply}")
        except asyncio.CancelledError:
            self.lose(LaneLost(f"the batch to Dask worker {self.address} was cancelled"))
            raise
        except (OSError, KeyError, LaneLost) as exc:
            # The connection broke, or the worker has no store (a new worker at its
            # address) or refused the batch: it died or is leaving.
            self.lose(exc)
            return
        except Exception as exc:
            if pool_closed(self._rpc):  # the user closed the client: nothing can be sent
                self._fail(items, exc, client_closed(self.address, exc))
                return
            # The worker answered: the batch or its reply did not cross.
            self._fail(items, exc)
            return
        self._flying = []
        self.sent += len(items)
        for item, envelope in zip(items, reply["result"], strict=True):
            if not item.future.done():
                item.future.set_result(envelope)
        if self._pending:
            self._schedule()

    async def ask(self, function: str, *args: Any) -> dict[str, Any]:
        """The reply of the worker's store to ``function(*args)``, outside the batches
        (bookkeeping: what it holds, what it may forget).

        Raises:
            LaneLost: the worker went away first: its connection broke, it has no store,
                or it was lost (:meth:`lose`), which ends the wait at once: a question
                to a worker that died may be asking for a new connection, which
                distributed retries until its connect timeout (30 s by default).
        """
        if self.lost is not None:
            raise LaneLost(f"Dask worker {self.address} is gone")
        task = asyncio.ensure_future(
            self._rpc(self.address).actor_execute(
                actor=self.actor, function=function, args=list(args), kwargs={}
            )
        )
        self._tasks.add(task)  # lose() cancels it
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait((task,))
        finally:
            task.cancel()  # the caller was cancelled: its question goes too
        if task.cancelled():
            raise LaneLost(f"Dask worker {self.address} went away: {self.lost!r}")
        try:
            reply: dict[str, Any] = task.result()
        except (OSError, KeyError) as exc:  # as for a batch: it died, or is a new worker
            raise LaneLost(f"Dask worker {self.address} did not answer: {exc!r}") from exc
        except Exception as exc:
            if pool_closed(self._rpc):
                raise client_closed(self.address, exc) from exc
            raise
        return reply

    def _fail(self, items: list[_Item], why: Exception, error: BaseException | None = None) -> None:
        """Fail the calls of a batch that reached a worker still there, which could not
        read it (a module of the function missing there) or whose reply could not be read
        here: re-running them elsewhere would fail the same way, and cost a healthy
        worker its store (they were taken for lost workers, 4 times over)."""
        self._flying = []
        for item in items:
            if not item.future.done():
                if error is None:
                    failed: BaseException = BackendError(
                        f"Dask worker {self.address} could not read a batch of calls, or "
                        f"this process its reply: {why!r}; the workers need every module the "
                        "function, its arguments and its result use"
                    )
                else:
                    failed = ClientClosed(str(error))
                failed.__cause__ = why
                item.future.set_exception(failed)
        if self._pending:
            self._schedule()

    def lose(self, why: BaseException) -> None:
        """Mark the worker gone: every call queued or in flight hears :class:`LaneLost`
        now, and a send still under way is cancelled.

        The calls in flight do not wait for their send to fail: a send to a worker that
        died may be asking for a new connection, which distributed retries until its
        connect timeout (30 s by default), long after the scheduler reported the worker
        gone.
        """
        if self.lost is None:
            self.lost = why
        for item in [*self._flying, *self._pending]:
            if not item.future.done():
                lost = LaneLost(f"Dask worker {self.address} went away: {why!r}")
                item.future.set_exception(lost)
        self._flying, self._pending = [], []
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        """Stop sending (batches in flight are abandoned: their callers hear LaneLost)."""
        self.lose(LaneLost(f"the backend stopped using Dask worker {self.address}"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<Lane {self.address} outstanding={self.outstanding} sent={self.sent}>"


class ClientClosed(StateError):
    """The ``distributed.Client`` the backend uses was closed under it (by its owner)."""


def pool_closed(rpc: Any) -> bool:
    """Whether the client's connection pool ``rpc`` is closed (the client was closed)."""
    status = getattr(rpc, "status", None)
    return getattr(status, "name", None) == "closed"


def client_closed(address: str, cause: BaseException) -> ClientClosed:
    """The error of a call or question to ``address`` that met a closed client."""
    return ClientClosed(
        f"the Dask client was closed while a call to worker {address} ran or waited "
        f"({cause!r}); close the DaskBackend (or let its fit end) before the client "
        "handed to it"
    )
