"""The ``samvolseg`` CLI end to end with the real session and a tiny random-weight SAM-Med3D model.

A random model gives arbitrary masks, so these tests check files, geometry, shapes and exit codes, not Dice.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib import cli
from SAMVolSegmentLib.cli import main
from SAMVolSegmentLib.evaluation import Case, evaluate_cases
from SAMVolSegmentLib.model import ModelConfig, build_model
from SAMVolSegmentLib.samples import DEMO_SAMPLE, list_samples, sample_dir

TINY = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                   prompt_embed_dim=48, image_size=64)
SAMPLE = sample_dir()
IMAGE = str(SAMPLE / "image.nii.gz")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save({"model_state_dict": model.state_dict(), "config": TINY.to_dict()}, path)
    return path


def sample_centre_ras() -> list:
    image = sitk.ReadImage(IMAGE)
    lps = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return [-lps[0], -lps[1], lps[2]]


def hidden_files(folder):
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_sample_is_shipped_with_its_licence():
    assert DEMO_SAMPLE in list_samples()
    readme = (SAMPLE / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Decathlon" in readme
    image, label = sitk.ReadImage(IMAGE), sitk.ReadImage(str(SAMPLE / "label.nii.gz"))
    assert image.GetSize() == label.GetSize()
    with pytest.raises(FileNotFoundError, match="not installed"):
        sample_dir("no_such_sample")


def test_segment_writes_mask_with_input_geometry(tmp_path, tiny_checkpoint, capsys):
    centre = sample_centre_ras()
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"ras": centre, "positive": True},
                                             {"ras": [centre[0] + 5, centre[1], centre[2]], "positive": False}]}))
    out = tmp_path / "mask.nrrd"
    assert main(["segment", IMAGE, "--points", str(points), "--output", str(out), "--model", str(tiny_checkpoint)]) == 0
    image, mask = sitk.ReadImage(IMAGE), sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    printed = capsys.readouterr().out
    assert "+ click" in printed and "- click" in printed and "wrote" in printed
    assert not hidden_files(tmp_path)


def test_segment_with_a_box_clips_the_mask(tmp_path, tiny_checkpoint):
    centre = np.array(sample_centre_ras())
    points = tmp_path / "points.csv"
    points.write_text("r,a,s,positive\n" + ",".join(str(v) for v in centre) + ",1\n")
    out = tmp_path / "mask.nii.gz"
    lo, hi = centre - 10, centre + 10
    assert main(["segment", IMAGE, "--points", str(points), "--output", str(out), "--model", str(tiny_checkpoint),
                 "--box", *[str(v) for v in (*hi, *lo)]]) == 0  # corners in any order
    mask = sitk.ReadImage(str(out))
    ras = [np.array(mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1]))) * [-1, -1, 1]
           for idx in np.argwhere(sitk.GetArrayFromImage(mask) > 0)[::50]]
    assert all(np.all(p >= lo - 1e-3) and np.all(p <= hi + 1e-3) for p in ras)


@pytest.mark.parametrize(
    "points_text, output, message",
    [
        ("r,a,s,positive\n", "mask.nii.gz", "no points"),
        ("1,2,3,1\n", "mask.png", "extensions"),
    ],
)
def test_segment_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_checkpoint, capsys, points_text, output, message):
    points = tmp_path / "points.csv"
    points.write_text(points_text)
    out = tmp_path / output
    code = main(["segment", IMAGE, "--points", str(points), "--output", str(out), "--model", str(tiny_checkpoint)])
    assert code == 2 and not out.exists()
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    points = tmp_path / "p.csv"
    points.write_text("1,2,3\n")
    code = main(["segment", IMAGE, "--points", str(points), "--output", str(tmp_path / "m.nii.gz"),
                 "--model", "sam-med3d-turbo"])
    assert code == 2
    assert "samvolseg models download sam-med3d-turbo" in capsys.readouterr().err


def test_evaluate_writes_csv_json_png(tmp_path, tiny_checkpoint, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"image,label\n{IMAGE},{SAMPLE / 'label.nii.gz'}\n")
    out = tmp_path / "eval"
    assert main(["evaluate", str(manifest), "--model", str(tiny_checkpoint), "--clicks", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean_dice"]) == {"model", "baseline"}
    assert set(summary["mean_dice"]["model"]) == {"1", "2"}
    assert (out / "dice_vs_clicks.png").stat().st_size > 1000
    with open(out / "clicks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 and {r["method"] for r in rows} == {"model", "baseline"}
    assert "mean Dice" in capsys.readouterr().out


def test_evaluate_without_a_model_runs_the_baseline(tmp_path):
    out = tmp_path / "eval"
    data = SAMPLE.parent
    assert main(["evaluate", str(data), "--model", "none", "--cases", DEMO_SAMPLE, "--clicks", "2",
                 "--out", str(out), "--no-plot"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["mean_dice"]) == ["baseline"] and summary["baseline_clicks"] == "own"
    assert not (out / "dice_vs_clicks.png").exists()
    assert main(["evaluate", str(data), "--model", "none", "--cases", "nope", "--out", str(out)]) == 2


def test_evaluate_cases_gives_model_and_baseline_the_same_ras_clicks(tiny_checkpoint):
    case = Case(DEMO_SAMPLE, SAMPLE / "image.nii.gz", SAMPLE / "label.nii.gz")
    result = evaluate_cases([case], str(tiny_checkpoint), num_clicks=3)
    model = [r for r in result.rows if r.method == "model"]
    baseline = [r for r in result.rows if r.method == "baseline"]
    assert [r.click for r in model] == [1, 2, 3] == [r.click for r in baseline]
    assert [(r.r, r.a, r.s, r.positive) for r in model] == [(r.r, r.a, r.s, r.positive) for r in baseline]
    assert all(0.0 <= r.dice <= 1.0 for r in result.rows)
    assert all(r.latency_s > 0 for r in model if r.placed)


def test_demo_writes_mask_and_plot(tmp_path, tiny_checkpoint, capsys):
    assert main(["demo", "--model", str(tiny_checkpoint), "--clicks", "2", "--output", str(tmp_path)]) == 0
    mask = sitk.ReadImage(str(tmp_path / "demo_mask.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(IMAGE).GetSize()
    assert (tmp_path / "dice_vs_clicks.png").exists()
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "baseline Dice" in printed and "click 2" in printed


def test_models_list_and_unknown_download(capsys):
    assert main(["models", "list"]) == 0
    printed = capsys.readouterr().out
    assert "sam-med3d-turbo" in printed and "default" in printed
    assert main(["models", "download", "no-such-model"]) == 2  # refused before any network access
    assert "not a downloadable model" in capsys.readouterr().err


def test_broken_extension_module_does_not_break_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_ext.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "extra_ext.py").write_text(
        "def register_cli(sub):\n    p = sub.add_parser('hello')\n    p.set_defaults(func=lambda args: 7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "EXTENSION_MODULES", ["broken_ext", "no_such_module_xyz", "extra_ext"])
    try:
        assert main(["hello"]) == 7
        assert main(["models", "list"]) == 0
        err = capsys.readouterr().err
        assert "broken_ext" in err and "boom" in err and "no_such_module_xyz" not in err
    finally:
        for name in ("broken_ext", "extra_ext"):
            sys.modules.pop(name, None)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for command in ("segment", "evaluate", "demo", "models"):
        assert command in printed
