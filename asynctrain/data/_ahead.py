"""Reading one item ahead: an iterator whose next item is made on a thread of its own
while the caller works on the current one.

A Parquet stream decodes a chunk of rows (pyarrow's decoding and numpy's conversion
release the GIL) while the chunk before it goes through the shuffle buffer and into
training, so decoding overlaps training instead of stalling it: without it, the step
that needs the next row group waits for the whole decode. The items come in the same
order, with the same errors in the same places, as from the wrapped iterator; memory
grows by one item.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END: Any = object()


class ReadAhead(Generic[T]):
    """Iterate ``items``, each next one made on a thread while the caller handles the
    current one; a context manager that stops the thread (waiting for an item in
    progress) and closes ``items``.

    Raises:
        Whatever ``items`` raises, where it would have raised it; the iteration ends
        there.

    Example:
        >>> with ReadAhead(iter(range(3))) as items:
        ...     list(items)
        [0, 1, 2]
    """

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="asynctrain-read-ahead"
        )
        self._next: concurrent.futures.Future[T] | None = self._thread.submit(next, items, _END)

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._next is None:
            raise StopIteration
        try:
            item = self._next.result()
        except BaseException:
            self._next = None
            raise
        if item is _END:
            self._next = None
            raise StopIteration
        self._next = self._thread.submit(next, self._items, _END)
        return item

    def close(self) -> None:
        """Stop reading ahead: wait for an item in progress, then close ``items``."""
        self._next = None
        self._thread.shutdown(wait=True, cancel_futures=True)
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
