"""The client-only install, for real: a fresh venv gets ``pip install '<this source tree>[client]'`` and nothing
else, has no torch, and drives a real ``samvolseg serve`` (this venv, ``--self-signed``) through
``RemoteSession`` and ``samvolseg segment --server``, with the same mask as a local run of the same model.

Slow (a venv and a pip install, about a minute with pip's cache warm): ``scripts/test.sh -m "not slow"`` skips
it; CI (``.ci/run`` → ``scripts/test.sh``) runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from processes import stop

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("cryptography")

from SAMVolSegmentLib.cli import main as cli  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "client-install-token-0123456789"
BIN = "Scripts" if os.name == "nt" else "bin"


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)


def clean_env() -> dict:
    """No PYTHONPATH / PYTHONHOME from the test's environment: the client venv sees only what it installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv with only ``samvolsegment[client]`` installed, from a copy of this source tree."""
    folder = tmp_path_factory.mktemp("client")
    source = folder / "src"  # a copy: building in the checkout would rewrite its egg-info and build/
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "SAMVolSegmentLib", source / "SAMVolSegmentLib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "CMakeLists.txt"))
    venv = folder / "venv"
    done = run([sys.executable, "-m", "venv", venv], env=clean_env())
    assert done.returncode == 0, done.stderr
    python = venv / BIN / "python"
    done = run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[client]"],
               env=clean_env(), cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``samvolseg serve --self-signed`` from THIS venv (torch, the bundled model), on a free port."""
    folder = tmp_path_factory.mktemp("server")
    token_file = folder / "token.txt"
    token_file.write_text(TOKEN + "\n")
    cert = folder / "tls" / "cert.pem"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "SAMVolSegmentLib.cli.main", "serve", "--model", "default", "--port", str(port),
         "--token-file", str(token_file), "--self-signed", "--tls-dir", str(folder / "tls"), "--log-level",
         "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"https://localhost:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if cert.exists() and requests.get(url + "/health", timeout=2, verify=str(cert)).ok:
                    break
            except requests.exceptions.RequestException:
                pass
            assert time.monotonic() < deadline, "samvolseg serve did not come up in 90 s"
            time.sleep(0.3)
        yield {"url": url, "cert": cert, "token_file": token_file}
    finally:
        stop(process)


def test_the_client_install_has_no_torch(client_venv):
    python = client_venv / BIN / "python"
    done = run([python, "-c", "import torch"], env=clean_env(), cwd=client_venv)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
    listed = run([python, "-m", "pip", "list", "--format", "json"], env=clean_env(), cwd=client_venv)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "samvolsegment" in names and "requests" in names
    assert not {n for n in names if n == "torch" or n.startswith("nvidia")}, sorted(names)
    version = run([client_venv / BIN / "samvolseg", "--version"], env=clean_env(), cwd=client_venv)
    assert version.returncode == 0 and "torch not installed" in version.stdout


def test_the_client_drives_a_real_server_through_remote_session_and_the_cli(client_venv, server, tmp_path):
    rng = np.random.default_rng(3)
    array = rng.normal(30, 12, (24, 64, 64)).astype(np.float32)
    array[6:18, 20:44, 20:44] += 160.0  # a bright block to segment
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((1.2, 1.2, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    x, y, z = image.TransformContinuousIndexToPhysicalPoint((32.0, 32.0, 12.0))
    click_ras = [-x, -y, z]
    (tmp_path / "clicks.json").write_text(json.dumps({"points": [{"ras": click_ras, "positive": True}]}))
    env = {**clean_env(), "SAMVOLSEG_SERVER_TOKEN": TOKEN}

    script = textwrap.dedent(f"""
        import sys
        import SimpleITK as sitk
        from SAMVolSegmentLib.remote import RemoteSession
        session = RemoteSession({server['url']!r}, token={TOKEN!r}, verify={str(server['cert'])!r})
        session.set_volume(sitk.ReadImage({str(tmp_path / 'ct.nii.gz')!r}))
        update = session.add_click({click_ras!r}, positive=True)
        mask = session.mask_array_kji()
        session.close()
        assert "torch" not in sys.modules, "the client imported torch"
        print("voxels", int(mask.sum()), "changed", int(update.mask.sum()))
    """)
    done = run([client_venv / BIN / "python", "-c", script], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[1]) > 0

    samvolseg = client_venv / BIN / "samvolseg"
    remote_mask = tmp_path / "remote.nii.gz"
    done = run([samvolseg, "segment", tmp_path / "ct.nii.gz", "--points", tmp_path / "clicks.json",
                "--server", server["url"], "--token-file", server["token_file"], "--ca-file", server["cert"],
                "-o", remote_mask], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model clicknet2:" in done.stdout and TOKEN not in done.stdout + done.stderr
    local_mask = tmp_path / "local.nii.gz"
    assert cli.main(["segment", str(tmp_path / "ct.nii.gz"), "--points", str(tmp_path / "clicks.json"),
                     "-o", str(local_mask)]) == 0
    local = sitk.GetArrayFromImage(sitk.ReadImage(str(local_mask)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(remote_mask))), local)
    assert local.any()

    # The label-map warning reaches a client-only user too (checked on the client, before the upload).
    label = sitk.GetImageFromArray((array > 100).astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    done = run([samvolseg, "segment", tmp_path / "label.nii.gz", "--points", tmp_path / "clicks.json",
                "--server", server["url"], "--ca-file", server["cert"], "-o", tmp_path / "label_mask.nii.gz"],
               env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip().startswith("samvolseg: warning: The image holds only 2 integer values"), done.stderr

    # Without --server the client says what to install (or to use a server), in one line.
    done = run([samvolseg, "segment", tmp_path / "ct.nii.gz", "--points", tmp_path / "clicks.json",
                "-o", tmp_path / "here.nii.gz"], env=env, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'samvolsegment[torch]'" in done.stderr
    assert "--server" in done.stderr and "Traceback" not in done.stderr
