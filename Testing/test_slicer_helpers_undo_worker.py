"""Undo records and the single engine worker thread of the Slicer module (no Slicer, no Qt)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMVolSegment"))

from SAMVolSegmentSlicerLib.undo_stack import EditStep, Prompt, RegionEdit
from SAMVolSegmentSlicerLib.worker import EngineWorker, ProgressCell, WorkerBusyError


def make_step(n: int) -> EditStep:
    bbox = ((0, 1), (0, 1), (0, n + 1))
    before = np.zeros((1, 1, n + 1), bool)
    after = before.copy()
    after[0, 0, n] = True
    return EditStep(Prompt("point", True, (float(n), 0.0, 0.0), f"cp{n}"), (RegionEdit("seg", bbox, before, after),))


def test_edit_step_counts_its_bytes_and_takes_a_new_marker_id():
    step = make_step(3)
    assert step.nbytes == 2 * 4  # before + after, bool bytes
    step.prompt = Prompt("point", True, step.prompt.position_ras, "node:7")  # redo re-creates the marker
    assert step.prompt.marker_id == "node:7"


def test_region_edit_checks_shapes():
    with pytest.raises(ValueError, match="do not match"):
        RegionEdit("s", ((0, 2), (0, 1), (0, 1)), np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool))


@pytest.fixture
def worker():
    w = EngineWorker()
    yield w
    w.close()


def test_all_calls_run_on_one_persistent_thread(worker):
    names = {worker.run(lambda: threading.current_thread().name) for _ in range(5)}
    assert names == {worker.thread.name}
    assert worker.thread is not threading.current_thread()


def test_main_thread_pumps_events_and_sees_progress(worker):
    pumped = []
    slow_reports = []

    def job():
        worker.progress(0.25, "encoding")
        time.sleep(0.3)
        return 42

    result = worker.run(
        job,
        process_events=lambda: pumped.append(threading.current_thread()),
        on_slow=lambda elapsed, fraction, message: slow_reports.append((elapsed, fraction, message)),
        slow_after_s=0.1,
        poll_s=0.01,
    )
    assert result == 42
    assert len(pumped) >= 5 and all(t is threading.current_thread() for t in pumped)
    assert slow_reports and slow_reports[-1][1:] == (0.25, "encoding") and slow_reports[0][0] >= 0.1


def test_fast_call_shows_no_progress(worker):
    reports = []
    worker.run(lambda: None, on_slow=lambda *a: reports.append(a), slow_after_s=5.0)
    assert reports == []


def test_worker_exceptions_reach_the_caller_and_worker_survives(worker):
    def fail():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        worker.run(fail)

    def timeout():
        raise TimeoutError("engine timeout")

    with pytest.raises(TimeoutError, match="engine timeout"):
        worker.run(timeout)
    assert worker.run(lambda: "alive") == "alive"


def test_reentrant_run_is_refused(worker):
    inner_errors = []

    def pump():
        try:
            worker.run(lambda: None)
        except WorkerBusyError as exc:
            inner_errors.append(exc)

    worker.run(lambda: time.sleep(0.1), process_events=pump, poll_s=0.01)
    assert inner_errors and not worker.busy


def test_progress_cell_and_close():
    cell = ProgressCell()
    assert cell.get() == (None, "")
    cell(0.5, "half")
    assert cell.get() == (0.5, "half")
    w = EngineWorker()
    w.close()
    assert not w.thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(lambda: None)


def test_a_result_that_lands_just_after_the_wait_timed_out_is_returned(worker, monkeypatch):
    """worker.py race: the wait times out, then the call finishes before ``done()`` is asked."""
    from concurrent.futures import Future
    from concurrent.futures import TimeoutError as FutureTimeoutError

    class LateFuture(Future):
        def result(self, timeout=None):
            if not self.done():
                self.set_result("late")  # finishes right after the wait gave up
                raise FutureTimeoutError()
            return super().result(timeout)

    monkeypatch.setattr(worker, "submit", lambda fn, *a, **k: LateFuture())
    assert worker.run(lambda: None) == "late"
