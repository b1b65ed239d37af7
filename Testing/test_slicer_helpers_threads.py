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


@pytest.mark.parametrize(("choice", "expected"), [("1", "1,1"), ("4", "4,2"), ("auto", "1,1"), ("", "1,1")])
def test_the_settings_choice_wins_over_the_environment(choice, expected):
    assert local_session.slicerThreads(environ={ENV_THREADS: "1"}, cpus=8, choice=choice) == expected


def test_the_choices_are_automatic_then_one_to_the_cpus(monkeypatch):
    monkeypatch.setenv(ENV_THREADS, "all")  # malformed: the panel still opens (a session reports it)
    assert local_session.threadChoices(cpus=2)[0] == ("auto", "Automatic")
    monkeypatch.delenv(ENV_THREADS)
    choices = local_session.threadChoices(cpus=4)
    assert [value for value, _label in choices] == ["auto", "1", "2", "3", "4"]
    assert choices[0][1].startswith("Automatic (") and choices[1][1] == "1 thread, 1 per click"
    assert choices[4][1] == "4 threads, 2 per click"
    assert len(local_session.threadChoices(cpus=64)) == 17


def test_the_cpu_threads_setting_is_kept_and_reaches_sessions_and_segment_volume(monkeypatch):
    """On Slicer's real MRML (``real_slicer``; Qt stand-ins): the panel's choice is stored like the other settings,
    read back after a restart, remakes the session with those threads, and ``segmentVolume`` runs with them."""
    import real_slicer

    if not real_slicer.available():
        pytest.skip("slicer-core is not installed (Python >= 3.10)")
    import numpy as np

    monkeypatch.delenv(ENV_THREADS, raising=False)
    slicer = real_slicer.install()
    from SAMVolSegmentSlicerLib import segment_volume

    import SAMVolSegment as module

    widgets: list = []
    try:
        widget = real_slicer.showWidget(module, local_session.localSession, widgets)  # the module's default
        ui, logic = widget.ui, widget.logic
        assert ui.threadsComboBox.currentData == "auto" and logic.threads == "auto"
        logic.loadModel()
        assert logic.session.predictor.threads == ThreadPolicy.parse(local_session.slicerThreads())

        ui.threadsComboBox.setCurrentIndex(ui.threadsComboBox.findData("1"))
        assert real_slicer.state().settings["SAMVolSegment/threads"] == "1" and logic.threads == "1"
        first = logic.session
        logic.loadModel()  # the next click or Load model: a new session with the new threads, same model
        assert logic.session is not first and logic.session.predictor.threads == ThreadPolicy(1, 1)

        used = []
        run = segment_volume.batch.segment_volume
        monkeypatch.setattr(segment_volume.batch, "segment_volume",
                            lambda model, *args, **kwargs: used.append(model.threads) or run(model, *args, **kwargs))
        volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, (20, 20, 20)).astype(np.float32))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        logic.segmentVolume(volume, segmentation, [[10.0, 10.0, 10.0]], [1])
        assert used == [ThreadPolicy(1, 1)]

        restarted = real_slicer.showWidget(module, local_session.localSession, widgets)
        assert restarted.ui.threadsComboBox.currentData == "1" and restarted.logic.threads == "1"
        restarted.ui.backendComboBox.setCurrentIndex(restarted.ui.backendComboBox.findData("remote"))
        assert not restarted.ui.threadsComboBox.enabled  # a server runs its own threads
    finally:
        for widget in widgets:
            widget.cleanup()
