"""The ``samvolseg`` CLI end to end with the real session and a tiny random-weight SAM-Med3D model.

A random model gives arbitrary masks, so these tests check files, geometry, shapes, messages and exit codes,
not Dice. The data is the demo's phantom (generated here at a coarse spacing), never a shipped case.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib import __version__
from SAMVolSegmentLib.cli.main import main
from SAMVolSegmentLib.model import ModelConfig, build_model
from SAMVolSegmentLib.progress import make_progress
from SAMVolSegmentLib.tools.evaluation import Case, evaluate_cases
from SAMVolSegmentLib.tools.phantom import PHANTOM_LABELS, make_phantom, write_phantom

TINY = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                   prompt_embed_dim=48, image_size=64)
#: The demo's phantom at a coarse spacing: the same anatomy and geometry rules, 1/9 of the voxels.
COARSE = (2.4, 2.4, 5.0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save({"model_state_dict": model.state_dict(), "config": TINY.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    """A data folder with one case, ``phantom/`` (image.nii.gz, label.nii.gz, labels.json)."""
    root = tmp_path_factory.mktemp("data")
    write_phantom(root / "phantom", spacing=COARSE)
    return root


@pytest.fixture(scope="module")
def image_path(phantom_dir) -> str:
    return str(phantom_dir / "phantom" / "image.nii.gz")


@pytest.fixture(scope="module")
def spleen_ras(phantom_dir) -> list:
    """RAS mm of the spleen's centre of mass (inside the target)."""
    image = sitk.ReadImage(str(phantom_dir / "phantom" / "image.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_dir / "phantom" / "label.nii.gz")))
    kji = np.argwhere(label == PHANTOM_LABELS["spleen"]).mean(axis=0)
    lps = image.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist())
    return [-lps[0], -lps[1], lps[2]]


def hidden_files(folder):
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def write_points(tmp_path, rows, name="points.csv"):
    path = tmp_path / name
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return str(path)


def write_dicom_series(image: sitk.Image, folder, series_uid: str) -> None:
    """Write a 3D image as an axial CT DICOM series, one file per slice, as a scanner does."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        tags = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid,
            "0020|0013": str(k + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": f"{image.GetSpacing()[2]:.4f}", "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)


# ---------------------------------------------------------------- segment
def test_segment_writes_mask_with_input_geometry(tmp_path, tiny_checkpoint, image_path, spleen_ras, capsys):
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"ras": spleen_ras, "positive": True},
                                             {"ras": [spleen_ras[0] + 5, *spleen_ras[1:]], "positive": False}]}))
    out = tmp_path / "mask.nrrd"
    assert main(["segment", image_path, "--points", str(points), "--output", str(out),
                 "--model", str(tiny_checkpoint)]) == 0
    image, mask = sitk.ReadImage(image_path), sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    printed = capsys.readouterr().out
    assert "+ click" in printed and "- click" in printed and "wrote" in printed
    assert not hidden_files(tmp_path)


def test_segment_with_a_box_clips_the_mask(tmp_path, tiny_checkpoint, image_path, spleen_ras):
    centre = np.array(spleen_ras)
    points = write_points(tmp_path, [("r", "a", "s", "positive"), (*centre, 1)])
    out = tmp_path / "mask.nii.gz"
    lo, hi = centre - 10, centre + 10
    assert main(["segment", image_path, "--points", points, "-o", str(out), "--model", str(tiny_checkpoint),
                 "--box", *[str(v) for v in (*hi, *lo)]]) == 0  # corners in any order
    mask = sitk.ReadImage(str(out))
    ras = [np.array(mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1]))) * [-1, -1, 1]
           for idx in np.argwhere(sitk.GetArrayFromImage(mask) > 0)[::50]]
    assert all(np.all(p >= lo - 1e-3) and np.all(p <= hi + 1e-3) for p in ras)


def test_negative_points_with_a_command_line_box_are_accepted(tmp_path, tiny_checkpoint, image_path, spleen_ras):
    centre = np.array(spleen_ras)
    points = write_points(tmp_path, [(*(centre + [0, 0, 5]), 0)])
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", image_path, "--points", points, "--output", str(out), "--model", str(tiny_checkpoint),
                 "--box", *[str(v) for v in (*(centre - 15), *(centre + 15))]]) == 0
    assert out.is_file()


@pytest.mark.parametrize(
    "points_text, output, message",
    [
        ("r,a,s,positive\n", "mask.nii.gz", "no points"),
        ("", "mask.nii.gz", "is empty"),
        ("1,2,3,0\n4,5,6,-\n", "mask.nii.gz", "only negative points (2)"),
        ("1,2,3,1\n", "mask.png", "extensions"),
    ],
)
def test_segment_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_checkpoint, image_path, capsys, points_text,
                                                      output, message):
    points = tmp_path / "points.csv"
    points.write_text(points_text)
    out = tmp_path / output
    code = main(["segment", image_path, "--points", str(points), "--output", str(out), "--model", str(tiny_checkpoint)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_2d_image_is_refused_before_the_model_loads(tmp_path, capsys):
    flat = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(flat))
    code = main(["segment", str(flat), "--points", write_points(tmp_path, [(1, 2, 3, 1)]),
                 "--output", str(tmp_path / "m.nii.gz"), "--model", "no-such-model-file.pt"])
    captured = capsys.readouterr()
    assert code == 2 and "2D image" in captured.err and "loaded" not in captured.out
    assert "no-such-model" not in captured.err  # the image was checked first


def test_a_dicom_series_folder_is_an_image(tmp_path, tiny_checkpoint, spleen_ras, capsys):
    phantom = make_phantom((4.0, 4.0, 5.0))
    write_dicom_series(phantom.image, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2")
    out = tmp_path / "mask.nii.gz"
    points = write_points(tmp_path, [(*spleen_ras, 1)])
    assert main(["segment", str(tmp_path / "dicom"), "--points", points, "--output", str(out),
                 "--model", str(tiny_checkpoint)]) == 0
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == phantom.image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), phantom.image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetSpacing(), phantom.image.GetSpacing(), atol=1e-3)

    # A second series in the same folder: the error lists both and says how to choose.
    write_dicom_series(phantom.image[:, :, :4], tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.3")
    assert main(["segment", str(tmp_path / "dicom"), "--points", points, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 DICOM series" in err and "1125.3 (4 files)" in err and "--series" in err
    assert main(["segment", str(tmp_path / "dicom"), "--series", "1.2.826.0.1.3680043.2.1125.3", "--points", points,
                 "--output", str(tmp_path / "small.nii.gz"), "--model", str(tiny_checkpoint)]) == 2
    assert "outside" in capsys.readouterr().err  # the 4-slice series was read: the click lies above it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(empty), "--points", points, "--output", str(out)]) == 2
    assert "without DICOM series" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch, image_path, capsys):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    code = main(["segment", image_path, "--points", write_points(tmp_path, [(1, 2, 3)]),
                 "--output", str(tmp_path / "m.nii.gz"), "--model", "sam-med3d-turbo"])
    assert code == 2
    assert "samvolseg models download sam-med3d-turbo" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("where", ["before", "after"])
def test_unavailable_device_is_one_line_before_or_after_the_subcommand(tmp_path, image_path, capsys, where):
    args = ["segment", image_path, "--points", write_points(tmp_path, [(1, 2, 3)]), "--output",
            str(tmp_path / "m.nii.gz")]
    args = ["--device", "cuda", *args] if where == "before" else [*args, "--device", "cuda"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--device cuda is not available" in err and "--device cpu" in err
    assert main(["demo", "--device", "cuda:7", "--clicks", "1", "--output", str(tmp_path / "demo")]) == 2
    assert "--device cuda:7 is not available" in capsys.readouterr().err
    assert main(["demo", "--device", "toaster", "--output", str(tmp_path / "demo")]) == 2
    assert "not a torch device" in capsys.readouterr().err


# ---------------------------------------------------------------- evaluate
def test_evaluate_writes_csv_json_png(tmp_path, tiny_checkpoint, phantom_dir, image_path, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"image,label,label_value\n{image_path},{phantom_dir / 'phantom' / 'label.nii.gz'},1\n")
    out = tmp_path / "eval"
    assert main(["evaluate", str(manifest), "--model", str(tiny_checkpoint), "--clicks", "2", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean_dice"]) == {"model", "baseline"}
    assert set(summary["mean_dice"]["model"]) == {"1", "2"}
    assert (out / "dice_vs_clicks.png").stat().st_size > 1000
    with open(out / "clicks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 and {r["method"] for r in rows} == {"model", "baseline"}
    assert "mean Dice" in capsys.readouterr().out


def test_evaluate_without_a_model_runs_the_baseline(tmp_path, phantom_dir):
    out = tmp_path / "eval"
    # --out: the old spelling of --output keeps working (hidden from the help)
    assert main(["evaluate", str(phantom_dir), "--model", "none", "--cases", "phantom", "--label", "1",
                 "--clicks", "2", "--out", str(out), "--no-plot"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["mean_dice"]) == ["baseline"] and summary["baseline_clicks"] == "own"
    assert not (out / "dice_vs_clicks.png").exists()
    assert main(["evaluate", str(phantom_dir), "--model", "none", "--cases", "nope", "--output", str(out)]) == 2


def test_evaluate_cases_gives_model_and_baseline_the_same_ras_clicks(tiny_checkpoint, phantom_dir):
    case = Case("phantom", phantom_dir / "phantom" / "image.nii.gz", phantom_dir / "phantom" / "label.nii.gz", 1)
    result = evaluate_cases([case], str(tiny_checkpoint), num_clicks=3)
    model = [r for r in result.rows if r.method == "model"]
    baseline = [r for r in result.rows if r.method == "baseline"]
    assert [r.click for r in model] == [1, 2, 3] == [r.click for r in baseline]
    assert [(r.r, r.a, r.s, r.positive) for r in model] == [(r.r, r.a, r.s, r.positive) for r in baseline]
    assert all(0.0 <= r.dice <= 1.0 for r in result.rows)
    assert all(r.latency_s > 0 for r in model if r.placed)


# ---------------------------------------------------------------- demo
def test_demo_makes_its_own_data_and_writes_mask_plot_overlay(tmp_path, tiny_checkpoint, capsys):
    assert main(["demo", "--model", str(tiny_checkpoint), "--clicks", "2", "--output", str(tmp_path)]) == 0
    phantom = make_phantom()  # the demo's data is the default phantom, regenerated identically
    mask = sitk.ReadImage(str(tmp_path / "demo_mask.nii.gz"))
    assert mask.GetSize() == phantom.image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), phantom.image.GetOrigin(), atol=1e-4)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "phantom" / "label.nii.gz")))
    assert np.array_equal(written, sitk.GetArrayFromImage(phantom.label))
    for name in ("dice_vs_clicks.png", "demo_overlay.png", "clicks.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 100, name
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "nothing is downloaded" in printed
    assert "baseline Dice" in printed and "click 2" in printed


def test_demo_on_your_own_case(tmp_path, tiny_checkpoint, phantom_dir, image_path, capsys):
    label = str(phantom_dir / "phantom" / "label.nii.gz")
    assert main(["demo", "--model", str(tiny_checkpoint), "--clicks", "1", "--output", str(tmp_path),
                 "--image", image_path, "--label", label, "--label-value", "3"]) == 0
    assert "your case" in capsys.readouterr().out and not (tmp_path / "phantom").exists()
    assert main(["demo", "--image", image_path, "--output", str(tmp_path)]) == 2
    assert "--image and --label go together" in capsys.readouterr().err


# ---------------------------------------------------------------- models, help, progress
def test_models_list_and_unknown_download(capsys):
    assert main(["models", "list"]) == 0
    printed = capsys.readouterr().out
    assert "sam-med3d-turbo" in printed and "default" in printed
    assert main(["models", "download", "no-such-model"]) == 2  # refused before any network access
    captured = capsys.readouterr()
    assert "not a downloadable model" in captured.err
    assert "%" not in captured.out + captured.err  # ... and before any progress output


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for command in ("segment", "evaluate", "demo", "models", "train", "finetune"):
        assert command in printed


@pytest.mark.parametrize("command", ["segment", "evaluate", "demo"])
def test_each_model_command_documents_device_and_output(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    printed = capsys.readouterr().out
    assert "--device" in printed and "--output" in printed
    assert "--out " not in printed  # the old spelling is accepted but not advertised


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"samvolseg {__version__} (torch ") and "Python 3." in printed


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(capsys):
    pytest.importorskip("tqdm")
    progress, close = make_progress("work", stream=io.StringIO())
    for step in range(101):
        progress(step / 100, f"step {step}")
    close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("work: 100%")
    terminal = _Terminal()
    progress, close = make_progress("work", stream=terminal)
    progress(0.5, "half")
    close()
    assert "\r" in terminal.getvalue() and "50%" in terminal.getvalue()
    assert capsys.readouterr().out == ""


def test_evaluate_stroke_protocols_beside_the_click_protocol(tmp_path, tiny_checkpoint, phantom_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(phantom_dir), "--model", str(tiny_checkpoint), "--cases", "phantom", "--label", "1",
                 "--clicks", "2", "--protocol", "strokes", "--output", str(out), "--threads", "1"]) == 0
    for protocol, first in (("lasso", "lasso"), ("scribbles", "scribble")):
        summary = json.loads((out / f"{protocol}_summary.json").read_text())
        assert summary["protocol"] == protocol and set(summary["mean_dice"]) == {"model", "baseline"}
        assert (out / f"dice_vs_prompts_{protocol}.png").stat().st_size > 1000
        with open(out / f"{protocol}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["prompt"] for r in rows if r["click"] == "1"] == [first, first]  # model and baseline
    assert not (out / "summary.json").exists()  # the click protocol was not asked for
    printed = capsys.readouterr().out
    assert "lasso protocol" in printed and "scribbles protocol" in printed
