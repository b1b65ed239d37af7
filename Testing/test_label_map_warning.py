"""A label map given as the image is segmented, with a warning on every surface: the engine function (what the
Slicer module's status line shows), the session API (``LabelMapWarning`` + ``image_warnings``), ``samvolseg
segment`` (one ``warning:`` line on stderr) and the batch report (per case)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMVolSegmentLib.cli import main as cli
from SAMVolSegmentLib.engine.image_checks import MAX_LABEL_VALUES, label_map_warning
from SAMVolSegmentLib.errors import LabelMapWarning


def ct_like(shape=(20, 48, 48), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(40, 30, shape) - 1024 * (rng.random(shape) < 0.2)).astype(np.int16)


def label_map(shape=(20, 48, 48)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[5:15, 10:30, 10:30] = 1
    label[8:12, 30:40, 12:20] = 2
    return label


def as_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 2.0))
    return image


def centre_ras(image: sitk.Image) -> list:
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()])
    return [-x, -y, z]


@pytest.mark.parametrize("array", [
    label_map(), label_map().astype(np.float32), label_map().astype(np.int16) * 1000,
    np.arange(20 * 48 * 48).reshape(20, 48, 48) % MAX_LABEL_VALUES,
])
def test_label_maps_are_recognised(array):
    message = label_map_warning(array)
    assert message is not None and "label map" in message and "image file, not the label" in message


def test_a_small_structure_in_a_large_volume_is_still_a_label_map():
    label = np.zeros((200, 128, 128), np.uint8)  # 3.3 M voxels: the check looks at a subsample
    label[100, 64, 64] = 1
    assert "2 integer values (0, 1)" in label_map_warning(label)


def coarse_ct() -> np.ndarray:
    """A CT with few distinct values (like Slicer's TinyPatient: 104), air included: not a label map."""
    return (np.round(ct_like() / 40.0) * 40).astype(np.int16)


@pytest.mark.parametrize("array", [
    ct_like(), ct_like().astype(np.float32) / 7.0, np.full((8, 8, 8), 5, np.int16), np.zeros((0, 4, 4)),
    np.arange(20 * 48 * 48).reshape(20, 48, 48) % (MAX_LABEL_VALUES + 1), coarse_ct(),
])
def test_images_are_not_label_maps(array):
    assert label_map_warning(array) is None


def test_a_sitk_image_is_checked_without_copying_and_fast():
    import time

    image = as_image(ct_like((120, 256, 256)))
    start = time.perf_counter()
    assert label_map_warning(image) is None
    assert time.perf_counter() - start < 1.0
    assert label_map_warning(as_image(label_map())) is not None


def test_the_session_warns_and_keeps_the_sentence(recwarn):
    from SAMVolSegmentLib import InteractiveSession, load_model

    session = InteractiveSession(load_model("default"))
    image = as_image(label_map())
    with pytest.warns(LabelMapWarning, match="label map") as caught:
        session.set_volume(image)
    assert caught[0].filename == __file__  # points at the caller's set_volume line
    assert session.image_warnings and "label map" in session.image_warnings[0]
    assert session.add_click(centre_ras(image), True) is not None  # warned, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelMapWarning)
        session.set_volume(as_image(ct_like()))
    assert session.image_warnings == ()
    session.close()


def test_cli_segment_warns_in_one_line_and_writes_the_mask(tmp_path, capsys):
    image = as_image(label_map())
    sitk.WriteImage(image, str(tmp_path / "label.nii.gz"))
    points = tmp_path / "p.json"
    points.write_text(json.dumps({"points": [{"ras": centre_ras(image), "positive": True}]}))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = cli.main(["segment", str(tmp_path / "label.nii.gz"), "--points", str(points),
                         "-o", str(tmp_path / "mask.nii.gz")])
    assert code == 0 and (tmp_path / "mask.nii.gz").is_file()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("samvolseg: warning: The image holds only 3 integer values"), err


def test_the_batch_report_lists_the_warning_per_case(tmp_path, capsys):
    for name, array in (("label", label_map()), ("ct", ct_like())):
        sitk.WriteImage(as_image(array), str(tmp_path / f"{name}.nii.gz"))
    points = tmp_path / "p.json"
    points.write_text(json.dumps({"points": [{"ras": centre_ras(as_image(label_map())), "positive": True}]}))
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,prompts,output\nlabel.nii.gz,p.json,out/label.nii.gz\nct.nii.gz,p.json,out/ct.nii.gz\n")
    assert cli.main(["batch", str(manifest)]) == 0
    printed = capsys.readouterr()
    assert "label.nii.gz): warning: The image holds only" in printed.out
    assert "LabelMapWarning" not in printed.err
    report = json.loads(Path(tmp_path / "cases.report.json").read_text())
    by_output = {Path(case["output"]).name: case for case in report["cases"]}
    assert by_output["label.nii.gz"]["status"] == "done" and "label map" in by_output["label.nii.gz"]["warnings"][0]
    assert by_output["ct.nii.gz"]["warnings"] == []
