"""The worker's decode-ahead thread: order kept, errors surface in the job, an abandoned job stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing

import pytest

from gateway.enhance.worker import _prefetch


def test_items_arrive_in_order() -> None:
    assert list(_prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_producer_error_is_raised_in_the_consumer_after_earlier_items() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk read failed")

    got: list[int] = []
    with pytest.raises(OSError, match="disk read failed"):
        got.extend(_prefetch(source(), depth=2))
    assert got == [1, 2]


def test_consumer_that_stops_early_stops_the_producer() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    items = _prefetch(source(), depth=2)
    with closing(items):
        assert next(items) == 0
    # the producer ran at most `depth` items ahead plus the one it was holding, and its thread is gone
    assert len(produced) <= 4
    assert threading.active_count() == before


def test_consumer_that_stops_after_the_source_is_exhausted_does_not_hang() -> None:
    """The producer finished and waits to hand over its end marker to a full queue: closing must not hang."""
    items = _prefetch(iter(range(2)), depth=1)
    assert next(items) == 0
    closer = threading.Thread(target=items.close)
    closer.start()
    closer.join(timeout=5.0)
    assert not closer.is_alive(), "closing the prefetcher hung on a producer blocked on a full queue"
