"""Structured concurrency helpers: run coroutines in a TaskGroup, keep errors readable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import NoReturn, TypeVar

T = TypeVar("T")


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the exception to raise for a TaskGroup's failures.

    When every failure has the same type (one shard failed, or every shard hit the same
    bug in user model code) the first one is returned, with a note counting the others,
    so it reaches the caller with its own type and traceback. Failures of different
    types stay an ExceptionGroup.
    """
    leaves = list(_leaves(group))
    first = leaves[0]
    if any(type(leaf) is not type(first) for leaf in leaves):
        return group
    if len(leaves) > 1:
        first.add_note(f"({len(leaves) - 1} more concurrent task(s) raised {type(first).__name__})")
    return first


def raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise :func:`unwrap_group`'s choice with its own chain intact; call it where the
    TaskGroup's ``group`` is caught.

    ``raise unwrap_group(group) from None`` erased the error's own ``__cause__`` (its
    ``raise ... from``); and any raise inside an ``except`` replaces the error's
    ``__context__`` (what it was raised while handling) with the group caught there. So
    the error is raised plainly, and the context it came with put back as it leaves.
    """
    error = unwrap_group(group)
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def gather_ordered(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run awaitables concurrently in a TaskGroup; return their results in input order.

    If one fails, the others are cancelled and its exception is raised unwrapped.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(aw)) for aw in aws]
    except BaseExceptionGroup as eg:
        raise_unwrapped(eg)
    return [task.result() for task in tasks]


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw
