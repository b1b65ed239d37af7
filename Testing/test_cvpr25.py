"""The CVPR 2025 challenge protocol: box construction, step order, box semantics, metrics, writers, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib.cli.main import main
from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.engine.metrics import dice
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import ModelConfig, build_model
from SAMVolSegmentLib.tools.cvpr25 import (
    ChallengeBox,
    Cvpr25Result,
    _case_results,
    _run,
    box_shift,
    challenge_box,
    evaluate_cvpr25,
    format_table,
    run_case,
    write_cvpr25_results,
)
from SAMVolSegmentLib.tools.evaluation import Case, _BaselineMethod, _ModelMethod, discover_cases

SPACING_IJK = (0.9, 0.8, 2.5)


def write_case(folder, target, spacing_ijk=SPACING_IJK, direction=None):
    """A bright target in noise written as <folder>/image.nii.gz + label.nii.gz; the Case for it."""
    rng = np.random.default_rng(3)
    image = rng.normal(0, 10, target.shape).astype(np.float32) + 200 * target
    folder.mkdir(parents=True)
    for array, name in ((image, "image.nii.gz"), (target.astype(np.uint8), "label.nii.gz")):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing_ijk)
        itk.SetOrigin((-10.0, 25.0, 4.0))
        if direction is not None:
            itk.SetDirection(direction)
        sitk.WriteImage(itk, str(folder / name))
    return Case(folder.name, folder / "image.nii.gz", folder / "label.nii.gz")


def ellipsoid(shape=(20, 44, 40), centre=(10, 22, 20), radii_mm=(14, 12, 10), spacing_ijk=SPACING_IJK):
    k, j, i = np.indices(shape)
    return (((k - centre[0]) * spacing_ijk[2] / radii_mm[0]) ** 2 + ((j - centre[1]) * spacing_ijk[1] / radii_mm[1]) ** 2
            + ((i - centre[2]) * spacing_ijk[0] / radii_mm[2]) ** 2) <= 1


def cone(shape=(20, 44, 40)):
    """A target whose middle slice is narrower than its base: the challenge's box leaves part of it out."""
    k, j, i = np.indices(shape)
    radius = 2 + 0.9 * (16 - k)  # widest at k = 3, narrowing upwards
    return (k >= 3) & (k <= 16) & ((j - 22) ** 2 + (i - 20) ** 2 <= radius**2)


# ------------------------------------------------------------------ box
def test_challenge_box_follows_get_boxes():
    target = np.zeros((9, 300, 520), bool)
    for k in (1, 2, 3, 6):  # occupied slices; their sorted list's middle entry [4 // 2] is slice 3
        target[k, 100:121, 3:201] = True
    target[1, 50:250, 3:500] = True  # wider elsewhere: only slice 3's extent counts in-plane
    box = challenge_box(target, shift=0)
    assert box == ChallengeBox(k_min=1, k_max=6, k_mid=3, j_min=100, j_max=120, i_min=3, i_max=200)
    # Shift 5 of 256: int(5 * 300 / 256) = 5 rows and int(5 * 520 / 256) = 10 columns, clipped at 0.
    box = challenge_box(target, shift=5)
    assert (box.j_min, box.j_max, box.i_min, box.i_max) == (95, 125, 0, 210)
    assert (box.k_min, box.k_max) == (1, 6)  # z is never widened
    assert box.as_challenge_dict() == {"z_min": 1, "z_max": 6, "z_mid": 3, "z_mid_x_min": 0, "z_mid_y_min": 95,
                                       "z_mid_x_max": 210, "z_mid_y_max": 125}
    with pytest.raises(ValueError, match="non-empty"):
        challenge_box(np.zeros((3, 3, 3), bool))


def test_box_shift_is_reproducible_and_spans_0_to_5():
    shifts = [box_shift(f"case{n}|1") for n in range(200)]
    assert shifts == [box_shift(f"case{n}|1") for n in range(200)]
    assert set(shifts) == set(range(6))
    assert [box_shift(f"case{n}|1", seed=7) for n in range(200)] != shifts


@pytest.mark.parametrize("direction", [None, (0, 1, 0, -1, 0, 0, 0, 0, -1), (-1, 0, 0, 0, 0, 1, 0, 1, 0)])
def test_box_in_ras_clips_exactly_the_voxel_box(direction):
    image = sitk.Image(40, 44, 20, sitk.sitkUInt8)
    image.SetSpacing(SPACING_IJK)
    image.SetOrigin((3.0, -7.0, 11.0))
    if direction is not None:
        image.SetDirection(direction)
    geometry = VolumeGeometry.from_sitk(image)
    box = ChallengeBox(k_min=0, k_max=7, k_mid=4, j_min=10, j_max=30, i_min=5, i_max=39)
    full = tuple((0, n) for n in geometry.shape_kji)
    expected = np.zeros(geometry.shape_kji, bool)
    expected[box.slices()] = True
    assert np.array_equal(geometry.box_mask_kji(full, *box.corners_ras(geometry)), expected)


# ------------------------------------------------------------------ protocol mechanics with a scripted method
class _Scripted:
    """Box step: the target minus a slab; releasing the box: misses a bigger slab; click 1 on: exact."""

    name = "model"

    def __init__(self, target):
        self.target, self.clicks, self.released = target.astype(np.uint8), [], False

    def box(self, min_ras, max_ras):
        mask = self.target.copy()
        mask[:, :, :17] = 0  # the box step misses i < 17 (the largest error)
        return mask, 0.5, 0.4

    def release_box(self):
        self.released = True
        mask = self.target.copy()
        mask[:, :, 23:] = 0  # a different, larger miss: the click must not come from this one
        return mask, 0.1

    def step(self, index_kji, point_ras, positive):
        self.clicks.append((index_kji, positive))
        return self.target.copy(), 0.2, None


def test_protocol_steps_clicks_from_scored_predictions_and_carry_over():
    target = ellipsoid()
    geometry = VolumeGeometry.from_matrix(np.diag([0.9, 0.8, 2.5, 1.0]), target.shape)
    box = challenge_box(target)
    method = _Scripted(target)
    rows = _run("c", "1", target, geometry, (2.5, 0.8, 0.9), box, method, [], num_clicks=5, box_mode="initial")
    assert [r.step for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r.prompt for r in rows] == ["box", "+", "none", "none", "none", "none"]
    assert method.released and len(method.clicks) == 1
    assert method.clicks[0][0][2] < 17  # from the scored box prediction's error, not the released one's
    assert rows[0].r == pytest.approx(float(np.mean(box.corners_ras(geometry), axis=0)[0]))  # the box centre
    assert rows[1].latency_s == pytest.approx(0.3)  # lifting the clip counts in click 1
    assert [r.dsc for r in rows[1:]] == [1.0] * 5 and [r.nsd for r in rows[1:]] == [1.0] * 5
    (result,) = _case_results(rows, box, target, 5, centre_in_target=True)
    assert result.dsc_auc == 4.0 and result.nsd_auc == 4.0 and result.dsc_final == 1.0
    assert result.dsc[0] == pytest.approx(dice(method.box(None, None)[0], target))
    assert result.box_coverage == 1.0 and result.total_latency_s == pytest.approx(0.8)


class _Poor(_Scripted):
    def box(self, min_ras, max_ras):
        mask = np.zeros_like(self.target)
        mask[10, 22, 15:20] = 1  # a sliver: Dice far below 0.2
        return mask, 0.1, None

    def step(self, index_kji, point_ras, positive):
        self.clicks.append((index_kji, positive))
        mask = self.box(None, None)[0]
        for (k, j, i), _ in self.clicks:
            mask[k, j - 2:j + 3, i - 2:i + 3] = 1
        return mask, 0.1, None


def test_nsd_is_zero_at_dice_up_to_0_2_and_clicks_keep_coming():
    target = ellipsoid()
    geometry = VolumeGeometry.from_matrix(np.diag([0.9, 0.8, 2.5, 1.0]), target.shape)
    method = _Poor(target)
    rows = _run("c", "1", target, geometry, (2.5, 0.8, 0.9), challenge_box(target), method, [], 5, "clip")
    assert not method.released and len(method.clicks) == 5 and all(r.prompt == "+" for r in rows[1:])
    assert all(r.dsc <= 0.2 and r.nsd == 0.0 for r in rows)


# ------------------------------------------------------------------ real baseline and session
def test_baseline_only_run_case_on_a_clear_target(tmp_path):
    case = write_case(tmp_path / "blob", ellipsoid())
    steps, (result,) = run_case(None, case)
    again, _ = run_case(None, case)
    assert [(r.step, r.method, r.dsc, r.nsd, r.r) for r in steps] == [(r.step, r.method, r.dsc, r.nsd, r.r) for r in again]
    assert [r.step for r in steps] == list(range(6)) and {r.method for r in steps} == {"baseline"}
    assert result.method == "baseline" and result.box_coverage > 0.95 and result.box_centre_in_target
    assert result.dsc[0] > 0.7 and result.dsc_final > 0.7  # a bright blob: region growing gets it from the box
    assert result.dsc_final == result.dsc[-1] and result.nsd_final == result.nsd[-1]


def test_kept_clip_caps_dice_where_the_box_misses_target(tmp_path):
    case = write_case(tmp_path / "cone", cone())
    _, (clipped,) = run_case(None, case, box_mode="clip")
    _, (released,) = run_case(None, case, box_mode="initial")
    coverage = clipped.box_coverage
    assert 0.3 < coverage < 0.9  # the middle slice is narrower than the base
    ceiling = 2 * coverage / (1 + coverage)  # Dice of exactly the target's part inside the box
    assert all(value <= ceiling + 1e-9 for value in clipped.dsc)
    assert released.dsc[0] == clipped.dsc[0]  # the box step is the same; only later steps may leave the box


def test_baseline_box_seeds_at_the_centre_and_clips(tmp_path):
    target = cone()
    case = write_case(tmp_path / "cone", target)
    image = sitk.ReadImage(str(case.image_path))
    geometry = VolumeGeometry.from_sitk(image)
    box = challenge_box(target)
    method = _BaselineMethod(image)
    mask, _, _ = method.box(*box.corners_ras(geometry))
    inside = np.zeros(target.shape, bool)
    inside[box.slices()] = True
    assert mask.any() and not (mask.astype(bool) & ~inside).any()
    ((seed_kji, positive),) = method.clicks  # one positive seed, at the voxel nearest the box's centre
    bounds = ((box.k_min, box.k_max), (box.j_min, box.j_max), (box.i_min, box.i_max))
    assert positive and all(abs(c - (lo + hi) / 2) <= 0.5 for c, (lo, hi) in zip(seed_kji, bounds))
    released, _ = method.release_box()
    assert (released.astype(bool) & ~inside).any()  # the unclipped growth leaves the middle slice's box


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                                    encoder_global_attn_indexes=(1,), window_size=14, prompt_embed_dim=48,
                                    image_size=64, patch_size=16)).eval()
    with torch.no_grad():  # a random model predicts some foreground only with a push upwards
        model.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(0.3)
    return model


def test_session_box_step_is_clipped_and_shared_clicks_match(tmp_path, tiny_model):
    target = cone()
    case = write_case(tmp_path / "cone", target, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    image = sitk.ReadImage(str(case.image_path))
    box = challenge_box(target)
    with InteractiveSession(tiny_model) as session:
        method = _ModelMethod(session, image)
        mask, latency, _ = method.box(*box.corners_ras(session.geometry))
        outside = np.ones(target.shape, bool)
        outside[box.slices()] = False
        assert latency > 0 and not (mask.astype(bool) & outside).any()
    result = evaluate_cvpr25([case], tiny_model, baseline_clicks="shared", model_name="tiny")
    model = [r for r in result.steps if r.method == "model"]
    baseline = [r for r in result.steps if r.method == "baseline"]
    assert [r.step for r in model] == list(range(6)) == [r.step for r in baseline]
    assert [(r.prompt, r.r, r.a, r.s) for r in model] == [(r.prompt, r.r, r.a, r.s) for r in baseline]
    assert all(0.0 <= r.dsc <= 1.0 and 0.0 <= r.nsd <= 1.0 for r in result.steps)
    assert all(r.nsd == 0.0 for r in result.steps if r.dsc <= 0.2)
    assert result.methods == ["model", "baseline"] and result.model == "tiny"


# ------------------------------------------------------------------ output and CLI
def test_writers_use_the_challenge_column_names(tmp_path):
    cases = [write_case(tmp_path / "data" / "a", ellipsoid()), write_case(tmp_path / "data" / "b", cone())]
    result = evaluate_cvpr25(cases, None)
    assert isinstance(result, Cvpr25Result) and result.baseline_clicks == "own"
    paths = write_cvpr25_results(result, tmp_path / "out")
    with open(paths["cases_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b"]
    for key in ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final", "DSC_1", "DSC_6", "NSD_6", "box_z_mid"):
        assert key in rows[0]
    assert float(rows[0]["DSC_Final"]) == pytest.approx(float(rows[0]["DSC_6"]))
    with open(paths["steps_csv"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * 6
    summary = json.loads(paths["json"].read_text())
    means = summary["mean"]["baseline"]
    assert means["targets"] == 2 and len(means["DSC"]) == 6
    assert means["DSC_AUC"] == pytest.approx(np.mean([float(r["DSC_AUC"]) for r in rows]))
    assert summary["per_image_mean"]["baseline"]["images"] == 2 and summary["nsd_tolerance_mm"] == 2.0
    table = format_table(result)
    assert "baseline" in table and "NSD" in table and "no box input" in table


def test_cli_evaluate_protocol_cvpr25_and_both(tmp_path, capsys):
    write_case(tmp_path / "data" / "blob", ellipsoid())
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "data"), "--model", "none", "--protocol", "cvpr25",
                 "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "CVPR25 protocol" in printed and "AUC" in printed
    assert (out / "cvpr25_cases.csv").exists() and not (out / "clicks.csv").exists()
    assert json.loads((out / "cvpr25_summary.json").read_text())["box_mode"] == "clip"
    both = tmp_path / "both"
    assert main(["evaluate", str(tmp_path / "data"), "--model", "none", "--protocol", "both", "--clicks", "2",
                 "--box-mode", "initial", "--out", str(both), "--no-plot"]) == 0
    assert (both / "clicks.csv").exists() and (both / "cvpr25_steps.csv").exists()
    assert json.loads((both / "cvpr25_summary.json").read_text())["box_mode"] == "initial"


def test_spinal_cord_development_case(shared_data_dir):
    # The thin, long cord is inside the challenge's box; region growing from its centre gets it nearly whole.
    (case,) = discover_cases(shared_data_dir, ["mr_sct_t2_spinalcord"])
    _, (result,) = run_case(None, case)
    assert result.box_coverage > 0.99 and result.box_centre_in_target
    assert result.dsc_final > 0.9 and result.nsd_final > 0.9 and result.dsc_auc > 3.0
