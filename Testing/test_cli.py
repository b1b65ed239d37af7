"""The ``samvolseg`` CLI end to end with a real (tiny, random-weight) model, and prompt-file reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib.cli import SAMPLE_DIR, main
from SAMVolSegmentLib.errors import InvalidPromptError
from SAMVolSegmentLib.evaluation import deepest_point, dice, next_click
from SAMVolSegmentLib.model import ModelConfig, build_model
from SAMVolSegmentLib.prompts_io import read_prompts

TINY = ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                   prompt_embed_dim=48, image_size=64)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save({"model_state_dict": model.state_dict(), "config": TINY.to_dict()}, path)
    return path


def sample_centre_ras() -> list:
    image = sitk.ReadImage(str(SAMPLE_DIR / "image.nii.gz"))
    idx = [(s - 1) / 2 for s in image.GetSize()]
    lps = image.TransformContinuousIndexToPhysicalPoint(idx)
    return [-lps[0], -lps[1], lps[2]]


def test_segment_writes_mask_with_input_geometry(tmp_path, tiny_checkpoint, capsys):
    points = tmp_path / "points.json"
    centre = sample_centre_ras()
    points.write_text(json.dumps({"points": [{"ras": centre, "positive": True},
                                             {"ras": [centre[0] + 5, centre[1], centre[2]], "positive": False}]}))
    out = tmp_path / "mask.nrrd"
    assert main(["segment", str(SAMPLE_DIR / "image.nii.gz"), "--points", str(points), "--output", str(out),
                 "--model", str(tiny_checkpoint)]) == 0
    image, mask = sitk.ReadImage(str(SAMPLE_DIR / "image.nii.gz")), sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert "+ click" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_segment_reports_bad_prompt_file_cleanly(tmp_path, tiny_checkpoint, capsys):
    points = tmp_path / "points.csv"
    points.write_text("r,a,s,positive\n")
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(SAMPLE_DIR / "image.nii.gz"), "--points", str(points), "--output", str(out),
                 "--model", str(tiny_checkpoint)])
    assert code == 2 and not out.exists()
    assert "no points" in capsys.readouterr().err


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMVOLSEGMENT_MODEL_DIR", str(tmp_path))
    code = main(["segment", str(SAMPLE_DIR / "image.nii.gz"), "--points", str(tmp_path / "x.json"),
                 "--output", str(tmp_path / "m.nii.gz"), "--model", "sam-med3d-turbo"])
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_evaluate_writes_csv_json_png(tmp_path, tiny_checkpoint):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"image,label\n{SAMPLE_DIR / 'image.nii.gz'},{SAMPLE_DIR / 'label.nii.gz'}\n")
    out = tmp_path / "eval"
    assert main(["evaluate", str(manifest), "--model", str(tiny_checkpoint), "--clicks", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean_dice"]) == {"model", "baseline"}
    assert set(summary["mean_dice"]["model"]) == {"1", "2"}
    assert (out / "dice_vs_clicks.png").stat().st_size > 1000
    assert len((out / "clicks.csv").read_text().splitlines()) == 1 + 2 * 2


def test_demo_runs_with_a_given_model(tmp_path, tiny_checkpoint, capsys):
    assert main(["demo", "--model", str(tiny_checkpoint), "--clicks", "2", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "demo_mask.nii.gz").exists()
    assert "baseline Dice" in capsys.readouterr().out


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    assert "sam-med3d-turbo" in capsys.readouterr().out


def test_click_simulator_is_deterministic_and_signed():
    target = np.zeros((20, 20, 20), np.uint8)
    target[5:15, 5:15, 5:15] = 1
    assert deepest_point(target.astype(bool), (1, 1, 1)) in [(9, 9, 9), (10, 10, 10), (9, 9, 10), (10, 9, 9)] or \
        all(9 <= v <= 10 for v in deepest_point(target.astype(bool), (1, 1, 1)))
    prediction = np.zeros_like(target)
    prediction[5:15, 5:15, 5:10] = 1  # misses half: next click positive, inside the missed half
    (k, j, i), positive = next_click(target, prediction, (1, 1, 1))
    assert positive and i >= 10 and target[k, j, i]
    prediction = target.copy()
    prediction[0:3, 0:3, 0:3] = 1  # false positive blob: negative click in it
    (k, j, i), positive = next_click(target, prediction, (1, 1, 1))
    assert not positive and max(k, j, i) < 3
    assert next_click(target, target, (1, 1, 1)) is None
    assert dice(target, target) == 1.0 and dice(target, np.zeros_like(target)) == 0.0


def test_markups_lps_points_become_ras(tmp_path):
    markups = {
        "markups": [
            {"type": "Fiducial", "name": "positive", "coordinateSystem": "LPS",
             "controlPoints": [{"position": [10.0, 20.0, 30.0]}, {"position": [1.0, 2.0, 3.0], "description": "negative"}]},
            {"type": "Fiducial", "name": "negative", "coordinateSystem": "RAS", "controlPoints": [{"position": [5.0, 6.0, 7.0]}]},
            {"type": "ROI", "coordinateSystem": "RAS", "center": [0.0, 0.0, 0.0], "size": [10.0, 20.0, 30.0]},
        ]
    }
    path = tmp_path / "prompts.mrk.json"
    path.write_text(json.dumps(markups))
    prompts = read_prompts(path)
    np.testing.assert_allclose(prompts.points_ras, [[-10, -20, 30], [-1, -2, 3], [5, 6, 7]])
    assert prompts.positive.tolist() == [True, False, False]
    np.testing.assert_allclose(prompts.box_ras[0], [-5, -10, -15])


def test_csv_and_bad_values(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("r,a,s,positive\n1,2,3,1\n4,5,6,0\n")
    prompts = read_prompts(path)
    assert prompts.positive.tolist() == [True, False]
    path.write_text('{"points": [{"ras": [1, "x", 3]}]}')
    path = path.rename(tmp_path / "p.json")
    with pytest.raises(InvalidPromptError):
        read_prompts(path)
