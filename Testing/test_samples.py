"""Sample cases for ``samvolseg demo --sample``: the checked, cached download and the segmentation reader.

Downloads run for real against an ``http.server`` on 127.0.0.1 serving generated files; nothing here uses the
internet. Segmentations are written as 3D Slicer writes ``.seg.nrrd`` files (NRRD header fields
``Segment<N>_Name/_LabelValue/_Layer``, overlapping segments in layers along a first ``list`` axis).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk

from SAMVolSegmentLib.cli.main import main
from SAMVolSegmentLib.download import download_file
from SAMVolSegmentLib.errors import DownloadError
from SAMVolSegmentLib.tools import samples
from SAMVolSegmentLib.tools.samples import (
    SAMPLES,
    SLICER_TESTING_DATA,
    Sample,
    SampleFile,
    UnknownSampleError,
    fetch_sample,
    segmentation_to_label_map,
)

SHAPE_KJI = (12, 40, 48)
SPACING = (1.5, 1.5, 3.0)  # (x, y, z) mm
ORIGIN_LPS = (-30.0, -20.0, 40.0)


# ---------------------------------------------------------------- data as Slicer writes it
def ct_image() -> sitk.Image:
    """A small CT: a body ellipse (40 HU) in air with a bright round tumour (120 HU) inside."""
    k, j, i = np.indices(SHAPE_KJI)
    body = ((j - 20) / 17.0) ** 2 + ((i - 24) / 21.0) ** 2 <= 1
    tumour = ((k - 6) * 3.0) ** 2 + ((j - 18) * 1.5) ** 2 + ((i - 26) * 1.5) ** 2 <= 7.0**2
    hu = np.where(body, 40.0, -1000.0) + np.where(tumour, 80.0, 0.0)
    hu += np.random.default_rng(0).normal(0, 5, SHAPE_KJI)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    return image


def structures_kji():
    """(body, tumour) bool masks of :func:`ct_image` (the tumour lies inside the body: they overlap)."""
    array = sitk.GetArrayFromImage(ct_image())
    return array > -500, array > 90


def write_seg_nrrd(path: Path, layers_kji: np.ndarray, origin_lps, segments: List[Dict[str, object]],
                   layered: bool = True) -> Path:
    """A Slicer-style ``.seg.nrrd``: gzip NRRD, LPS space, segment fields in the header; ``layers_kji`` is
    (L, K, J, I) uint8, written as a 4D file with a first ``list`` axis, or as 3D when one layer and not
    ``layered``."""
    count, k, j, i = layers_kji.shape
    if layered:
        sizes, kinds = f"{count} {i} {j} {k}", "list domain domain domain"
        directions = f"none ({SPACING[0]},0,0) (0,{SPACING[1]},0) (0,0,{SPACING[2]})"
        body = np.ascontiguousarray(np.moveaxis(layers_kji, 0, -1)).tobytes()  # the list axis varies fastest
    else:
        sizes, kinds = f"{i} {j} {k}", "domain domain domain"
        directions = f"({SPACING[0]},0,0) (0,{SPACING[1]},0) (0,0,{SPACING[2]})"
        body = np.ascontiguousarray(layers_kji[0]).tobytes()
    fields = "".join(f"Segment{n}_{key}:={value}\n" for n, segment in enumerate(segments)
                     for key, value in segment.items())
    header = (f"NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"
              f"type: unsigned char\ndimension: {4 if layered else 3}\nspace: left-posterior-superior\n"
              f"sizes: {sizes}\nspace directions: {directions}\nkinds: {kinds}\nencoding: gzip\n"
              f"space origin: ({origin_lps[0]},{origin_lps[1]},{origin_lps[2]})\n"
              f"Segmentation_MasterRepresentation:=Binary labelmap\n{fields}\n")
    path.write_bytes(header.encode("ascii") + gzip.compress(body))
    return path


def slicer_segmentation(path: Path) -> Path:
    """Body (layer 0, value 1) and tumour (layer 1, value 1), cropped to the body's extent as Slicer saves it."""
    body, tumour = structures_kji()
    (k0, k1), (j0, j1), (i0, i1) = [(int(a.min()), int(a.max()) + 1) for a in np.nonzero(body)]
    layers = np.stack([body, tumour])[:, k0:k1, j0:j1, i0:i1].astype(np.uint8)
    origin = np.asarray(ORIGIN_LPS) + np.asarray([i0, j0, k0]) * np.asarray(SPACING)
    return write_seg_nrrd(path, layers, origin, [
        {"Name": "Body_Contour", "LabelValue": 1, "Layer": 0},
        {"Name": "Tumor_Contour", "LabelValue": 1, "Layer": 1},
    ])


# ---------------------------------------------------------------- the segmentation reader
def test_layered_cropped_segmentation_becomes_a_label_map_on_the_image_grid(tmp_path):
    body, tumour = structures_kji()
    label, segments = segmentation_to_label_map(slicer_segmentation(tmp_path / "s.seg.nrrd"), ct_image())
    assert segments == {"Body_Contour": 1, "Tumor_Contour": 2}
    array = sitk.GetArrayFromImage(label)
    assert label.GetSize() == ct_image().GetSize() and label.GetOrigin() == ct_image().GetOrigin()
    np.testing.assert_array_equal(array == 2, tumour)  # the smaller segment is painted last: kept whole
    np.testing.assert_array_equal(array == 1, body & ~tumour)


def test_single_layer_segmentation_with_label_values(tmp_path):
    body, tumour = structures_kji()
    merged = np.where(tumour, 7, np.where(body, 3, 0)).astype(np.uint8)[None]
    path = write_seg_nrrd(tmp_path / "one.seg.nrrd", merged, ORIGIN_LPS, [
        {"Name": "Body", "LabelValue": 3, "Layer": 0}, {"Name": "Tumour", "LabelValue": 7, "Layer": 0}], layered=False)
    label, segments = segmentation_to_label_map(path, ct_image())
    assert segments == {"Body": 1, "Tumour": 2}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label) == 2, tumour)


def test_plain_label_map_and_bad_segmentations(tmp_path):
    body, tumour = structures_kji()
    plain = sitk.GetImageFromArray(np.where(tumour, 4, 0).astype(np.uint8))
    plain.CopyInformation(ct_image())
    sitk.WriteImage(plain, str(tmp_path / "plain.nrrd"))
    label, segments = segmentation_to_label_map(tmp_path / "plain.nrrd", ct_image())
    assert segments == {"4": 1} and int(sitk.GetArrayFromImage(label).sum()) == int(tumour.sum())
    far = write_seg_nrrd(tmp_path / "far.seg.nrrd", tumour[None].astype(np.uint8), (900.0, 0.0, 0.0),
                         [{"Name": "Tumour", "LabelValue": 1, "Layer": 0}])
    with pytest.raises(Exception, match="Tumour.*no voxel on the image's grid"):
        segmentation_to_label_map(far, ct_image())


# ---------------------------------------------------------------- downloads, for real, on 127.0.0.1
class _Server(http.server.ThreadingHTTPServer):
    files: Dict[str, bytes]
    requests: List[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    ct = tmp_path / "served" / "ct.nrrd"
    ct.parent.mkdir()
    sitk.WriteImage(ct_image(), str(ct), True)
    seg = slicer_segmentation(tmp_path / "served" / "structures.seg.nrrd")
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files = {"/ct.nrrd": ct.read_bytes(), "/structures.seg.nrrd": seg.read_bytes()}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMVOLSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(monkeypatch, base_url: str, files: Dict[str, bytes], sha_seg: str = "") -> Sample:
    """A test sample served by ``base_url``, with the SHA-256 of the served bytes (or ``sha_seg`` instead)."""
    def item(name: str, sha: str = "") -> SampleFile:
        return SampleFile(name.strip("/"), base_url + name, sha or hashlib.sha256(files[name]).hexdigest())

    sample = Sample("testcase", "a generated CT", item("/ct.nrrd"), item("/structures.seg.nrrd", sha_seg),
                    "tumor", "this test", "CC0")
    monkeypatch.setitem(SAMPLES, sample.name, sample)
    return sample


def test_download_verifies_caches_and_then_needs_no_network(server, cache, monkeypatch):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _register(monkeypatch, url, server.files)
    fractions = []
    prepared = fetch_sample("testcase", progress=lambda f, m: fractions.append(f))
    folder = cache / "samples" / "testcase"
    assert sorted(server.requests) == ["/ct.nrrd", "/structures.seg.nrrd"]
    assert sorted(p.name for p in folder.iterdir()) == ["ct.nrrd", "label.nii.gz", "labels.json", "structures.seg.nrrd"]
    assert (folder / "ct.nrrd").read_bytes() == server.files["/ct.nrrd"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert prepared.segments == {"Body_Contour": 1, "Tumor_Contour": 2}
    assert prepared.target_value() == ("Tumor_Contour", 2) and prepared.target_value("body") == ("Body_Contour", 1)
    with pytest.raises(UnknownSampleError, match="its segments: Body_Contour, Tumor_Contour"):
        prepared.target_value("liver")
    # Second call: everything comes from the cache; the server sees no request (it could as well be gone).
    _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}", server.files)
    again = fetch_sample("testcase")
    assert len(server.requests) == 2 and again.segments == prepared.segments
    assert json.loads((folder / "labels.json").read_text()) == {"1": "Body_Contour", "2": "Tumor_Contour"}


def test_wrong_hash_is_refused_and_nothing_is_cached(server, cache, monkeypatch):
    _register(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}", server.files, sha_seg="ab" * 32)
    with pytest.raises(DownloadError, match="structures.seg.nrrd.*wrong sha256.*not kept") as info:
        fetch_sample("testcase")
    assert not info.value.unreachable
    folder = cache / "samples" / "testcase"
    assert sorted(p.name for p in folder.iterdir()) == ["ct.nrrd"]  # the good file only; no partial, no label


def test_a_cached_file_that_changed_is_downloaded_again(server, cache, tmp_path):
    target = tmp_path / "cache" / "ct.nrrd"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    sha = hashlib.sha256(server.files["/ct.nrrd"]).hexdigest()
    download_file(f"http://127.0.0.1:{server.server_address[1]}/ct.nrrd", target, sha256=sha)
    assert target.read_bytes() == server.files["/ct.nrrd"] and server.requests == ["/ct.nrrd"]


def test_unreachable_host_is_one_clear_line(cache, monkeypatch):
    port = _closed_port()
    _register(monkeypatch, f"http://127.0.0.1:{port}", {"/ct.nrrd": b"x", "/structures.seg.nrrd": b"y"})
    with pytest.raises(DownloadError) as info:
        fetch_sample("testcase", timeout=5)
    message = str(info.value)
    assert info.value.unreachable and "\n" not in message
    assert message.startswith(f"cannot reach 127.0.0.1:{port} (") and "run with network" in message
    assert "phantom demo" in message and "--image/--label" in message
    assert not list((cache / "samples" / "testcase").iterdir())


def test_registry_pins_slicer_urls_that_embed_their_sha256():
    for sample in samples.list_samples():
        for item in sample.files:
            assert item.url == SLICER_TESTING_DATA + item.sha256 and len(item.sha256) == 64
            int(item.sha256, 16)
    with pytest.raises(UnknownSampleError, match="tinypatient"):
        samples.get_sample("no-such-sample")


# ---------------------------------------------------------------- the CLI
def test_demo_sample_downloads_once_and_clicks_the_named_segment(server, cache, monkeypatch, tmp_path, capsys):
    _register(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}", server.files)
    assert main(["demo", "--list-samples"]) == 0
    assert "testcase       not downloaded" in capsys.readouterr().out
    out = tmp_path / "demo"
    assert main(["demo", "--sample", "testcase", "--clicks", "2", "--output", str(out)]) == 0  # bundled model
    printed = capsys.readouterr().out
    assert "downloading ct.nrrd, structures.seg.nrrd from 127.0.0.1" in printed
    assert "sample testcase: 100%" in printed  # plain progress lines off a terminal
    assert "Target: segment Tumor_Contour (label 2" in printed and "click 2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == ["testcase:2"]
    assert main(["demo", "--sample", "testcase", "--target", "body", "--clicks", "1", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "in the cache" in printed and "segment Body_Contour" in printed and len(server.requests) == 2


def test_demo_sample_offline_or_misused_is_one_line(cache, monkeypatch, tmp_path, capsys):
    _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}", {"/ct.nrrd": b"x", "/structures.seg.nrrd": b"y"})
    assert main(["demo", "--sample", "testcase", "--output", str(tmp_path / "d")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("samvolseg: error: cannot reach 127.0.0.1:") and "\n" not in error
    assert main(["demo", "--sample", "nope", "--output", str(tmp_path / "d")]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["demo", "--sample", "testcase", "--image", "a.nii.gz", "--label", "b.nii.gz",
                 "--output", str(tmp_path / "d")]) == 2
    assert "alternatives" in capsys.readouterr().err
