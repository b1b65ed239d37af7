"""Issue 26 (reliability v2): a full disk, a wrong manifest or a stop signal never loses data or leaves
processes behind.

Real parts only: a really full filesystem (a 64 kB tmpfs, mounted as root; skipped where that is not
allowed), real image files, real signals to real child processes, a real ``samvolseg serve`` subprocess.
The models are the transparent test model (``BallModel``): these tests are about files and processes.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_session_initial_mask import BallModel

import SAMVolSegmentLib.cli.main as cli
from SAMVolSegmentLib.batch import BatchCase, run_batch, write_manifest
from SAMVolSegmentLib.cli.main import main

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared parts
@pytest.fixture()
def image(tmp_path) -> Path:
    """A small real image (12 × 11 × 10 voxels of 1 mm, origin 0)."""
    array = np.random.default_rng(0).normal(0, 1, (10, 11, 12)).astype(np.float32)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.fixture()
def points(tmp_path) -> Path:
    """One positive click inside the image (RAS -5, -5, 5 is LPS 5, 5, 5)."""
    path = tmp_path / "p.csv"
    path.write_text("-5,-5,5,1\n")
    return path


@pytest.fixture()
def ball_model(monkeypatch):
    """The CLI loads the transparent test model for any --model."""
    monkeypatch.setattr(cli, "load_model_verbose", lambda model, device: BallModel())
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
