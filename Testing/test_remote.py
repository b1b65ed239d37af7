"""Remote server and client, against a REAL uvicorn server on 127.0.0.1 with a tiny model loaded from a file.

Remote masks equal local masks voxel for voxel; uploads happen once per volume; auth, bad input, expiry and
replay, eviction, a bounded concurrent load, TLS with a self-signed certificate, and the ``serve`` CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

import uvicorn  # noqa: E402

from SAMVolSegmentLib import cli  # noqa: E402
from SAMVolSegmentLib.errors import (  # noqa: E402
    AuthenticationError,
    InvalidImageError,
    InvalidPromptError,
    ProtocolMismatchError,
    ServerUnavailableError,
    SessionStateError,
)
from SAMVolSegmentLib.model import load_model  # noqa: E402
from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig  # noqa: E402
from SAMVolSegmentLib.predictor import Predictor  # noqa: E402
from SAMVolSegmentLib.remote import PROTOCOL_VERSION, RemoteSession, ServerConfig, create_app  # noqa: E402
from SAMVolSegmentLib.remote.protocol import (  # noqa: E402
    META_HEADER,
    PROTOCOL_HEADER,
    WireFormatError,
    content_id,
    decode_bits,
    decode_update,
    decode_volume,
    encode_bits,
    encode_update,
    encode_volume,
)
from SAMVolSegmentLib.remote.server import HTTPReplyError, ModelWorker  # noqa: E402
from SAMVolSegmentLib.session import InteractiveSession  # noqa: E402
from SAMVolSegmentLib.session_protocol import SegmentationSession, check_session  # noqa: E402
from SAMVolSegmentLib.training import export_model  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
TINY = ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8), embed_dim=8, decoder_channels=8)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_model(ClickNet(TINY).eval(), tmp_path_factory.mktemp("model") / "tiny.pt", {"step": 0})


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@contextlib.contextmanager
def running_server(model, config: ServerConfig, ssl: tuple = (None, None)) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (a free port) in a thread; yields its URL."""
    app = create_app(model, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ssl_certfile=ssl[0], ssl_keyfile=ssl[1],
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"{'https' if ssl[0] else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def server(model) -> Iterator[str]:
    with running_server(model, ServerConfig(token=TOKEN)) as url:
        yield url


def ct_image(seed: int = 0, size=(60, 50, 30), spacing=(0.9, 0.9, 2.0), dtype=np.int16) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 20, size[::-1])
    array[8:22, 15:35, 20:42] += 300 + 10 * seed
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0 + seed))
    return image


def centre_ras(image: sitk.Image) -> np.ndarray:
    index = [(s - 1) / 2 for s in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index)) * np.array([-1, -1, 1])


def api(url: str, method: str, path: str, token: str = TOKEN, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, url + path, headers=headers, timeout=30, **kwargs)


def assert_clean_error(response: requests.Response, status: int, error: str) -> dict:
    """A 4xx JSON error with a message, no traceback, no server path."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and len(body["detail"]) > 10
    assert "Traceback" not in response.text and "/work/" not in response.text and "/tmp" not in response.text
    return body


# ---------------------------------------------------------------- codecs
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64, np.int64])
def test_volume_codec_round_trips_and_keeps_small_dtypes(dtype):
    rng = np.random.default_rng(1)
    array = (rng.normal(0, 100, (5, 6, 7))).astype(dtype)
    matrix = np.diag([0.7, 0.7, 2.5, 1.0])
    body, meta = encode_volume(array, matrix)
    expected = np.dtype(dtype).name if np.dtype(dtype) != np.int64 else "float32"
    assert meta["dtype"] == expected
    decoded = decode_volume(body, tuple(meta["shape"]), np.dtype(meta["dtype"]))
    np.testing.assert_array_equal(decoded, array.astype(expected))
    assert content_id(decoded, np.array(meta["ijk_to_ras"]).reshape(4, 4)) == content_id(array, matrix)


def test_volume_decoder_refuses_bombs_and_truncation():
    body = zlib.compress(bytes(10_000))
    with pytest.raises(WireFormatError, match="does not match its header"):
        decode_volume(body, (10, 10, 10), np.dtype("uint8"))  # more data than announced: not inflated
    with pytest.raises(WireFormatError, match="does not match its header"):
        decode_volume(body[:-8], (10, 10, 100), np.dtype("uint8"))
    with pytest.raises(WireFormatError, match="corrupt"):
        decode_volume(b"not zlib at all", (2, 2, 2), np.dtype("uint8"))


def test_mask_update_codec_round_trips_and_checks_the_box():
    rng = np.random.default_rng(2)
    mask = (rng.random((4, 9, 13)) > 0.5).astype(np.uint8)
    from SAMVolSegmentLib.mask_update import MaskUpdate

    update = MaskUpdate(((1, 5), (0, 9), (3, 16)), mask)
    decoded = decode_update(json.loads(json.dumps(encode_update(update))), (10, 10, 20))
    assert decoded.bbox_kji == update.bbox_kji
    np.testing.assert_array_equal(decoded.mask, mask)
    assert decode_update(encode_update(MaskUpdate.empty()), (10, 10, 20)).is_empty_box
    with pytest.raises(WireFormatError, match="outside the volume"):
        decode_update(encode_update(update), (4, 9, 13))
    np.testing.assert_array_equal(decode_bits(encode_bits(mask), mask.shape), mask)


# ---------------------------------------------------------------- protocol and equality
def test_remote_session_implements_the_session_protocol(server):
    session = RemoteSession(server, token=TOKEN)
    check_session(session)
    assert isinstance(session, SegmentationSession)
    assert session.model_id.startswith("clicknet:")
    assert not session.is_ready
    with pytest.raises(SessionStateError, match="set_volume"):
        session.add_click((0, 0, 0))
    session.close()


def _sequence(image: sitk.Image):
    c = centre_ras(image)
    return [
        ("click", (c, True)), ("click", (c + [4.0, -3.0, 2.0], True)), ("click", (c + [-6.0, 2.0, 0.0], False)),
        ("undo", ()), ("undo", ()), ("redo", ()), ("box", (c - [12, 12, 8], c + [12, 12, 8])),
        ("click", (c + [2.0, 2.0, -2.0], True)), ("clear_box", ()), ("reset", ()), ("undo", ()),
        ("click", (c + [-3.0, -3.0, 1.0], True)), ("undo", ()), ("undo", ()), ("undo", ()), ("redo", ()),
    ]


def _run(session, op, args):
    return {"click": session.add_click, "box": session.set_box, "undo": session.undo, "redo": session.redo,
            "reset": session.reset, "clear_box": session.clear_box}[op](*args)


def test_remote_masks_equal_local_masks_voxel_for_voxel(server, model):
    image = ct_image()
    local = InteractiveSession(Predictor(model))
    remote = RemoteSession(server, token=TOKEN)
    local.set_volume(image)
    remote.set_volume(image)
    remote.wait_until_ready(30)
    assert remote.is_ready
    mirror = np.zeros(image.GetSize()[::-1], np.uint8)
    for op, args in _sequence(image):
        expected, got = _run(local, op, args), _run(remote, op, args)
        assert got.bbox_kji == expected.bbox_kji, op
        np.testing.assert_array_equal(got.mask, expected.mask, err_msg=op)
        got.apply_to(mirror)
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji(), err_msg=op)
        assert (remote.can_undo, remote.can_redo) == (local.can_undo, local.can_redo), op
        assert len(remote.clicks) == len(local.clicks)
        for a, b in zip(remote.clicks, local.clicks):
            np.testing.assert_allclose(a.point_ras, b.point_ras)
            assert a.positive == b.positive
    assert local.mask_array_kji().any(), "the sequence must produce foreground to compare something"
    np.testing.assert_array_equal(mirror, local.mask_array_kji())
    np.testing.assert_array_equal(remote.server_mask_array_kji(), local.mask_array_kji())
    assert remote.mask().GetSize() == image.GetSize()
    assert remote.last_timing["total_s"] >= remote.last_timing.get("server_total_s", 0.0)
    remote.close()
    local.close()


def test_annotations_travel_with_undo_redo_as_locally(server, model):
    image = ct_image()
    sessions = [InteractiveSession(Predictor(model)), RemoteSession(server, token=TOKEN)]
    seen = []
    for session in sessions:
        session.set_volume(image)
        c = centre_ras(image)
        session.add_click(c, True)
        session.annotate_last_step("first")
        session.add_click(c + [3.0, 0.0, 0.0], True)
        session.annotate_last_step("second")
        session.clear_box()  # no box: not a step
        trace = [session.last_annotation]
        session.undo()
        trace.append(session.last_annotation)
        session.undo()
        trace.append(session.last_annotation)
        session.undo()  # nothing left: unchanged
        trace.append(session.last_annotation)
        session.redo()
        trace.append(session.last_annotation)
        session.add_click(c + [0.0, 3.0, 0.0], True)
        trace.append(session.last_annotation)
        session.undo()
        trace.append(session.last_annotation)
        seen.append(trace)
        session.close()
    assert seen[0] == seen[1] == ["second", "second", "first", "first", "first", None, None]


def test_a_volume_is_uploaded_once_and_same_volume_keeps_the_state(server):
    image = ct_image(seed=3)
    first = RemoteSession(server, token=TOKEN)
    first.set_volume(image)
    assert first.last_upload_bytes > 0
    raw = image.GetSize()[0] * image.GetSize()[1] * image.GetSize()[2] * 2
    assert first.last_upload_bytes < raw  # compressed
    first.add_click(centre_ras(image), True)
    first.set_volume(image)  # same content: nothing happens, the click stays
    assert len(first.clicks) >= 1
    second = RemoteSession(server, token=TOKEN)
    second.set_volume(image)
    assert second.last_upload_bytes == 0  # the server held it: no upload
    assert not second.mask_array_kji().any()  # a session of its own
    first.close()
    second.close()


# ---------------------------------------------------------------- auth and bad input
def test_health_and_info_are_open_everything_else_needs_the_token(server):
    assert requests.get(server + "/health", timeout=10).json() == {"ok": True}
    info = requests.get(server + "/info", timeout=10).json()
    assert info["protocol"] == PROTOCOL_VERSION and info["auth_required"] and info["model_id"].startswith("clicknet:")
    assert_clean_error(api(server, "GET", "/v1/stats", token=""), 401, "AuthenticationError")
    assert_clean_error(api(server, "GET", "/v1/stats", token="x" + TOKEN[1:]), 401, "AuthenticationError")
    response = api(server, "GET", "/v1/stats", token="", headers={"Authorization": f"Basic {TOKEN}"})
    assert_clean_error(response, 401, "AuthenticationError")
    assert api(server, "GET", "/v1/stats").status_code == 200
    with pytest.raises(AuthenticationError, match="requires a token"):
        RemoteSession(server)
    with pytest.raises(AuthenticationError, match="refused the token"):
        RemoteSession(server, token="wrong-token-but-long-enough")


def test_bad_requests_get_clear_4xx_errors(server):
    image = ct_image(seed=5)
    session = RemoteSession(server, token=TOKEN)
    session.set_volume(image)
    base = f"/v1/sessions/{session._sid}"
    assert_clean_error(api(server, "POST", base + "/click", data=b"{not json"), 422, "WireFormatError")
    assert_clean_error(api(server, "POST", base + "/click", json=[1, 2]), 422, "WireFormatError")
    assert_clean_error(api(server, "POST", base + "/click", json={"point_ras": [1, "a", 2]}), 422,
                       "InvalidPromptError")
    assert_clean_error(api(server, "POST", base + "/click", json={"point_ras": [1, 2, 3], "positive": "yes"}),
                       422, "InvalidPromptError")
    assert_clean_error(api(server, "POST", base + "/click", data=b"{" + b" " * 70_000 + b"}"), 413,
                       "PayloadTooLarge")
    assert_clean_error(api(server, "POST", base + "/explode", json={}), 404, "NotFound")
    assert_clean_error(api(server, "POST", "/v1/sessions/nope/click", json={"point_ras": [0, 0, 0]}), 404,
                       "SessionNotFound")
    assert_clean_error(api(server, "GET", "/v1/volumes/../../etc"), 404, "NotFound")
    assert_clean_error(api(server, "GET", "/v1/volumes/" + "z" * 32), 400, "WireFormatError")
    assert_clean_error(api(server, "POST", "/v1/sessions", json={"volume": "0" * 32}), 404, "VolumeNotFound")
    assert_clean_error(api(server, "GET", "/v1/stats", headers={PROTOCOL_HEADER: "99"}), 400,
                       "ProtocolMismatchError")
    assert_clean_error(api(server, "GET", base, params={"wait": "soon"}), 422, "WireFormatError")
    assert_clean_error(api(server, "PUT", base + "/initial_mask", data=b"garbage"), 422, "WireFormatError")
    # Through the client: the engine's own error classes come back.
    with pytest.raises(InvalidPromptError, match="outside the volume"):
        session.add_click((5000.0, 0.0, 0.0))
    with pytest.raises(InvalidPromptError, match="finite"):
        session.add_click((np.nan, 0.0, 0.0))
    with pytest.raises(InvalidPromptError, match="shape"):
        session.set_initial_mask(np.zeros((2, 2, 2), np.uint8))
    assert not session.can_undo  # nothing above changed anything
    session.close()


def test_an_unexpected_failure_is_a_500_without_traceback_or_paths(model, monkeypatch):
    def broken(self, point_ras, positive=True):
        raise RuntimeError("CUDA exploded in /opt/secret/model.py")

    image = ct_image(seed=6)
    with running_server(model, ServerConfig(token=TOKEN)) as url:
        session = RemoteSession(url, token=TOKEN)
        session.set_volume(image)
        monkeypatch.setattr(InteractiveSession, "add_click", broken)
        response = api(url, "POST", f"/v1/sessions/{session._sid}/click", json={"point_ras": [0.0, 0.0, 0.0]})
        assert response.status_code == 500 and response.json()["error"] == "InternalError"
        assert "Traceback" not in response.text and "/opt/secret" not in response.text
        assert "CUDA" not in response.text
        monkeypatch.undo()
        assert session.add_click(centre_ras(image), True).mask.any()  # the server keeps serving
        session.close()


def _upload(url: str, array: np.ndarray, matrix: np.ndarray, meta_patch=None, body=None) -> requests.Response:
    encoded, meta = encode_volume(array, matrix)
    meta.update(meta_patch or {})
    return api(url, "PUT", f"/v1/volumes/{content_id(array, matrix)}", data=encoded if body is None else body,
               headers={META_HEADER: json.dumps(meta)})


def test_bad_uploads_are_refused_before_anything_is_stored(model):
    config = ServerConfig(token=TOKEN, max_upload_bytes=20_000, max_voxels=40_000)
    rng = np.random.default_rng(0)
    good = rng.normal(0, 50, (10, 20, 30)).astype(np.int16)
    matrix = np.diag([1.0, 1.0, 2.0, 1.0])
    with running_server(model, config) as url:
        assert_clean_error(_upload(url, good, matrix, {"shape": [20, 20, 30]}), 422, "WireFormatError")  # geometry
        assert_clean_error(_upload(url, good, matrix, {"shape": [10, 20]}), 422, "WireFormatError")
        assert_clean_error(_upload(url, good, matrix, {"dtype": "object"}), 422, "WireFormatError")
        assert_clean_error(_upload(url, good, matrix, {"ijk_to_ras": [1, 2]}), 422, "WireFormatError")
        assert_clean_error(_upload(url, good, matrix, {"shape": [100, 100, 100]}), 422, "WireFormatError")  # voxels
        assert_clean_error(_upload(url, good, matrix, body=b"\x00" * 30_000), 413, "PayloadTooLarge")
        tampered = good.copy()
        tampered[0, 0, 0] += 1
        response = api(url, "PUT", f"/v1/volumes/{content_id(tampered, matrix)}", data=encode_volume(good, matrix)[0],
                       headers={META_HEADER: json.dumps(encode_volume(good, matrix)[1])})
        assert_clean_error(response, 422, "WireFormatError")  # content does not match its id
        flat = np.full((10, 20, 30), 7, np.int16)
        assert_clean_error(_upload(url, flat, matrix), 422, "InvalidImageError")  # the engine's validation
        degenerate = np.diag([1.0, 0.0, 2.0, 1.0])
        assert_clean_error(_upload(url, good, degenerate), 422, "InvalidImageError")
        assert api(url, "GET", "/v1/stats").json()["store"]["volumes"] == 0
        assert _upload(url, good, matrix).status_code == 201
        assert _upload(url, good, matrix).json()["stored"] is False  # held: skipped
        session = RemoteSession(url, token=TOKEN)
        with pytest.raises(InvalidImageError, match="voxels"):
            session.set_volume(np.zeros((50, 50, 50), np.int16), matrix)  # refused before uploading
        with pytest.raises(InvalidImageError, match="4×4"):
            session.set_volume(good)
        session.close()


# ---------------------------------------------------------------- leases, eviction, load
def test_an_expired_session_is_recreated_and_replayed(model):
    image = ct_image(seed=7)
    c = centre_ras(image)
    local = InteractiveSession(Predictor(model))
    local.set_volume(image)
    with running_server(model, ServerConfig(token=TOKEN, lease_s=0.6)) as url:
        remote = RemoteSession(url, token=TOKEN)
        remote.set_volume(image)
        for session in (local, remote):
            session.add_click(c, True)
            session.add_click(c + [3.0, 3.0, 0.0], True)
            session.undo()
            session.annotate_last_step("kept on the client") if session.can_undo else None
        old = remote._sid
        time.sleep(1.0)
        body = assert_clean_error(api(url, "POST", f"/v1/sessions/{old}/redo", json={}), 410, "SessionExpiredError")
        assert "expired" in body["detail"] and "replay" in body["detail"]
        expected, got = local.redo(), remote.redo()  # the client recovers, then redoes
        assert remote._sid != old and remote.last_timing["replayed_steps"] == 3.0
        assert got.bbox_kji == expected.bbox_kji
        np.testing.assert_array_equal(remote.mask_array_kji(), local.mask_array_kji())
        np.testing.assert_array_equal(remote.server_mask_array_kji(), local.mask_array_kji())
        assert remote.can_undo and not remote.can_redo
        remote.close()
    local.close()


def test_memory_is_bounded_and_evicted_sessions_come_back(model):
    images = [ct_image(seed=s) for s in (11, 12)]
    voxels = int(np.prod(images[0].GetSize()))
    per_session = voxels * 9 + (1 << 20)
    # Room for one session and the volumes, not for two sessions.
    config = ServerConfig(token=TOKEN, history_bytes=1 << 20, max_memory_bytes=per_session + voxels * 4 + 1000)
    with running_server(model, config) as url:
        a, b = RemoteSession(url, token=TOKEN), RemoteSession(url, token=TOKEN)
        a.set_volume(images[0])
        a.add_click(centre_ras(images[0]), True)
        before = a.mask_array_kji()
        b.set_volume(images[1])  # evicts a's session (least recently used)
        stats = api(url, "GET", "/v1/stats").json()["store"]
        assert stats["bytes"] <= stats["max_bytes"] and stats["evicted"] >= 1
        a.undo()  # recovered (re-uploading the volume if it went too), then undone
        assert a.last_timing["replayed_steps"] == 1.0
        assert not a.mask_array_kji().any() and before.any()
        stats = api(url, "GET", "/v1/stats").json()["store"]
        assert stats["bytes"] <= stats["max_bytes"]
        a.close()
        b.close()
        # Both sessions gone (one closed, one evicted earlier): only a's re-uploaded int16 volume is counted.
        assert api(url, "GET", "/v1/stats").json()["store"] == {**stats, "bytes": voxels * 2, "sessions": 0,
                                                                 "volumes": 1}


def test_eight_clients_twenty_clicks_each_get_their_own_answers(model):
    images = [ct_image(seed=20 + n, size=(40, 36, 24)) for n in range(8)]
    rng = np.random.default_rng(0)
    plans = []
    for image in images:
        c = centre_ras(image)
        plans.append([(c + rng.uniform(-5, 5, 3), bool(rng.random() < 0.75)) for _ in range(20)])
    config = ServerConfig(token=TOKEN, queue_size=4, retry_after_s=1)

    def client(url: str, n: int):
        session = RemoteSession(url, token=TOKEN, max_busy_retries=50)
        session.set_volume(images[n])
        mirror = np.zeros(images[n].GetSize()[::-1], np.uint8)
        for point, positive in plans[n]:
            session.add_click(point, positive).apply_to(mirror)
        result = (mirror, session.mask_array_kji(), session.server_mask_array_kji())
        session.close()
        return result

    with running_server(model, config) as url:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda n: client(url, n), range(8)))
        stats = api(url, "GET", "/v1/stats").json()
        assert stats["store"]["bytes"] <= stats["store"]["max_bytes"] and stats["queue_depth"] == 0
    predictor = Predictor(model)
    for n, (mirror, client_mask, server_mask) in enumerate(results):
        local = InteractiveSession(predictor)
        local.set_volume(images[n])
        for point, positive in plans[n]:
            local.add_click(point, positive)
        np.testing.assert_array_equal(mirror, local.mask_array_kji(), err_msg=f"client {n}")
        np.testing.assert_array_equal(client_mask, local.mask_array_kji())
        np.testing.assert_array_equal(server_mask, local.mask_array_kji())
        local.close()


def test_a_full_queue_answers_503_at_once():
    worker = ModelWorker(queue_size=1, retry_after_s=2)
    release = threading.Event()
    running = worker.submit(release.wait)
    deadline = time.monotonic() + 5
    while worker.depth and time.monotonic() < deadline:  # the first job is taken off the queue
        time.sleep(0.01)
    queued = worker.submit(lambda: "second")
    with pytest.raises(HTTPReplyError) as caught:
        worker.submit(lambda: "third")
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "2"
    release.set()
    assert running.result(5) is True and queued.result(5) == "second"
    worker.close()


# ---------------------------------------------------------------- connection errors, TLS, CLI
def test_unreachable_server_and_wrong_protocol_say_what_to_check(server, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(ServerUnavailableError, match="samvolseg serve"):
        RemoteSession(f"http://127.0.0.1:{free}", token=TOKEN)
    with pytest.raises(ServerUnavailableError, match="not a server URL"):
        RemoteSession("ftp://somewhere", token=TOKEN)
    import SAMVolSegmentLib.remote.client as client_module

    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(ProtocolMismatchError, match="same SAMVolSegment version"):
        RemoteSession(server, token=TOKEN)


def test_tls_with_a_self_signed_certificate(model, self_signed):
    cert, key = self_signed
    image = ct_image(seed=30)
    with running_server(model, ServerConfig(token=TOKEN), ssl=(str(cert), str(key))) as url:
        assert url.startswith("https://")
        with pytest.raises(ServerUnavailableError, match="verify="):
            RemoteSession(url, token=TOKEN)  # not trusted by default
        with pytest.raises(ServerUnavailableError):
            RemoteSession(url.replace("https://", "http://"), token=TOKEN)
        session = RemoteSession(url, token=TOKEN, verify=str(cert))
        session.set_volume(image)
        update = session.add_click(centre_ras(image), True)
        assert update.mask.any()
        session.close()


def test_serve_refuses_unsafe_options_before_loading_a_model(checkpoint, tmp_path, capsys):
    assert cli.main(["serve", "--model", str(checkpoint), "--host", "0.0.0.0"]) == 2
    assert "token" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(checkpoint), "--token", "short"]) == 2
    assert "at least 16" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(checkpoint), "--token", TOKEN,
                     "--ssl-certfile", str(checkpoint)]) == 2
    assert "--ssl-keyfile" in capsys.readouterr().err
    empty = tmp_path / "token.txt"
    empty.write_text("\n")
    assert cli.main(["serve", "--model", str(checkpoint), "--token-file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


def test_samvolseg_serve_runs_a_real_server(checkpoint, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli", "serve", "--model", str(checkpoint),
                                "--port", str(port), "--token-file", str(token_file), "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.exceptions.ConnectionError:
                pass
            assert time.monotonic() < deadline, "samvolseg serve did not come up in 60 s"
            time.sleep(0.2)
        session = RemoteSession(url, token=TOKEN)
        image = ct_image(seed=40)
        session.set_volume(image)
        assert session.add_click(centre_ras(image), True).mask.any()
        session.close()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "serving clicknet:" in output and "token required" in output
    assert TOKEN not in output
