"""Model registry and downloads: cache location, never-download resolution, checked atomic downloads.

Downloads are tested against a local ``http.server`` on 127.0.0.1; nothing here uses the network.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from SAMVolSegmentLib.errors import ModelNotAvailableError
from SAMVolSegmentLib.model import registry as weights
from SAMVolSegmentLib.model.registry import (
    REGISTRY,
    ModelSpec,
    cache_dir,
    download_model,
    list_models,
    resolve_model_path,
)

PAYLOAD = bytes(range(256)) * 10_000  # 2.56 MB: several 1 MiB blocks, so progress is called more than once
PAYLOAD_SIZE = len(PAYLOAD)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path not in ("/model.pth", "/nolength.pth"):
            self.send_error(404)
            return
        self.send_response(200)
        if self.path == "/model.pth":
            self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def model_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


def _register(monkeypatch, url: str, size=PAYLOAD_SIZE, sha256=None) -> ModelSpec:
    spec = ModelSpec(name="test-model", description="test", family="sam_med3d", url=url, filename="test_model.pth",
                     size_bytes=size, sha256=sha256, licence="CC0")
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_entries():
    names = [spec.name for spec in list_models()]
    assert names[0] == "default" and {"sam-med3d-turbo", "clicknet-v1"} <= set(names)
    assert REGISTRY["default"].family == "clicknet2" and REGISTRY["default"].bundled
    assert REGISTRY["clicknet-v1"].family == "clicknet" and REGISTRY["clicknet-v1"].bundled
    turbo = REGISTRY["sam-med3d-turbo"]
    assert turbo.size_bytes == 402_038_464 and turbo.url.startswith("https://huggingface.co/blueyo0/SAM-Med3D/")
    assert turbo.sha256 is None and not turbo.bundled and turbo.family == "sam_med3d"
    assert REGISTRY["default"].bundled and REGISTRY["default"].url is None


def test_cache_dir_env_and_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SAMVOLSEGMENT_MODEL_DIR")
    assert cache_dir() == tmp_path / "xdg" / "samvolsegment" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "samvolsegment" / "models"


def test_resolve_never_downloads_and_says_how(model_dir):
    with pytest.raises(ModelNotAvailableError, match="samvolseg models download sam-med3d-turbo") as info:
        resolve_model_path("sam-med3d-turbo")
    assert str(model_dir) in str(info.value)
    assert not model_dir.exists() or list(model_dir.iterdir()) == []


def test_resolve_finds_a_cached_file_and_passes_paths_through(model_dir, tmp_path):
    model_dir.mkdir()
    cached = model_dir / REGISTRY["sam-med3d-turbo"].filename
    cached.write_bytes(b"x")
    assert resolve_model_path("sam-med3d-turbo") == cached
    assert resolve_model_path(tmp_path / "some.pth") == tmp_path / "some.pth"


def test_missing_bundled_model_names_training(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "PACKAGE_WEIGHTS", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="samvolseg train"):
        resolve_model_path("default")


def test_download_streams_checks_and_renames(model_dir, server_url, monkeypatch):
    _register(monkeypatch, f"{server_url}/model.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    calls = []
    path = download_model("test-model", progress=lambda fraction, message: calls.append((fraction, message)))
    assert path == model_dir / "test_model.pth"
    assert path.read_bytes() == PAYLOAD
    assert len(calls) >= 3 and calls[-1][0] == pytest.approx(1.0)
    assert all(a <= b for (a, _), (b, _) in zip(calls, calls[1:]))
    assert sorted(p.name for p in model_dir.iterdir()) == ["test_model.pth"]  # no temp file left
    assert resolve_model_path("test-model") == path


def test_download_of_wrong_size_leaves_nothing(model_dir, server_url, monkeypatch):
    _register(monkeypatch, f"{server_url}/model.pth", size=len(PAYLOAD) + 1)
    with pytest.raises(ModelNotAvailableError, match="expected"):
        download_model("test-model")
    assert list(model_dir.iterdir()) == []


def test_download_without_content_length_checks_size_after_streaming(model_dir, server_url, monkeypatch):
    _register(monkeypatch, f"{server_url}/nolength.pth", size=len(PAYLOAD) - 1)
    with pytest.raises(ModelNotAvailableError, match="incomplete or wrong"):
        download_model("test-model")
    assert list(model_dir.iterdir()) == []


def test_download_with_wrong_checksum_leaves_nothing(model_dir, server_url, monkeypatch):
    _register(monkeypatch, f"{server_url}/model.pth", sha256="0" * 64)
    with pytest.raises(ModelNotAvailableError, match="sha256"):
        download_model("test-model")
    assert list(model_dir.iterdir()) == []


def test_offline_download_says_where_to_put_the_file(model_dir, monkeypatch):
    _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/model.pth")
    with pytest.raises(ModelNotAvailableError, match="copy it to") as info:
        download_model("test-model", timeout=5)
    assert str(model_dir / "test_model.pth") in str(info.value)
    assert list(model_dir.iterdir()) == []


def test_download_skips_a_complete_file(model_dir, monkeypatch):
    _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/model.pth")  # would fail if contacted
    model_dir.mkdir()
    (model_dir / "test_model.pth").write_bytes(PAYLOAD)
    assert download_model("test-model") == model_dir / "test_model.pth"


def test_download_of_unknown_or_bundled_name_is_refused(model_dir):
    for name in ("no-such-model", "default"):
        with pytest.raises(ModelNotAvailableError, match="sam-med3d-turbo"):
            download_model(name)
