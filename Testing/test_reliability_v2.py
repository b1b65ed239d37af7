"""Issue 26 (reliability v2): a full disk, a wrong manifest or a stop signal never loses data or leaves
processes behind.

Real parts only: a really full filesystem (a 64 kB tmpfs, mounted as root; skipped where that is not
allowed), real image files, real signals to real child processes, a real ``samvolseg serve`` subprocess.
The models are the transparent test model (``BallModel``): these tests are about files and processes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from processes import stop
from test_session_initial_mask import BallModel

import SAMVolSegmentLib.batch as batch
import SAMVolSegmentLib.cli.main as cli
from SAMVolSegmentLib.batch import (
    BatchCase,
    ManifestError,
    read_manifest,
    run_batch,
    segment_cases,
    write_manifest,
)
from SAMVolSegmentLib.cli.main import main

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared parts
@pytest.fixture()
def ball_model(monkeypatch):
    """The CLI and serial batches load the transparent test model for any --model."""
    monkeypatch.setattr(cli, "load_model_verbose", lambda model, device: BallModel())
    monkeypatch.setattr(batch, "worker_model", lambda model, device="cpu", threads=None: BallModel())
    return BallModel()


@pytest.fixture()
def full_disk(tmp_path):
    """A folder on a real, full filesystem: a 64 kB tmpfs filled to the last block."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}); needs root")
    try:
        with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(OSError) as full:
            (folder / "probe").write_bytes(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
        (folder / "probe").unlink(missing_ok=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# ---------------------------------------------------------------- fault 1: a full disk
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_full_disk_is_an_error_and_leaves_no_mask(tmp_path, capsys, image, points, ball_model, full_disk, suffix):
    output = full_disk / f"m{suffix}"
    code = main(["segment", str(image), "--points", str(points), "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert "wrote" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "could not be written completely" in lines[0] and "disk" in lines[0], lines
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no mask, no temporary


def test_a_full_disk_fails_the_batch_row_and_a_rerun_redoes_it(tmp_path, image, points, full_disk):
    cases = [BatchCase(str(image), str(points), str(full_disk / "m.nii.gz")),
             BatchCase(str(image), str(points), str(tmp_path / "out" / "ok.nii.gz"))]
    manifest = write_manifest(cases, tmp_path / "m.csv")
    summary = run_batch(manifest, model=BallModel())
    assert (summary["done"], summary["failed"]) == (1, 1)
    assert not (full_disk / "m.nii.gz").exists()
    (full_disk / "filler").unlink()  # the user frees space; the rerun writes the mask
    summary = run_batch(manifest, model=BallModel())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 1, 0)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(full_disk / "m.nii.gz"))).sum() > 0


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_the_read_back_check_accepts_headers_rounded_by_the_format(tmp_path, suffix):
    """NIfTI keeps the origin in float32: a far origin comes back rounded, and the mask is still complete."""
    from SAMVolSegmentLib.io_utils import write_image

    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    image.SetOrigin((-123456.789, 98765.4321, 0.1))
    image.SetSpacing((0.7123456789, 0.7, 3.3))
    write_image(image, tmp_path / f"m{suffix}")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"m{suffix}"))).sum() == 120


def test_an_empty_or_unreadable_output_is_redone_not_skipped(tmp_path, image, points):
    """What an earlier version left on a full disk (a 0-byte mask) is not a finished case."""
    cases = [BatchCase(str(image), str(points), str(tmp_path / "out" / f"{name}.nii.gz")) for name in "abc"]
    manifest = write_manifest(cases, tmp_path / "m.csv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.nii.gz").write_bytes(b"")
    (tmp_path / "out" / "b.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    summary = run_batch(manifest, model=BallModel())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 0)
    for name in "abc":
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{name}.nii.gz"))).sum() > 0


# ---------------------------------------------------------------- faults 2, 3: outputs that are inputs or twins
def _two_patients(tmp_path: Path, image: Path, points: Path):
    """Two rows' real inputs: images, prompt files and labels (each its own file)."""
    files = {}
    for name in ("a", "b"):
        files[name] = {"image": tmp_path / f"{name}.nii.gz", "prompts": tmp_path / f"{name}.csv",
                       "label": tmp_path / f"{name}_label.nii.gz"}
        files[name]["image"].write_bytes(image.read_bytes())
        files[name]["prompts"].write_text(points.read_text())
        label = np.zeros((10, 11, 12), np.uint8)
        label[2:8, 2:8, 2:8] = 1
        sitk.WriteImage(sitk.GetImageFromArray(label), str(files[name]["label"]))
    return files


def _snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["other image", "own label", "other image dotted", "other label via a link"])
def test_batch_overwrite_never_writes_over_any_rows_input(tmp_path, capsys, image, points, ball_model, target):
    files = _two_patients(tmp_path, image, points)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.nii.gz").symlink_to(files["b"]["label"])
    output = {"other image": files["b"]["image"], "own label": files["a"]["label"],
              "other image dotted": tmp_path / "sub" / ".." / "b.nii.gz",
              "other label via a link": tmp_path / "link.nii.gz"}[target]
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,prompts,output,label\n"
                        f"a.nii.gz,a.csv,{output},a_label.nii.gz\n"
                        f"b.nii.gz,{files['b']['prompts'].name},out_b.nii.gz,b_label.nii.gz\n")
    before = _snapshot(tmp_path)
    code = main(["batch", str(manifest), "--overwrite"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured
    assert "row 2: output" in lines[0] and "give the row another output" in lines[0], lines
    assert _snapshot(tmp_path) == before  # nothing written, no report


@pytest.mark.parametrize("spelling", ["out/sub/../x.nii.gz", "out//x.nii.gz", "linked/x.nii.gz", "./out/x.nii.gz"])
def test_one_output_spelled_two_ways_is_refused(tmp_path, capsys, image, points, spelling):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "out")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,prompts,output\n{image.name},{points.name},out/x.nii.gz\n"
                        f"{image.name},{points.name},{spelling}\n")
    before = _snapshot(tmp_path)
    code = main(["batch", str(manifest), "--model", "no-such-model.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rows 2 and 3 both write" in err[0], err
    assert _snapshot(tmp_path) == before
    with pytest.raises(ManifestError, match="both write"):  # the Python API with cases refuses them too
        list(segment_cases([BatchCase(str(image), str(points), str(tmp_path / "out/x.nii.gz")),
                            BatchCase(str(image), str(points), str(tmp_path / spelling))], model=BallModel()))


# ---------------------------------------------------------------- fault 9: a failed row leaves no mask
def test_a_row_whose_label_value_is_absent_fails_without_a_mask_and_fails_again(tmp_path, capsys, image, points,
                                                                                 ball_model):
    files = _two_patients(tmp_path, image, points)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,prompts,output,label,label_value\n"
                        "a.nii.gz,a.csv,out/a.nii.gz,a_label.nii.gz,7\n"  # the label holds only 0 and 1
                        "b.nii.gz,b.csv,out/b.nii.gz,b_label.nii.gz,1\n")
    assert files["a"]["label"].is_file()
    for attempt in range(2):  # the rerun must not skip the failed row
        code = main(["batch", str(manifest), "--model", "m"])
        out = capsys.readouterr().out
        assert not (tmp_path / "out" / "a.nii.gz").exists()
        assert (tmp_path / "out" / "b.nii.gz").is_file()
        assert code == 1, out
        failed = [line for line in out.splitlines() if " failed: " in line]
        assert len(failed) == 1 and "row 2 (a.nii.gz)" in failed[0] and "values present: [1]" in failed[0]
        assert "label_value column" in failed[0] and "--label" not in failed[0]
        done = "1 done, 0 skipped" if attempt == 0 else "0 done, 1 skipped"
        assert f"batch: 2 cases: {done} (already written), 1 failed" in out, out


# ---------------------------------------------------------------- fault 4: stopping a multi-worker batch
#: The batch program with 2 spawn workers whose writes linger after the temporary file is written (a case
#: caught mid-write). A file, not ``-c``: spawn workers import it as ``__mp_main__``, so its patches apply there.
STOPPABLE_BATCH = """
import os, signal, sys, time
sys.path.insert(0, {testing!r})
import SimpleITK as sitk
import SAMVolSegmentLib.batch as batch
from test_session_initial_mask import BallModel

batch.worker_model = lambda model, device="cpu", threads=None: BallModel()
_write = sitk.WriteImage
def lingering_write(image, path, *args):
    _write(image, path, *args)
    open(os.path.join({marks!r}, "writing-%d" % os.getpid()), "w").close()
    time.sleep(120)
sitk.WriteImage = lingering_write

if __name__ == "__main__":
    # As a shell starts a program: every stop signal at its default action.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    import SAMVolSegmentLib.cli.main as cli
    sys.argv = ["samvolseg", "batch", {manifest!r}, "--workers", "2", "--model", "ball"]
    sys.exit(cli.main())
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group, code, line", [
    (signal.SIGTERM, False, 143, "samvolseg: stopped (SIGTERM)"),
    (signal.SIGINT, True, 130, "samvolseg: interrupted"),
    (signal.SIGHUP, True, 129, "samvolseg: stopped (SIGHUP)"),
])
def test_a_stopped_multi_worker_batch_stops_its_workers_and_removes_temporaries(tmp_path, image, points, signum,
                                                                                to_group, code, line):
    cases = [BatchCase(str(image), str(points), str(tmp_path / "out" / f"case{n}.nii.gz")) for n in range(6)]
    manifest = write_manifest(cases, tmp_path / "m.csv")
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "stoppable_batch.py"
    script.write_text(STOPPABLE_BATCH.format(testing=str(Path(__file__).parent), marks=str(marks),
                                             manifest=str(manifest)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while len(list(marks.iterdir())) < 2:  # both workers hold a temporary mask
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.1)
        assert len(list((tmp_path / "out").glob(".*.tmp.nii.gz"))) == 2
        (os.killpg if to_group else os.kill)(child.pid, signum)
        out, err = child.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while _group_alive(child.pid) and time.monotonic() < deadline:  # workers, resource tracker
            time.sleep(0.1)
        leftovers = _group_alive(child.pid)
    finally:
        if child.poll() is None or _group_alive(child.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert not leftovers, "processes of the batch are still running after it stopped"
    assert child.returncode == code and err.strip().splitlines() == [line], (child.returncode, err)
    assert list((tmp_path / "out").iterdir()) == []  # no temporaries, no half-written masks


# ---------------------------------------------------------------- fault 8: a clean exit
EXIT_AFTER_SET_VOLUME = """
import sys
sys.path.insert(0, {testing!r})
import numpy as np, SimpleITK as sitk
from SAMVolSegmentLib.engine.session import InteractiveSession
from test_session_initial_mask import BallModel
image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (120, 200, 200)).astype(np.float32))
image.SetSpacing((0.7, 0.7, 1.3))
session = InteractiveSession(BallModel())
session.set_volume(image)  # the resampling runs in the session's background thread
if {clicks}:
    session.wait_until_ready()
    for n in range({clicks}):
        session.add_click((-10.0 - n % 5, -20.0, 20.0), n % 3 != 2)
    session.close()
sys.exit(0)
"""


def _exit_codes(tmp_path: Path, runs: int, clicks: int):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_AFTER_SET_VOLUME.format(testing=str(Path(__file__).parent), clicks=clicks))
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        results.append((done.returncode, done.stderr.strip()[-300:]))
    return results


def test_exit_right_after_set_volume_is_clean(tmp_path):
    """It aborted every time (rc 134, "FATAL: exception not rethrown"): the resampling thread was killed in ITK."""
    assert _exit_codes(tmp_path, 2, 0) == [(0, "")] * 2


@pytest.mark.slow
@pytest.mark.parametrize("clicks", [0, 30])
def test_exit_is_clean_in_50_runs(tmp_path, clicks):
    results = _exit_codes(tmp_path, 50 if clicks == 0 else 10, clicks)
    assert [r for r in results if r != (0, "")] == []


def test_a_session_is_not_kept_alive_by_its_idle_background_thread():
    """The thread kept the last job's bound method (hence the session, its tensors) until its next job, so a
    session dropped or closed was freed by that thread, possibly while the interpreter shut down."""
    import gc
    import weakref

    from SAMVolSegmentLib.engine.session import InteractiveSession

    for close in (False, True):
        session = InteractiveSession(BallModel())
        session.set_volume(np.zeros((20, 20, 20), np.float32) + np.arange(20, dtype=np.float32), np.eye(4))
        session.wait_until_ready()
        worker = session._executor
        alive = weakref.ref(session)
        if close:
            session.close()
        del session
        gc.collect()
        assert alive() is None, f"close={close}"
        worker.shutdown()
        worker.join(5)
        assert not worker._thread.is_alive()


# ---------------------------------------------------------------- faults 5-7: a real `samvolseg serve`
SERVER_TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig
    from SAMVolSegmentLib.tools.training import export_model

    torch.manual_seed(0)
    config = ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8), embed_dim=8,
                            decoder_channels=8)
    return export_model(ClickNet(config).eval(), tmp_path_factory.mktemp("model") / "tiny.pt", {"step": 0})


@contextlib.contextmanager
def serve(checkpoint: Path, *options: str):
    """``samvolseg serve`` in a child process on a free port; yields (url, psutil process)."""
    import socket

    psutil = pytest.importorskip("psutil")
    requests = pytest.importorskip("requests")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli.main", "serve", "--model", str(checkpoint),
                              "--port", str(port), "--token", SERVER_TOKEN, "--log-level", "warning", *options],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.stdout.read()
            with contextlib.suppress(requests.exceptions.ConnectionError):
                if requests.get(url + "/health", timeout=2).ok:
                    break
            assert time.monotonic() < deadline, "samvolseg serve did not come up in 60 s"
            time.sleep(0.2)
        yield url, psutil.Process(child.pid)
    finally:
        stop(child)


class PeakRSS:
    """The largest resident set size of a process, sampled every 20 ms in a thread."""

    def __init__(self, process) -> None:
        import threading

        self.process, self.peak, self._stop = process, process.memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _inflation_bomb(shape=(512, 512, 512), dtype="float64"):
    """An upload that declares ``shape`` voxels of ``dtype`` and sends zlib zeros (about 1 MB for 512³ float64)."""
    import zlib

    from SAMVolSegmentLib.remote.protocol import META_HEADER, VOLUME_CODEC

    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    compressor = zlib.compressobj(9)
    zeros = bytes(64 << 20)
    body = b"".join(compressor.compress(zeros[:min(len(zeros), size - done)]) for done in range(0, size, len(zeros)))
    body += compressor.flush()
    meta = {"shape": list(shape), "dtype": dtype, "codec": VOLUME_CODEC,
            "ijk_to_ras": np.eye(4).reshape(-1).tolist()}
    headers = {META_HEADER: json.dumps(meta), "Authorization": f"Bearer {SERVER_TOKEN}",
               "Content-Type": "application/octet-stream"}
    return body, headers


@pytest.mark.slow
def test_an_upload_bomb_is_refused_before_inflation_and_costs_no_memory(tiny_checkpoint):
    import requests

    from SAMVolSegmentLib.remote.protocol import API_PREFIX

    body, headers = _inflation_bomb()
    assert len(body) < 2 << 20
    with serve(tiny_checkpoint, "--max-memory-gb", "1") as (url, process):
        before = process.memory_info().rss
        with PeakRSS(process) as rss:
            start = time.monotonic()
            reply = requests.put(f"{url}{API_PREFIX}/volumes/{'0' * 32}", data=body, headers=headers, timeout=120)
            seconds = time.monotonic() - start
        print(f"upload bomb: HTTP {reply.status_code} in {seconds:.2f} s, peak RSS +{(rss.peak - before) / 1e6:.0f} MB")
        assert reply.status_code == 413 and "memory budget" in reply.json()["detail"], reply.text
        assert seconds < 3, seconds
        assert rss.peak - before < 100e6, f"RSS rose by {(rss.peak - before) / 1e6:.0f} MB"


@pytest.mark.slow
def test_concurrent_upload_bombs_are_counted_against_the_memory_budget(tiny_checkpoint):
    """Three at once used to inflate together (6.8 GB for three 512³ float64) and keep 1.6 GB resident."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from SAMVolSegmentLib.remote.protocol import API_PREFIX

    body, headers = _inflation_bomb((256, 256, 512))  # 256 MB of float64 each
    with serve(tiny_checkpoint, "--max-memory-gb", "1") as (url, process):
        before = process.memory_info().rss

        def put(n: int):
            return requests.put(f"{url}{API_PREFIX}/volumes/{n:032x}", data=body, headers=headers, timeout=300)

        with PeakRSS(process) as rss, ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(put, range(3)))
        statuses = sorted(r.status_code for r in replies)
        print(f"3 bombs: HTTP {statuses}, peak RSS +{(rss.peak - before) / 1e6:.0f} MB")
        assert all(s in (422, 503) for s in statuses), [r.text for r in replies]
        # One upload's peak (raw + voxels + float32 copy, about 0.9 GB) fits the 1 GB budget; three never run
        # together.
        assert rss.peak - before < 1.1e9, f"RSS rose by {(rss.peak - before) / 1e6:.0f} MB"
        time.sleep(0.5)
        assert process.memory_info().rss - before < 200e6, "memory stayed resident after the refusals"


@pytest.fixture(scope="module")
def default_checkpoint(tmp_path_factory) -> Path:
    """A frozen copy of the default model (64³ low-res logits: 1 MB per click; training replaces the original)."""
    import shutil

    from SAMVolSegmentLib.model.registry import resolve_model_path

    path = tmp_path_factory.mktemp("model") / "default_snapshot.pt"
    shutil.copyfile(resolve_model_path("default"), path)
    return path


@pytest.mark.slow
def test_the_server_memory_budget_holds_the_undo_logits(default_checkpoint):
    """Each undo step kept a 64³ logits tensor (1 MB) the history bound did not count: 4 sessions × 80 clicks
    held about 320 MB under a 4 MB history bound each. RSS is measured, not the server's counter."""
    from SAMVolSegmentLib.remote.client import RemoteSession

    rng = np.random.default_rng(0)
    array = rng.normal(0, 1, (40, 40, 40)).astype(np.float32)
    array[10:30, 10:30, 10:30] += 3
    ijk_to_ras = np.diag([1.5, 1.5, 1.5, 1.0])  # one ROI holds the whole volume: a single encode per session

    def clicks(count: int) -> None:
        session = RemoteSession(url, token=SERVER_TOKEN)
        session.set_volume(array, ijk_to_ras)
        for n in range(count):
            session.add_click((15.0 + n % 7, 15.0 + n % 5, 15.0 + n % 3), n % 4 != 3)
        sessions.append(session)  # kept open: its history stays on the server

    sessions: list = []
    with serve(default_checkpoint, "--max-memory-gb", "0.25", "--history-mb", "4", "--cache-gb", "0.05") as (
            url, process):
        clicks(3)  # warm-up: the model's first runs allocate their working memory
        before = process.memory_info().rss
        for _ in range(4):
            clicks(80)
        grown = process.memory_info().rss - before
    print(f"4 sessions x 80 clicks: RSS +{grown / 1e6:.0f} MB")
    # Held by the histories: 4 × 80 MB before, at most 4 × 4 MB now; the rest is the model's working memory.
    assert grown < 200e6, f"RSS grew by {grown / 1e6:.0f} MB for 4 sessions with a 4 MB history bound each"


@pytest.mark.slow
def test_a_session_that_expires_while_its_click_waits_in_the_queue_is_replayed(tiny_checkpoint):
    """It failed with 409 SessionStateError ("create a new InteractiveSession"); now 410, which the client
    answers by replaying its steps on a new session, as for an expiry between requests."""
    import threading

    import requests

    from SAMVolSegmentLib.remote.client import RemoteSession
    from SAMVolSegmentLib.remote.protocol import API_PREFIX

    rng = np.random.default_rng(0)
    small = rng.normal(0, 1, (20, 20, 20)).astype(np.float32)
    small[5:15, 5:15, 5:15] += 3
    # Coarse voxels (4 mm): their model grid (1.5 mm) has 533³ voxels, so the first click waits on the model
    # worker for the resampling (seconds).
    large = (np.tile(np.linspace(0, 1, 200, dtype=np.float32), (200, 200, 1))
             + rng.normal(0, 0.01, (200, 200, 200)).astype(np.float32))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    auth = {"Authorization": f"Bearer {SERVER_TOKEN}"}
    with serve(tiny_checkpoint, "--lease-minutes", "0.02") as (url, process):  # a 1.2 s lease
        slow, victim = RemoteSession(url, token=SERVER_TOKEN), RemoteSession(url, token=SERVER_TOKEN)
        victim.set_volume(small, affine)
        victim.add_click((10.0, 10.0, 10.0), True)
        first_sid = victim._sid
        renewing = threading.Event()
        renewing.set()

        def renew() -> None:  # keeps the victim's lease while the large volume is uploaded
            while renewing.is_set():
                requests.get(f"{url}{API_PREFIX}/sessions/{first_sid}", headers=auth, timeout=30)
                time.sleep(0.2)

        renewer = threading.Thread(target=renew)
        renewer.start()
        slow.set_volume(large, np.diag([4.0, 4.0, 4.0, 1.0]))  # its resampling starts now
        results = {}

        def click(name, session, point):
            try:
                results[name] = session.add_click(point, True)
            except Exception as exc:  # recorded for the assertion
                results[name] = exc

        # A click sent at once (without the client's wait for readiness) holds the model worker meanwhile.
        blocker = threading.Thread(target=lambda: requests.post(
            f"{url}{API_PREFIX}/sessions/{slow._sid}/click", json={"point_ras": [400.0, 400.0, 400.0]},
            headers=auth, timeout=120))
        blocker.start()
        time.sleep(0.2)
        renewing.clear()
        renewer.join()
        queued = threading.Thread(target=click, args=("victim", victim, (8.0, 8.0, 8.0)))
        queued.start()
        time.sleep(2.0)  # the victim's lease runs out while its click waits behind the resampling
        stats = requests.get(f"{url}{API_PREFIX}/stats", headers=auth, timeout=30).json()  # reaps expired ones
        blocker.join(120)
        queued.join(120)
        assert stats["store"]["expired"] >= 1 and stats["queue_depth"] >= 1, stats
        assert not isinstance(results["victim"], Exception), repr(results["victim"])
        assert victim._sid != first_sid  # replayed on a new session
        assert len(victim.clicks) == 2 and results["victim"].mask.any()


# ---------------------------------------------------------------- faults 10, 11: prompt files
def test_a_csv_with_a_utf8_bom_keeps_its_first_click(tmp_path):
    from SAMVolSegmentLib.engine.prompts_io import read_prompts

    path = tmp_path / "p.csv"
    path.write_bytes("\ufeff1.5,2,3,1\n4,5,6,0\n".encode("utf-8"))  # Excel's "CSV UTF-8", no header
    prompts = read_prompts(path)
    assert len(prompts) == 2 and prompts.points_ras[0].tolist() == [1.5, 2.0, 3.0]
    path.write_bytes("\ufeffr,a,s,positive\n1.5,2,3,1\n".encode("utf-8"))  # with a header
    assert len(read_prompts(path)) == 1


@pytest.mark.parametrize("first", ["3O,12,5,1", "3,12,5O,1", "1e,2,3"])
def test_a_first_row_with_a_typo_is_an_error_not_a_header(tmp_path, first):
    from SAMVolSegmentLib.engine.prompts_io import read_prompts
    from SAMVolSegmentLib.errors import InvalidPromptError

    path = tmp_path / "p.csv"
    path.write_text(f"{first}\n4,5,6,1\n")
    with pytest.raises(InvalidPromptError, match=r"row 1 \(.*\) is not r,a,s"):
        read_prompts(path)


def test_a_deeply_nested_prompt_json_is_one_line(tmp_path, capsys, image):
    path = tmp_path / "deep.json"
    path.write_text('{"points": ' + "[" * 3000 + "]" * 3000 + "}")
    code = main(["segment", str(image), "--points", str(path), "--output", str(tmp_path / "m.nii.gz"),
                 "--model", "no-such-model.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nested" in err[0] and "Traceback" not in err[0], err


def test_a_csv_comment_in_cp1252_is_read(tmp_path):
    from SAMVolSegmentLib.engine.prompts_io import read_prompts

    path = tmp_path / "p.csv"
    path.write_bytes("# Patient: Müller, résumé\n1,2,3,1\n".encode("cp1252"))
    assert read_prompts(path).points_ras.tolist() == [[1.0, 2.0, 3.0]]


def test_a_prompt_json_that_is_not_utf8_is_one_line(tmp_path, capsys, image):
    path = tmp_path / "p.json"
    path.write_bytes('{"points": [{"ras": [1, 2, 3], "label": "Müller"}]}'.encode("cp1252"))
    code = main(["segment", str(image), "--points", str(path), "--output", str(tmp_path / "m.nii.gz"),
                 "--model", "no-such-model.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "UTF-8" in err[0], err


# ---------------------------------------------------------------- fault 12: train on bad data
def _training_case(folder: Path, label_size=(30, 30, 30), label_origin=(0.0, 0.0, 0.0)) -> Path:
    folder.mkdir(parents=True)
    array = np.random.default_rng(0).normal(0, 1, (30, 30, 30)).astype(np.float32)
    array[8:22, 8:22, 8:22] += 4
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(image, str(folder / "image.nii.gz"))
    label = np.zeros(label_size[::-1], np.uint8)
    label[8:22, 8:22, 8:22] = 1
    label_image = sitk.GetImageFromArray(label)
    label_image.SetSpacing((1.5, 1.5, 1.5))
    label_image.SetOrigin(label_origin)
    sitk.WriteImage(label_image, str(folder / "label.nii.gz"))
    return folder


@pytest.mark.parametrize("problem, message", [
    ("label size", "has size (32.0, 30.0, 30.0)"),
    ("label origin", "has origin (26.0, 0.0, 0.0)"),
    ("no case", "No training case in"),
])
def test_train_on_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, problem, message):
    data = tmp_path / "data"
    if problem == "label size":
        _training_case(data / "a", label_size=(32, 30, 30))
    elif problem == "label origin":
        _training_case(data / "a", label_origin=(26.0, 0.0, 0.0))
    else:
        data.mkdir()
    output = tmp_path / "run"
    code = main(["train", "--data", str(data), "--output", str(output), "--minutes", "0.01"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], (code, captured)
    assert not output.exists()


# ---------------------------------------------------------------- fault 13: messages
def test_a_manifest_with_a_byte_order_mark_reads(tmp_path, image, points):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(f"\ufeffimage,prompts,output\n{image.name},{points.name},out/a.nii.gz\n".encode())
    (case,) = read_manifest(manifest)
    assert case.image == str(image) and case.row == 2


def test_a_click_just_past_the_far_face_is_less_than_a_tenth_of_a_mm_beyond_it():
    from SAMVolSegmentLib.engine.session import InteractiveSession
    from SAMVolSegmentLib.errors import InvalidPromptError

    with InteractiveSession(BallModel()) as session:
        session.set_volume(np.random.default_rng(0).normal(0, 1, (10, 11, 12)).astype(np.float32), np.eye(4))
        session.wait_until_ready()
        with pytest.raises(InvalidPromptError) as info:
            session.add_click((11.5 + 1e-6, 5.0, 5.0))  # the far face in i is at 11.5 (centres 0..11)
    message = str(info.value)
    assert "less than 0.1 mm beyond its R side" in message and "to [11.5, 10.5, 9.5] mm" in message, message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_an_existing_fifo_given_as_output_is_refused_and_kept(tmp_path, capsys, image, points):
    import stat

    fifo = tmp_path / "m.nii.gz"
    os.mkfifo(fifo)
    code = main(["segment", str(image), "--points", str(points), "--output", str(fifo), "--model", "none.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a FIFO" in err[0], err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_tls_key_of_another_certificate_is_one_line_naming_the_files(tmp_path, capsys, self_signed):
    cert, _ = self_signed
    other_key = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(other_key), "2048"], check=True, capture_output=True)
    code = main(["serve", "--model", "no-such-model.pt", "--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "serving" not in captured.out, captured
    assert str(other_key) in lines[0] and "not the private key" in lines[0], lines


@pytest.mark.slow
def test_server_without_a_token_names_the_cli_option(tmp_path, capsys, tiny_checkpoint, image, points, monkeypatch):
    monkeypatch.delenv("SAMVOLSEG_SERVER_TOKEN", raising=False)
    with serve(tiny_checkpoint) as (url, _):
        code = main(["segment", str(image), "--points", str(points), "--output", str(tmp_path / "m.nii.gz"),
                     "--server", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--token-file" in err[0] and "token=" not in err[0], err


# ---------------------------------------------------------------- fault 14: CSV injection
def test_a_case_named_like_a_formula_is_text_in_clicks_csv(tmp_path, capsys):
    import csv

    name = '=HYPERLINK("evil.example","open me")'
    _training_case(tmp_path / "data" / name)
    _training_case(tmp_path / "data" / "-plain")
    code = main(["evaluate", str(tmp_path / "data"), "--model", "none", "--clicks", "1", "--output",
                 str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    with open(tmp_path / "out" / "clicks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    cells = [value for row in rows for value in row.values()]
    formulas = [v for v in cells if v.startswith(("=", "+", "-", "@"))
                and not v.lstrip("+-").replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit()]
    assert formulas == [], formulas  # negative numbers stay numbers
    assert f"'{name}" in cells and "'-plain" in cells
