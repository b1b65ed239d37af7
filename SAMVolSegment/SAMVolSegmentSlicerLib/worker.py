"""One persistent worker thread for every engine call, and a main-thread wait that keeps the GUI alive.

Why one thread, always the same: cuDNN/cuBLAS keep their benchmark and plan caches per thread, and
SlicerNNInteractive measured about 1.2 s per interaction with a fresh thread against 0.11 s on a warm one
(RTX 4090). Why the main thread waits instead of taking a callback: the caller needs the result to update
MRML, and MRML/Qt may only be touched on the main thread; pumping events meanwhile keeps Slicer responsive.

Nothing here imports Qt: the caller injects ``process_events`` (``slicer.app.processEvents``) and an
``on_slow(elapsed_s, fraction, message)`` callback that shows progress once a call takes longer than
``slow_after_s``. Engine progress callbacks run on the worker thread, so they only store the latest value in
a :class:`ProgressCell` that the waiting main thread reads.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Callable, Optional, Tuple

#: Delay before a slow call shows progress: short calls (a decode, ~50 ms) should not flash a dialog.
DEFAULT_SLOW_AFTER_S = 0.5
#: Main-thread polling period while waiting; short enough for smooth rendering, long enough to idle.
DEFAULT_POLL_S = 0.03

SlowCallback = Callable[[float, Optional[float], str], None]


class WorkerBusyError(RuntimeError):
    """A call was started while another one is still being waited on (a re-entrant click)."""


class ProgressCell:
    """Latest ``(fraction, message)`` reported from any thread; readable from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Tuple[Optional[float], str] = (None, "")

    def __call__(self, fraction: float, message: str) -> None:
        """Store a report; signature of the engine's ``progress`` callback."""
        with self._lock:
            self._value = (float(fraction), str(message))

    def get(self) -> Tuple[Optional[float], str]:
        """The latest report; fraction is None before any report."""
        with self._lock:
            return self._value

    def reset(self) -> None:
        """Forget the last report (at the start of a call)."""
        with self._lock:
            self._value = (None, "")


class EngineWorker:
    """A single daemon thread that runs submitted callables in order."""

    def __init__(self, name: str = "SAMVolSegment-engine") -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._waiting = False
        self.progress = ProgressCell()
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The worker thread (for tests and diagnostics)."""
        return self._thread

    @property
    def busy(self) -> bool:
        """True while :meth:`run` waits for a call; the module drops clicks that arrive meanwhile."""
        return self._waiting

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)`` on the worker thread; the future carries its result or exception."""
        if self._closed:
            raise RuntimeError("The engine worker was closed; reload the module to start a new one.")
        future: Future = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        process_events: Optional[Callable[[], None]] = None,
        on_slow: Optional[SlowCallback] = None,
        slow_after_s: float = DEFAULT_SLOW_AFTER_S,
        poll_s: float = DEFAULT_POLL_S,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn`` on the worker and wait for it here, pumping ``process_events`` every ``poll_s``.

        ``on_slow(elapsed_s, fraction, message)`` is called at each poll once ``slow_after_s`` has passed.
        An exception raised by ``fn`` is raised again here, with its original traceback.

        Raises:
            WorkerBusyError: another :meth:`run` is already waiting (re-entrant call from a pumped event).
        """
        if self._waiting:
            raise WorkerBusyError("The previous step is still running; wait for it to finish.")
        self._waiting = True
        self.progress.reset()
        try:
            future = self.submit(fn, *args, **kwargs)
            start = time.monotonic()
            while True:
                try:
                    # On Python < 3.11 this TimeoutError is not the builtin one.
                    return future.result(timeout=poll_s)
                except FutureTimeoutError:
                    # Either the wait timed out or fn raised a TimeoutError of its own. The future may also
                    # have finished between the timeout and this line: then its own outcome is the answer
                    # (a result, or fn's exception), never the wait's timeout.
                    if future.done():
                        return future.result()
                if process_events is not None:
                    process_events()
                elapsed = time.monotonic() - start
                if on_slow is not None and elapsed >= slow_after_s:
                    fraction, message = self.progress.get()
                    on_slow(elapsed, fraction, message)
        finally:
            self._waiting = False

    def close(self, timeout: Optional[float] = 5.0) -> None:
        """Finish queued work and stop the thread (called when the module is cleaned up)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # delivered to the waiting thread, never lost
                future.set_exception(exc)
            else:
                future.set_result(result)
