"""The module's backend choice (local model / remote server) against a REAL uvicorn server on 127.0.0.1.

The Widget and Logic run on Slicer's real MRML (``real_slicer``: slicer-core, Qt stand-ins); the server is ``samvolseg serve``'s app with
a tiny model (as in ``test_remote.py``). Covers: the UI's URL/token/CA file reach ``RemoteSession``; the token
never lands in the scene and reaches QSettings only when remembered; Test connection's messages; switching
backend in the middle of a segment.
"""

from __future__ import annotations

import shutil
import socket
import types
from typing import List

import numpy as np
import pytest
import real_slicer
from test_slicer_module_real import (
    CENTRE,
    SHAPE,
    assert_clean,
    ball_session,
    ijk_to_ras,
    segment_array,
    state,
)

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")

from test_remote import TINY, running_server  # noqa: E402

from SAMVolSegmentLib import segment  # noqa: E402
from SAMVolSegmentLib.engine.session import InteractiveSession  # noqa: E402
from SAMVolSegmentLib.model import load_model  # noqa: E402
from SAMVolSegmentLib.model.clicknet import ClickNet  # noqa: E402
from SAMVolSegmentLib.model.registry import resolve_model_path  # noqa: E402
from SAMVolSegmentLib.remote import ServerConfig  # noqa: E402
from SAMVolSegmentLib.remote import client as remote_client  # noqa: E402
from SAMVolSegmentLib.tools.training import export_model  # noqa: E402

TOKEN = "slicer-test-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(not real_slicer.available(), reason="slicer-core is not installed (Python >= 3.10)")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    return load_model(export_model(ClickNet(TINY).eval(), tmp_path_factory.mktemp("model") / "tiny.pt", {"step": 0}))


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(tiny_model, ServerConfig(token=TOKEN)) as url:
        yield url


@pytest.fixture
def env(monkeypatch):
    """A fresh Slicer scene, a volume, and a record of every RemoteSession the module builds."""
    slicer = real_slicer.install()
    import SAMVolSegment as module

    env = types.SimpleNamespace(module=module, scene=slicer.mrmlScene, widgets=[], remote=[])
    env.volume = real_slicer.addVolume(np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32), ijk_to_ras())

    class RecordedRemoteSession(remote_client.RemoteSession):
        def __init__(self, url, token=None, **kwargs):
            super().__init__(url, token, **kwargs)
            self.args = {"url": url, "token": token, "verify": kwargs.get("verify")}
            self.initialMasks: List = []
            env.remote.append(self)

        def set_initial_mask(self, mask_kji):
            self.initialMasks.append(None if mask_kji is None else np.array(mask_kji, copy=True))
            return super().set_initial_mask(mask_kji)

        def close(self):
            self.closed = True
            return super().close()

    # backend.py imports the class from this module when it connects, so the record sees every construction.
    monkeypatch.setattr(remote_client, "RemoteSession", RecordedRemoteSession)

    def make_widget():
        return real_slicer.showWidget(module, ball_session, env.widgets)  # ball_session: the local backend

    env.make_widget = make_widget
    yield env
    for widget in env.widgets:
        widget.cleanup()


def choose_remote(widget, url: str, token: str = "", caFile: str = "") -> None:
    """What the user does in Model and settings: pick Remote server, type URL and token, choose a CA file."""
    ui = widget.ui
    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("remote"))
    ui.serverURLLineEdit.setText(url)
    ui.serverTokenLineEdit.setText(token)
    if caFile:
        ui.serverCAFileLineEdit.userChooses(caFile)


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def scene_text(env) -> str:
    """The scene as Slicer saves it (.mrml XML: every node's attributes, the parameter node's values included)."""
    env.scene.SetSaveToXMLString(1)
    env.scene.Commit()
    return env.scene.GetSceneXMLString()


# ------------------------------------------------------------------------------------------ remote session
def test_remote_backend_segments_through_the_server_with_the_ui_settings(env, server, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used for http:// (requests verifies only https), but passed through\n")
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    choose_remote(widget, server, TOKEN, str(ca))
    assert widget.ui.serverGroupBox.visible and not widget.ui.deviceComboBox.enabled

    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert_clean()
    assert state().errorDialogs == []
    assert [s.args for s in env.remote] == [{"url": server, "token": TOKEN, "verify": str(ca)}]
    session = widget.logic.session
    assert session is env.remote[0] and widget.logic.canUndo
    segment = segment_array(env, pn)
    np.testing.assert_array_equal(segment, session.server_mask_array_kji() > 0)  # the server's mask, written

    widget.onAction("undo")
    assert_clean()
    assert not segment_array(env, pn).any() and not session.server_mask_array_kji().any()
    assert TOKEN not in scene_text(env), "the token must never be stored in the scene"
    assert TOKEN not in repr(state().settings), "not remembered: the token stays in memory"


def test_token_is_stored_only_when_remembered_and_settings_survive_a_restart(env, tmp_path):
    ca = tmp_path / "server-cert.pem"
    ca.write_text("certificate\n")
    widget = env.make_widget()
    choose_remote(widget, "https://gpu-box:8765", TOKEN, str(ca))
    assert TOKEN not in repr(state().settings)
    widget.ui.rememberTokenCheckBox.checked = True
    assert state().settings["SAMVolSegment/serverToken"] == TOKEN

    restarted = env.make_widget()  # a new widget reads what the .ini holds (bools as "true"/"false")
    assert restarted.ui.backendComboBox.currentData == "remote" and restarted.ui.serverGroupBox.visible
    assert restarted.ui.serverURLLineEdit.text == "https://gpu-box:8765"
    assert restarted.ui.serverCAFileLineEdit.currentPath == str(ca)
    assert restarted.ui.rememberTokenCheckBox.checked and restarted.ui.serverTokenLineEdit.text == TOKEN
    assert restarted.logic.backend.token == TOKEN and restarted.logic.backend.caFile == str(ca)
    assert TOKEN not in repr(restarted.logic.backend), "the token is kept out of reprs (logs, tracebacks)"

    restarted.ui.rememberTokenCheckBox.checked = False
    assert "SAMVolSegment/serverToken" not in state().settings, "un-ticking removes the stored token"
    again = env.make_widget()
    assert again.ui.serverTokenLineEdit.text == "" and again.ui.serverURLLineEdit.text == "https://gpu-box:8765"
    assert TOKEN not in scene_text(env)


# ------------------------------------------------------------------------------------------ Test connection
def test_connection_reports_success_refused_and_wrong_token_once_each(env, server):
    widget = env.make_widget()
    choose_remote(widget, server, TOKEN)
    widget.settingsPanel.onTestConnection()
    assert_clean()
    assert state().errorDialogs == []
    status = widget.ui.statusLabel.text
    assert status.startswith(f"Connected to {server}") and "token accepted" in status, status
    assert widget.logic.session is None, "a test connects and disconnects; it loads nothing"

    widget.ui.serverTokenLineEdit.setText("wrong-token")
    widget.settingsPanel.onTestConnection()
    assert len(state().errorDialogs) == 1
    assert "refused the token" in state().errorDialogs[0] and "Model and settings > Token" in state().errorDialogs[0]

    widget.ui.serverTokenLineEdit.setText("")
    widget.settingsPanel.onTestConnection()
    assert len(state().errorDialogs) == 2 and "requires a token" in state().errorDialogs[1]

    url = refused_url()
    widget.ui.serverURLLineEdit.setText(url)
    widget.ui.serverTokenLineEdit.setText(TOKEN)
    widget.settingsPanel.onTestConnection()
    assert_clean()
    assert len(state().errorDialogs) == 3
    assert "cannot be reached" in state().errorDialogs[2] and url in state().errorDialogs[2]


def test_missing_url_or_certificate_file_names_the_fix_without_network(env, tmp_path):
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    choose_remote(widget, "")
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    assert "Enter the server URL" in state().errorDialogs[-1]
    assert pn.positivePoints.GetNumberOfControlPoints() == 0, "the failed click's marker is removed"
    choose_remote(widget, "https://gpu-box:8765", TOKEN, str(tmp_path / "missing.pem"))
    widget.settingsPanel.onTestConnection()
    assert len(state().errorDialogs) == 2 and "missing.pem does not exist" in state().errorDialogs[-1]
    assert env.remote == []
    assert_clean()


def test_tls_needs_the_chosen_certificate(env, tiny_model, self_signed):
    cert, key = self_signed
    with running_server(tiny_model, ServerConfig(token=TOKEN), ssl=(str(cert), str(key))) as url:
        widget = env.make_widget()
        choose_remote(widget, url, TOKEN)
        widget.settingsPanel.onTestConnection()
        assert len(state().errorDialogs) == 1 and "CA / certificate" in state().errorDialogs[0]
        widget.ui.serverCAFileLineEdit.userChooses(str(cert))
        widget.settingsPanel.onTestConnection()
        assert len(state().errorDialogs) == 1, state().errorDialogs
        assert widget.ui.statusLabel.text.startswith(f"Connected to {url}")
    assert_clean()


def test_https_to_a_plain_http_server_says_to_use_http(env, server):
    """The hint follows the client's TLSError.cause: here the URL, not a certificate, is what to change."""
    widget = env.make_widget()
    choose_remote(widget, server.replace("http://", "https://"), TOKEN)
    widget.settingsPanel.onTestConnection()
    assert len(state().errorDialogs) == 1
    assert "change the URL to http://" in state().errorDialogs[0] and "CA / certificate" not in state().errorDialogs[0]
    assert_clean()


# ------------------------------------------------------------------------------------------ switching
def test_switching_backend_mid_segment_keeps_the_voxels_and_seeds_the_server(env, server):
    """Decision (docs/SLICER.md): handled, not refused. The old session closes at once, its markers go (their
    undo history went with it), the segment keeps its voxels and seeds the new backend's session."""
    widget = env.make_widget()
    pn = widget.logic.getParameterNode()
    real_slicer.placePoint(pn.positivePoints, CENTRE)
    before = segment_array(env, pn).copy()
    assert before.any() and widget.logic.canUndo

    choose_remote(widget, server, TOKEN)
    assert_clean()
    assert widget.logic.session is None and not widget.logic.canUndo and not widget.ui.undoButton.enabled
    assert pn.positivePoints.GetNumberOfControlPoints() == 0
    assert "Backend changed" in widget.ui.statusLabel.text
    np.testing.assert_array_equal(segment_array(env, pn), before)

    real_slicer.placePoint(pn.negativePoints, [9.0, 9.0, 9.0])
    assert_clean()
    assert state().errorDialogs == []
    (session,) = env.remote
    assert len(session.initialMasks) == 1
    np.testing.assert_array_equal(session.initialMasks[0] > 0, before)  # the segment seeds the server session

    widget.logic._busy = True  # a step is running: the panel is disabled; the console is refused
    with pytest.raises(env.module.BusyError):
        widget.logic.setBackend(env.module.backend.Backend())
    widget.logic._busy = False
    assert widget.logic.session is session


def test_local_backend_still_uses_the_local_factory(env):
    widget = env.make_widget()
    assert not widget.ui.serverGroupBox.visible and widget.ui.deviceComboBox.enabled
    real_slicer.placePoint(widget.logic.getParameterNode().positivePoints, CENTRE)
    assert_clean()
    assert env.remote == [] and widget.logic.session is not None
    assert isinstance(widget.logic.session, InteractiveSession)


# ------------------------------------------------------------------------------------------ segmentVolume
def test_segment_volume_on_the_server_runs_the_batch_prompts_in_a_fresh_session(env, tmp_path):
    """Decision (README, Batch): with the remote backend, segmentVolume runs batch.run_prompts (segment_volume's
    prompt sequence) in a new server session, closed afterwards; the interactive session is left alone. The
    server runs a frozen copy of the bundled model, so the mask is a real one."""
    snapshot = tmp_path / "default_snapshot.pt"
    shutil.copyfile(resolve_model_path("default"), snapshot)
    model = load_model(str(snapshot), device="cpu")
    volume = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ball")
    k, j, i = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ball = np.sqrt((k - 15.0) ** 2 + (j - 15.0) ** 2 + (i - 15.0) ** 2) < 7
    real_slicer.setVolume(volume, (np.where(ball, 300.0, 20.0) + np.random.default_rng(1).normal(0, 5, SHAPE)).astype(np.float32),
                    ijk_to_ras())
    with running_server(model, ServerConfig(token=TOKEN)) as url:
        widget = env.make_widget()
        pn = widget.logic.getParameterNode()
        choose_remote(widget, url, TOKEN)
        real_slicer.placePoint(pn.positivePoints, CENTRE)
        interactive = widget.logic.session
        assert interactive is env.remote[0] and widget.logic.canUndo

        segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "console")
        points, labels, box = [CENTRE, [0.0, 0.0, 5.0]], [1, 0], ([-9.0] * 3, [9.0] * 3)
        segmentID = widget.logic.segmentVolume(volume, segmentation, points, labels, box=box)
        assert_clean()
        assert len(env.remote) == 2 and getattr(env.remote[1], "closed", False), "a fresh session, closed after"
        assert widget.logic.session is interactive and widget.logic.canUndo
        assert not getattr(interactive, "closed", False)

        with pytest.raises(ValueError, match="its own model"):
            widget.logic.segmentVolume(volume, segmentation, points, labels, model="default")
        assert len(env.remote) == 2 and list(segmentation.GetSegmentation().GetSegmentIDs()) == [segmentID]
    expected = segment(real_slicer.env_slicer().util.arrayFromVolume(volume), points, labels, box, model=model,
                       ijk_to_ras=ijk_to_ras()) > 0
    assert 50 < expected.sum() < ball.sum() * 2, int(expected.sum())
    np.testing.assert_array_equal(real_slicer.segmentArray(segmentation, segmentID, env.volume), expected)


# ------------------------------------------------------------------------------------------ Propose
def test_propose_on_the_server_lists_its_classes_and_is_one_undoable_step(env):
    """The same protocol as the local engine: the classes come from the server's /info, the proposal is a
    server step whose mask and click the Logic writes and shows, and clicks and undo work on it."""
    from test_slicer_module_propose import CLASSES, PROPOSAL_CLICK, ProposingBallModel, points, press_propose

    with running_server(ProposingBallModel(), ServerConfig(token=TOKEN)) as url:
        widget = env.make_widget()
        pn = widget.logic.getParameterNode()
        combo = widget.ui.proposeClassComboBox
        widget.onLoadModel()  # the local ball model has no head
        assert combo.items == [] and not widget.ui.proposeButton.enabled
        choose_remote(widget, url, TOKEN)
        widget.onLoadModel()
        assert_clean()
        assert state().errorDialogs == []
        session = widget.logic.session
        assert session is env.remote[-1] and tuple(data for _text, data in combo.items) == CLASSES
        assert widget.ui.proposeButton.enabled

        press_propose(widget, "ball")
        assert_clean()
        assert state().errorDialogs == []
        proposal = segment_array(env, pn).copy()
        assert proposal[15, 15, 15] and not proposal[2, 2, 2]
        np.testing.assert_array_equal(proposal, session.server_mask_array_kji() > 0)
        assert points(pn.positivePoints) == [(tuple(PROPOSAL_CLICK), True, True, "ball")]

        real_slicer.placePoint(pn.negativePoints, CENTRE)
        assert not segment_array(env, pn)[15, 15, 15] and len(session.clicks) == 2
        press_propose(widget, "absent")  # nothing found: one message, nothing changes
        assert len(state().errorDialogs) == 1 and "No absent was found" in state().errorDialogs[0]
        assert not segment_array(env, pn)[15, 15, 15] and len(session.clicks) == 2
        widget.onAction("undo")
        np.testing.assert_array_equal(segment_array(env, pn), proposal)
        widget.onAction("undo")
        assert not segment_array(env, pn).any() and not session.server_mask_array_kji().any()
        assert pn.positivePoints.GetNumberOfControlPoints() == 0 and pn.negativePoints.GetNumberOfControlPoints() == 0
    assert_clean()
