"""TLS for ``samvolseg serve``: ``--self-signed`` against REAL server subprocesses, and errors that name the cause.

One server runs with ``--self-signed`` (a certificate for localhost, 127.0.0.1, this host's name and a
``--san``), one with ``--ssl-certfile`` holding a certificate for ``localhost`` only (reached as 127.0.0.1: a
hostname mismatch), and a plain HTTP listener stands in for a server without TLS.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from processes import stop

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("cryptography")
requests = pytest.importorskip("requests")

from SAMVolSegmentLib.cli import main as cli  # noqa: E402
from SAMVolSegmentLib.errors import ServerConfigError, TLSError  # noqa: E402
from SAMVolSegmentLib.remote import RemoteSession  # noqa: E402
from SAMVolSegmentLib.remote.tls import certificate_names, ensure_self_signed, server_names  # noqa: E402

TOKEN = "tls-test-token-0123456789abcdef"
SAN = "gpu-box.samvolseg.test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: List[str], token_file: Path, ready_url: str, cert: Path) -> Tuple[subprocess.Popen, int]:
    """``samvolseg serve`` with the bundled model in a subprocess; returns once ``/health`` answers over TLS
    checked against ``cert`` (which ``--self-signed`` writes before the model loads)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli.main", "serve", "--model", "default",
                                "--port", str(port), "--token-file", str(token_file), "--log-level", "warning",
                                *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read())
        try:
            if cert.exists() and requests.get(ready_url.format(port=port) + "/health", timeout=2,
                                              verify=str(cert)).ok:
                return process, port
        except requests.exceptions.RequestException:
            pass
        assert time.monotonic() < deadline, "samvolseg serve did not come up in 90 s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict]:
    """A ``--self-signed`` server, a ``localhost``-only certificate server and a plain HTTP listener."""
    folder = tmp_path_factory.mktemp("tls")
    token_file = folder / "token.txt"
    token_file.write_text(TOKEN + "\n")
    tls_dir = folder / "server-tls"
    cert = tls_dir / "cert.pem"

    process, port = start_server(["--self-signed", "--tls-dir", str(tls_dir), "--san", SAN], token_file,
                                 "https://localhost:{port}", cert)
    narrow = ensure_self_signed(folder / "narrow", ["localhost"])  # reached as 127.0.0.1: a mismatch
    try:
        narrow_process, narrow_port = start_server(
            ["--ssl-certfile", str(narrow.cert_path), "--ssl-keyfile", str(narrow.key_path)], token_file,
            "https://localhost:{port}", narrow.cert_path)
    except BaseException:
        stop(process)
        raise

    class Plain(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    info = {"port": port, "cert": cert, "token_file": token_file, "narrow_port": narrow_port,
            "narrow_cert": narrow.cert_path, "plain_port": plain.server_address[1], "process": process}
    try:
        yield info
    finally:
        plain.shutdown()
        plain.server_close()
        stop(narrow_process)
        if process.poll() is None:
            stop(process)


def test_self_signed_covers_the_names_it_serves_and_says_how_to_trust_it(servers):
    names, _ = certificate_names(servers["cert"])
    for name in ("localhost", "127.0.0.1", "::1", socket.gethostname().lower(), SAN):
        assert name in names, names
    assert stat.S_IMODE(os.stat(servers["cert"].with_name("key.pem")).st_mode) == 0o600
    for host in ("localhost", "127.0.0.1"):  # one machine: both spellings work with the same file
        session = RemoteSession(f"https://{host}:{servers['port']}", token=TOKEN, verify=str(servers["cert"]))
        assert session.model_id.startswith("clicknet2:")
        session.close()
    try:
        resolved = socket.gethostbyname(socket.gethostname())
    except OSError:
        resolved = None
    if resolved is not None and resolved.startswith("127."):  # the host's own name, as another machine says it
        session = RemoteSession(f"https://{socket.gethostname()}:{servers['port']}", token=TOKEN,
                                verify=str(servers["cert"]))
        session.close()


def test_an_untrusted_certificate_names_both_ways_to_trust_it(servers, tmp_path):
    url = f"https://localhost:{servers['port']}"
    with pytest.raises(TLSError) as caught:
        RemoteSession(url, token=TOKEN)  # the system's CAs do not know a self-signed certificate
    assert caught.value.cause == "untrusted"
    assert "--ca-file" in str(caught.value) and "verify=" in str(caught.value) and "TLS" in str(caught.value)
    with pytest.raises(TLSError) as caught:
        RemoteSession(url, token=TOKEN, verify=str(servers["narrow_cert"]))  # another server's certificate
    assert caught.value.cause == "untrusted" and "is not the one in" in str(caught.value)
    with pytest.raises(TLSError, match="no such file"):
        RemoteSession(url, token=TOKEN, verify=str(tmp_path / "missing.pem"))


def test_a_hostname_mismatch_says_so_and_not_to_change_the_trusted_file(servers):
    url = f"https://127.0.0.1:{servers['narrow_port']}"
    with pytest.raises(TLSError) as caught:
        RemoteSession(url, token=TOKEN, verify=str(servers["narrow_cert"]))
    assert caught.value.cause == "hostname"
    text = str(caught.value)
    assert "does not name '127.0.0.1'" in text and "--san 127.0.0.1" in text and "not the problem" in text


def test_http_sent_to_an_https_server_says_try_https(servers):
    with pytest.raises(TLSError) as caught:
        RemoteSession(f"http://localhost:{servers['port']}", token=TOKEN, verify=str(servers["cert"]))
    assert caught.value.cause == "use-https"
    assert f"try https://localhost:{servers['port']}" in str(caught.value)


def test_https_sent_to_a_plain_http_server_says_use_http(servers):
    with pytest.raises(TLSError) as caught:
        RemoteSession(f"https://127.0.0.1:{servers['plain_port']}", token=TOKEN)
    assert caught.value.cause == "use-http"
    assert f"use http://127.0.0.1:{servers['plain_port']}" in str(caught.value)


def test_the_cli_segments_over_tls_and_explains_each_failure_in_one_line(servers, tmp_path, capsys):
    image = sitk.GetImageFromArray((np.random.default_rng(0).normal(40, 20, (24, 40, 40))).astype(np.int16))
    image.SetSpacing((1.5, 1.5, 2.0))
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((20, 20, 12)))
    points = tmp_path / "p.json"
    points.write_text(json.dumps({"points": [{"ras": [-centre[0], -centre[1], centre[2]], "positive": True}]}))
    common = ["segment", str(ct), "--points", str(points), "--token-file", str(servers["token_file"])]
    port = servers["port"]
    assert cli.main([*common, "--server", f"https://localhost:{port}", "--ca-file", str(servers["cert"]),
                     "-o", str(tmp_path / "mask.nii.gz")]) == 0
    assert (tmp_path / "mask.nii.gz").is_file()
    capsys.readouterr()
    for server, extra, expected in (
            (f"https://localhost:{port}", [], "--ca-file"),
            (f"http://localhost:{port}", ["--ca-file", str(servers["cert"])], f"try https://localhost:{port}"),
            (f"https://127.0.0.1:{servers['narrow_port']}", ["--ca-file", str(servers["narrow_cert"])],
             "hostname mismatch")):
        assert cli.main([*common, "--server", server, *extra, "-o", str(tmp_path / "x.nii.gz")]) == 2
        error = capsys.readouterr().err
        assert expected in error and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "x.nii.gz").exists()


def test_the_certificate_is_reused_while_it_covers_the_names_and_remade_for_a_new_one(tmp_path):
    first = ensure_self_signed(tmp_path, server_names("127.0.0.1"))
    assert first.created and "localhost" in first.names
    again = ensure_self_signed(tmp_path, server_names("127.0.0.1"))
    assert not again.created and again.cert_path.read_bytes() == first.cert_path.read_bytes()
    wider = ensure_self_signed(tmp_path, server_names("127.0.0.1", ["10.1.2.3"]))
    assert wider.created and "10.1.2.3" in certificate_names(wider.cert_path)[0]
    with pytest.raises(ServerConfigError, match="--san"):
        ensure_self_signed(tmp_path, ["not a host!"])


def test_serve_refuses_self_signed_mixed_with_its_own_files(tmp_path, capsys):
    assert cli.main(["serve", "--self-signed", "--ssl-certfile", str(tmp_path / "c.pem"),
                     "--ssl-keyfile", str(tmp_path / "k.pem")]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["serve", "--san", "gpu-box"]) == 2
    assert "add --self-signed" in capsys.readouterr().err


def test_self_signed_prints_the_certificate_and_the_client_options(servers):
    output = stop(servers["process"])  # the last test of the module (file order): its start-up lines
    assert f"TLS certificate made: {servers['cert']}" in output, output
    assert "--ca-file cert.pem" in output and 'verify="cert.pem"' in output and "CA / certificate" in output
    assert SAN in output and "never the key" in output and TOKEN not in output


@pytest.mark.parametrize("reason, cause", [
    ("certificate verify failed: certificate has expired", "expired"),
    ("certificate verify failed: Hostname mismatch, certificate is not valid for 'gpu-box'", "hostname"),
    ("certificate verify failed: unable to get local issuer certificate", "untrusted"),
    ("certificate verify failed: self signed certificate", "untrusted"),  # OpenSSL 1.1's spelling
    ("wrong version number", "use-http"), ("record layer failure", "use-http"),  # OpenSSL 3.0 / 3.2+
    ("tlsv1 alert internal error", "other"),
])
def test_each_openssl_reason_maps_to_its_cause(reason, cause):
    from SAMVolSegmentLib.remote.client import tls_error

    error = tls_error("https://gpu-box:8765", True, reason)
    assert error.cause == cause and reason in str(error) and str(error).startswith("TLS")
