"""The in-order background worker the classify loop writes its maps through."""

from __future__ import annotations

import threading
import time

import pytest

from mscn_geo.background import InOrderWorker


def test_calls_run_in_order_on_another_thread_and_close_waits() -> None:
    seen: list[tuple[int, str]] = []
    with InOrderWorker(depth=2) as worker:
        for i in range(20):
            worker.submit(
                lambda i: (time.sleep(0.001), seen.append((i, threading.current_thread().name))), i
            )
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"mscn-geo-writer"}


def test_an_error_is_raised_in_the_caller_and_stops_later_calls() -> None:
    ran: list[int] = []

    def call(i: int) -> None:
        if i == 3:
            raise OSError("disk full")
        ran.append(i)

    worker = InOrderWorker(depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            worker.submit(call, i)
            time.sleep(0.002)
    worker.close(cancel=True)
    assert ran == [0, 1, 2]


def test_close_raises_an_error_of_the_last_calls() -> None:
    worker = InOrderWorker()
    worker.submit(lambda: None)
    worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        worker.close()


def test_an_exception_in_the_block_drops_the_waiting_calls() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def slow(i: int) -> None:
        started.set()
        release.wait(5)
        ran.append(i)

    with pytest.raises(KeyboardInterrupt), InOrderWorker(depth=3) as worker:
        worker.submit(slow, 0)
        started.wait(5)
        worker.submit(slow, 1)
        worker.submit(slow, 2)
        threading.Timer(0.2, release.set).start()  # after the exit has cancelled
        raise KeyboardInterrupt
    assert ran == [0]  # the running call finished; the waiting ones never ran
