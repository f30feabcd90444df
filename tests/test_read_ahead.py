"""ReadAhead: the same items, errors and end as the wrapped iterator, one made ahead on a
thread, and nothing left running once it is closed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from asynctrain.data._ahead import ReadAhead


def _numbers(n: int, made: list[int], *, fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"item {i} is bad")
        made.append(i)
        yield i


def test_the_items_come_in_order_and_the_next_is_made_ahead() -> None:
    made: list[int] = []
    with ReadAhead(_numbers(5, made)) as items:
        first = next(items)
        items._next.result()  # type: ignore[union-attr]  # wait for the item made ahead
        assert (first, made) == (0, [0, 1])
        assert [first, *items] == [0, 1, 2, 3, 4]


def test_an_error_comes_where_the_iterator_raised_it_and_ends_the_iteration() -> None:
    with ReadAhead(_numbers(5, [], fail_at=3)) as items:
        got = [next(items) for _ in range(3)]
        with pytest.raises(ValueError, match="item 3 is bad"):
            next(items)
        assert list(items) == []
    assert got == [0, 1, 2]


def test_closing_early_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    before = set(threading.enumerate())
    items = ReadAhead(source())
    assert next(items) == 0
    items.close()
    assert closed.is_set()
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert list(items) == []
