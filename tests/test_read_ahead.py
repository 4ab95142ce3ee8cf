"""The paging under a copy: read ahead (order, errors at the page where they happened, early stops)
and pages gathered to the target's write size."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vecflow.backends.base import gathered
from vecflow.backends.read_ahead import in_reader_thread, read_ahead
from vecflow.batch import Batch
from vecflow.errors import BackendError


def test_items_arrive_in_order_and_are_produced_on_another_thread():
    produced_on: list[bool] = []

    def pages():
        for i in range(10):
            produced_on.append(in_reader_thread())
            yield i

    assert list(read_ahead(pages(), depth=2)) == list(range(10))
    assert produced_on == [True] * 10 and not in_reader_thread()


def test_an_error_reading_is_raised_in_the_caller_after_the_pages_before_it():
    def pages():
        yield "first"
        yield "second"
        raise BackendError("redis store at redis://127.0.0.1:1 is unreachable")

    got = []
    with pytest.raises(BackendError, match="unreachable"):
        for item in read_ahead(pages()):
            got.append(item)
    assert got == ["first", "second"]


def test_the_reader_stays_at_most_depth_items_ahead_and_stops_when_closed():
    produced: list[int] = []
    finished = threading.Event()

    def pages():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            finished.set()

    items = read_ahead(pages(), depth=3)
    assert next(items) == 0
    items.close()
    assert finished.is_set()  # the source's own loop was closed, on the reader's thread
    assert len(produced) <= 1 + 3 + 1  # the one handed over, the queue, the one being offered


def test_pages_are_gathered_to_the_write_size_each_group_with_the_cursor_after_its_last_page():
    def page(first: int, n: int) -> Batch:
        return Batch([f"r{i}" for i in range(first, first + n)], np.zeros((n, 2), np.float32), [None] * n, [{}] * n)

    pages = [(page(0, 15), "c1"), (page(15, 15), "c2"), (page(30, 15), "c3"), (page(45, 15), "c4"),
             (page(60, 10), None)]
    groups = list(gathered(iter(pages), 40))
    assert [[len(p) for p in group] for group, _ in groups] == [[15, 15, 15], [15, 10]]
    assert [cursor for _, cursor in groups] == ["c3", None]
    assert [rid for group, _ in groups for p in group for rid in p.ids] == [f"r{i}" for i in range(70)]
    assert [len(group) for group, _ in gathered(iter(pages), 1)] == [1, 1, 1, 1, 1]


def test_a_caller_waiting_for_a_slow_read_keeps_its_lease_on_its_own_thread():
    release = threading.Event()
    kept_on: list[str] = []

    def pages():
        release.wait(10)  # a read retrying while its store is away
        yield "page"

    def keep_lease():
        kept_on.append(threading.current_thread().name)
        if len(kept_on) == 3:
            release.set()

    assert list(read_ahead(pages(), while_waiting=keep_lease, every=0.05)) == ["page"]
    assert len(kept_on) >= 3 and set(kept_on) == {threading.current_thread().name}
