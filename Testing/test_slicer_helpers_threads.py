"""The model's threads in Slicer: the user's $SAMVOLSEG_THREADS, else a core left for Slicer's GUI thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SAMVolSegment"))

from SAMVolSegmentSlicerLib import local_session  # noqa: E402

from SAMVolSegmentLib.engine.threads import ENV_THREADS, ThreadPolicy, available_cpus  # noqa: E402


@pytest.mark.parametrize(("cpus", "expected"), [(1, "1,1"), (2, "1,1"), (4, "3,2"), (16, "8,2")])
def test_the_gui_keeps_a_core(cpus, expected):
    assert local_session.slicerThreads(environ={}, cpus=cpus) == expected


def test_the_environment_variable_wins_and_is_checked():
    assert local_session.slicerThreads(environ={ENV_THREADS: "4,2"}, cpus=2) == "4,2"
    assert local_session.slicerThreads(environ={ENV_THREADS: "3"}, cpus=2) == "3,2"
    with pytest.raises(ValueError, match="N or ENCODER,DECODER"):
        local_session.slicerThreads(environ={ENV_THREADS: "all"}, cpus=2)


def test_a_local_session_in_slicer_uses_that_policy(monkeypatch):
    monkeypatch.delenv(ENV_THREADS, raising=False)
    session = local_session.localSession("default", "cpu", False, None)
    spare = max(1, available_cpus() - 1)
    expected = ThreadPolicy(encoder=min(spare, 8), decoder=min(spare, 2))
    assert session.predictor.threads == expected
    session.close()
