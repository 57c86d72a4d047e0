"""One background thread that runs calls in the order they were given.

The classify loop hands each finished batch to the map writer through it, so
painting and compressing strips (numpy and GDAL, both of which release the
GIL) run while the model works on the next batch instead of between batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["InOrderWorker"]

_STOP = object()


class InOrderWorker:
    """Runs submitted calls one by one, in order, on its own thread.

    At most ``depth`` calls wait (a producer faster than the calls blocks). The
    first error a call raises is raised again in the caller's thread by the next
    :meth:`submit` or by :meth:`close`, and no later call runs. Use as a context
    manager: a clean exit waits for every call; an exit by an exception drops
    the calls not yet started and waits only for the running one.
    """

    def __init__(self, depth: int = 2, name: str = "mscn-geo-writer") -> None:
        self._calls: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            if self._error is not None or self._cancel.is_set():
                continue  # drained without running after an error or a cancel
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises the error of an earlier call, if any."""
        self._raise()
        self._calls.put((fn, args))

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """``fn`` as a callable that queues its calls here."""
        return lambda *args: self.submit(fn, *args)

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued calls (``cancel``: only the running one); raise their error."""
        if cancel:
            self._cancel.set()
        self._calls.put(_STOP)
        self._thread.join()
        if not cancel:
            self._raise()

    def __enter__(self) -> InOrderWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None)
