"""Click simulator, metrics, case discovery and result writers (no model needed: the baseline drives)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from SAMVolSegmentLib.engine.clicks import CVPR25_CLICKS, ClickRule, deepest_point, first_click, next_click
from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.errors import InvalidImageError
from SAMVolSegmentLib.tools.evaluation import (
    Case,
    EvaluationResult,
    _run_protocol,
    dice,
    discover_cases,
    evaluate_cases,
    expand_label_values,
    hd95,
    load_target,
    simulate_case,
    write_results,
)


def blob_case(tmp_path, name="blob", spacing=(0.9, 0.8, 2.5), direction=None, label_value=1):
    """A bright ellipsoid (label ``label_value``) plus a second structure (label 2) in noise, written to disk."""
    shape_kji = (24, 48, 44)
    k, j, i = np.indices(shape_kji)
    blob = ((k - 12) * spacing[2]) ** 2 / 15**2 + ((j - 22) * spacing[1]) ** 2 / 12**2 + ((i - 20) * spacing[0]) ** 2 / 10**2 <= 1
    other = (k > 2) & (k < 6) & (j > 38) & (i > 35)
    rng = np.random.default_rng(1)
    image = rng.normal(0, 10, shape_kji).astype(np.float32) + 200 * blob + 100 * other
    label = (blob * label_value + other * 2).astype(np.uint8)
    folder = tmp_path / name
    folder.mkdir(parents=True)
    for array, file in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing)
        itk.SetOrigin((-12.0, 30.0, 7.0))
        if direction is not None:
            itk.SetDirection(direction)
        sitk.WriteImage(itk, str(folder / file))
    return Case(name, folder / "image.nii.gz", folder / "label.nii.gz", label_value), blob


# ------------------------------------------------------------------ metrics
def test_dice_edge_cases():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    b[1:3, 1:3, 1:3] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0
    assert dice(b, b) == 1.0
    c = b.copy()
    c[1, 1, 1] = False
    assert dice(b, c) == pytest.approx(2 * 7 / 15)


def _surface_points_mm(mask, spacing):
    surface = mask & ~ndimage.binary_erosion(mask)
    return np.argwhere(surface) * np.asarray(spacing)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.tuples(*[st.sampled_from([0.5, 1.0, 3.0])] * 3))
def test_hd95_matches_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (12, 14, 10)
    a = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=1)
    b = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=1)
    if not a.any() or not b.any():
        assert hd95(a, b, spacing) is None
        return
    pa, pb = _surface_points_mm(a, spacing), _surface_points_mm(b, spacing)
    d = cdist(pa, pb)
    expected = np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)
    assert hd95(a, b, spacing) == pytest.approx(expected, abs=1e-9)


def test_hd95_empty_and_identical():
    a = np.zeros((8, 8, 8), bool)
    a[2:6, 2:6, 2:6] = True
    assert hd95(a, np.zeros_like(a), (1, 1, 1)) is None
    assert hd95(a, a, (1, 1, 1)) == 0.0


# ------------------------------------------------------------------ click simulation
def test_deepest_point_of_a_box_is_its_centre():
    region = np.zeros((20, 20, 20), bool)
    region[4:11, 2:17, 5:14] = True  # odd extents: one exact centre
    assert deepest_point(region, (1.0, 1.0, 1.0)) == (7, 9, 9)


def test_deepest_point_uses_spacing():
    region = np.zeros((30, 30, 60), bool)
    region[2:7, 2:23, 2:23] = True  # thin in k: 5 slices
    region[8:29, 24:29, 30:35] = True  # a long thin rod, 5 x 5 voxels in (j, i)
    # Isotropic voxels: the rod (half-width 2.5 voxels) and the slab (2.5 slices) tie, the slab comes first.
    # With 5 mm slices the slab is 25 mm thick and 21 mm wide: its centre is far deeper than the rod's 2.5 mm.
    assert deepest_point(region, (5.0, 1.0, 1.0)) == (4, 12, 12)
    k, j, i = deepest_point(region, (0.2, 1.0, 1.0))  # very thin slices: the slab is 1 mm thick, the rod wins
    assert region[k, j, i] and j >= 24


def test_next_click_signs_and_largest_error():
    target = np.zeros((20, 20, 20), bool)
    target[5:15, 5:15, 5:15] = True
    prediction = target.copy()
    prediction[5:15, 5:15, 10:15] = False  # 500 voxels missed
    prediction[0:3, 0:3, 0:3] = True  # 27 false-positive voxels
    (k, j, i), positive = next_click(target, prediction, (1, 1, 1))
    assert positive and target[k, j, i] and not prediction[k, j, i] and i >= 10
    prediction = target.copy()
    prediction[0:4, 0:4, 0:4] = True
    (k, j, i), positive = next_click(target, prediction, (1, 1, 1))
    assert not positive and max(k, j, i) < 4
    assert next_click(target, target, (1, 1, 1)) is None


def test_first_click_is_inside_and_positive():
    target = np.zeros((10, 30, 30), bool)
    target[3:8, 4:20, 6:25] = True
    (k, j, i), positive = first_click(target, (3.0, 0.7, 0.7))
    assert positive and target[k, j, i]


def test_click_ras_maps_back_to_its_voxel_in_an_oblique_image():
    angle = np.deg2rad(25)
    direction = (np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1)
    image = sitk.Image(30, 20, 10, sitk.sitkFloat32)
    image.SetSpacing((0.7, 1.1, 3.0))
    image.SetOrigin((5.0, -40.0, 12.0))
    image.SetDirection(direction)
    geometry = VolumeGeometry.from_sitk(image)
    for index_kji in [(0, 0, 0), (9, 19, 29), (4, 7, 13)]:
        ras = geometry.index_to_ras(index_kji)
        lps = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in index_kji[::-1]))  # independent path
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


# ------------------------------------------------------------------ cases
def test_discover_cases_folder_and_manifest(tmp_path):
    case_a, _ = blob_case(tmp_path / "data", "a")
    blob_case(tmp_path / "data", "b")
    (tmp_path / "data" / "not_a_case").mkdir()
    cases = discover_cases(tmp_path / "data")
    assert [c.name for c in cases] == ["a", "b"] and all(c.label_value is None for c in cases)
    assert [c.name for c in discover_cases(tmp_path / "data", ["b"], label_value=2)] == ["b"]
    assert discover_cases(tmp_path / "data", ["b"], label_value=2)[0].label_value == 2
    with pytest.raises(FileNotFoundError, match="zzz"):
        discover_cases(tmp_path / "data", ["zzz"])
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label,label_value\n# a comment\ndata/a/image.nii.gz,data/a/label.nii.gz,2\n"
                        "data/b/image.nii.gz,data/b/label.nii.gz\n")
    cases = discover_cases(manifest, label_value=1)
    assert [c.label_value for c in cases] == [2, 1]
    assert cases[0].image_path == case_a.image_path.resolve()
    with pytest.raises(FileNotFoundError):
        discover_cases(tmp_path / "missing")


def test_load_target_rules_and_errors(tmp_path):
    case, blob = blob_case(tmp_path, label_value=1)
    _, target = load_target(Case(case.name, case.image_path, case.label_path))  # label > 0: both structures
    assert target.sum() > blob.sum()
    _, target = load_target(case)
    assert np.array_equal(target.astype(bool), blob)
    with pytest.raises(InvalidImageError, match="values present: \\[1, 2\\]"):
        load_target(case, label_value=7)
    label = sitk.ReadImage(str(case.label_path))
    label.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(label, str(case.label_path))
    with pytest.raises(InvalidImageError, match="origin"):
        load_target(case)


# ------------------------------------------------------------------ protocol with the baseline alone
def test_baseline_only_protocol_is_deterministic_and_good_on_a_clear_blob(tmp_path):
    case, _ = blob_case(tmp_path, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    rows = simulate_case(None, case, num_clicks=3)
    again = simulate_case(None, case, num_clicks=3)
    assert [(r.click, r.method, r.dice, r.r) for r in rows] == [(r.click, r.method, r.dice, r.r) for r in again]
    assert [r.click for r in rows] == [1, 2, 3] and {r.method for r in rows} == {"baseline"}
    assert rows[0].positive and rows[0].dice > 0.7  # partial-volume edges of a small blob cost the rest
    # The first click, given in RAS, lies inside the target when mapped back with SimpleITK.
    image = sitk.ReadImage(str(case.image_path))
    index = image.TransformPhysicalPointToIndex((-rows[0].r, -rows[0].a, rows[0].s))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_path)))[index[::-1]] == 1


def test_evaluate_cases_baseline_only_and_writers(tmp_path):
    case, _ = blob_case(tmp_path / "data", "a")
    fractions = []
    result = evaluate_cases([case], None, num_clicks=2, progress=lambda f, m: fractions.append(f))
    assert result.model == "none" and result.baseline_clicks == "own"
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    paths = write_results(result, tmp_path / "out")
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["method"] == "baseline" and rows[0]["label"] == "1"
    summary = json.loads(paths["json"].read_text())
    assert set(summary["mean_dice"]["baseline"]) == {"1", "2"}
    assert summary["per_case_dice"]["a"]["baseline"]["1"] == pytest.approx(float(rows[0]["dice"]))
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_targets_of_one_image_keep_their_own_results(tmp_path):
    """A manifest with label values 1, 3 and 4 of one CT: three targets with three entries everywhere."""
    case, _ = blob_case(tmp_path / "data", "ct", label_value=1)
    label = sitk.ReadImage(str(case.label_path))
    array = sitk.GetArrayFromImage(label)
    array[array == 2] = 3
    array[16:22, 4:12, 4:12] = 4
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(label)
    sitk.WriteImage(relabelled, str(case.label_path))
    manifest = tmp_path / "targets.csv"
    manifest.write_text("".join(f"data/ct/image.nii.gz,data/ct/label.nii.gz,{v}\n" for v in (1, 3, 4)))
    cases = discover_cases(manifest)
    names = ["ct/image.nii.gz:1", "ct/image.nii.gz:3", "ct/image.nii.gz:4"]
    assert [c.name for c in cases] == names and [c.label_value for c in cases] == [1, 3, 4]
    paths = write_results(evaluate_cases(cases, None, num_clicks=2), tmp_path / "out")
    summary = json.loads(paths["json"].read_text())
    assert summary["cases"] == names and sorted(summary["per_case_dice"]) == names
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows if r["click"] == "1"] == [(n, n[-1]) for n in names]
    # Each entry holds its own target's scores: the three structures differ in size, so do their Dice curves.
    assert len({tuple(curve["baseline"].values()) for curve in summary["per_case_dice"].values()}) == 3


def test_manifest_names_a_target_once(tmp_path):
    blob_case(tmp_path / "data", "ct")
    row = "data/ct/image.nii.gz,data/ct/label.nii.gz"
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"{row},2\n{row},2\n")
    with pytest.raises(FileNotFoundError, match="cases.csv:2: the same target as line 1"):
        discover_cases(manifest)
    # One image with two label files (two readers): both kept, told apart by the label file's name.
    (tmp_path / "data" / "ct" / "label.nii.gz").rename(tmp_path / "data" / "ct" / "reader1.nii.gz")
    blob_case(tmp_path / "again", "ct")
    (tmp_path / "again" / "ct" / "label.nii.gz").rename(tmp_path / "data" / "ct" / "reader2.nii.gz")
    manifest.write_text("data/ct/image.nii.gz,data/ct/reader1.nii.gz\ndata/ct/image.nii.gz,data/ct/reader2.nii.gz,1\n")
    assert [c.name for c in discover_cases(manifest)] == ["ct/image.nii.gz[reader1.nii.gz]",
                                                          "ct/image.nii.gz[reader2.nii.gz]:1"]


class _ExactAfterTwoClicks:
    """A method that is right from its second click on (exercises the protocol's stopping rule)."""

    name = "model"

    def __init__(self, target):
        self.target, self.calls = target, 0

    def step(self, index_kji, point_ras, positive):
        self.calls += 1
        mask = self.target.copy() if self.calls >= 2 else np.zeros_like(self.target)
        if self.calls == 1:
            mask[index_kji] = 1
        return mask, 0.01, None


def test_a_perfect_prediction_stops_clicking_and_carries_scores():
    target = np.zeros((10, 12, 14), np.uint8)
    target[2:8, 3:9, 4:10] = 1
    geometry = VolumeGeometry.from_matrix(np.diag([0.5, 0.5, 2.0, 1.0]), target.shape)
    method = _ExactAfterTwoClicks(target)
    rows = _run_protocol("c", "all", target, geometry, (2.0, 0.5, 0.5), method, [], num_clicks=4)
    assert method.calls == 2
    assert [r.placed for r in rows] == [True, True, False, False]
    assert [r.dice for r in rows[1:]] == [1.0, 1.0, 1.0] and rows[3].hd95_mm == 0.0
    result = EvaluationResult("m", 4, rows=rows)
    assert result.summary()["methods"]["model"]["latency_later_clicks_s"]["n"] == 1  # carried rows excluded


def test_simulate_case_rejects_bad_arguments(tmp_path):
    case, _ = blob_case(tmp_path)
    with pytest.raises(ValueError):
        simulate_case(None, case, num_clicks=0)
    with pytest.raises(ValueError):
        simulate_case(None, case, num_clicks=2, with_baseline=False)
    with pytest.raises(ValueError):
        simulate_case(None, case, num_clicks=2, baseline_clicks="mine")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.tuples(*[st.sampled_from([0.4, 1.0, 5.0])] * 3))
def test_next_click_lands_in_the_largest_error_with_the_right_sign(seed, spacing):
    rng = np.random.default_rng(seed)
    target = ndimage.binary_dilation(rng.random((10, 12, 14)) > 0.95, iterations=2)
    prediction = ndimage.binary_dilation(rng.random((10, 12, 14)) > 0.95, iterations=1)
    click = next_click(target, prediction, spacing)
    if np.array_equal(target, prediction):
        assert click is None
        return
    (k, j, i), positive = click
    error = (target & ~prediction) if positive else (prediction & ~target)
    assert error[k, j, i]
    sizes = [np.bincount(ndimage.label(e, structure=np.ones((3, 3, 3)))[0].ravel())[1:].max(initial=0)
             for e in (target & ~prediction, prediction & ~target)]
    components, _ = ndimage.label(error, structure=np.ones((3, 3, 3)))
    assert (components == components[k, j, i]).sum() == max(sizes)


def test_expand_label_values(tmp_path):
    case, blob = blob_case(tmp_path, label_value=3)
    plain = Case(case.name, case.image_path, case.label_path)
    expanded = expand_label_values([plain, case])
    assert [(c.name, c.label_value) for c in expanded] == [("blob:2", 2), ("blob:3", 3), ("blob", 3)]
    assert [c.label_value for c in expand_label_values([plain], min_voxels=int(blob.sum()))] == [3]


# ------------------------------------------------------------------ the CVPR25 click rule (same function)
def test_cvpr25_rule_merges_misses_and_false_positives_into_one_component():
    target = np.zeros((12, 12, 20), bool)
    target[3:9, 3:9, 2:10] = True
    prediction = np.roll(target, 5, axis=2)  # a shifted prediction: a 6x6x5 miss touching a 6x6x5 false positive
    prediction[0, 0, 19] = True  # plus a stray false-positive voxel
    # Our rule: the miss and the false positive are separate 180-voxel components; the miss wins the tie.
    (_, _, i), positive = next_click(target, prediction, (1, 1, 1))
    assert positive and i < 7
    # The challenge's rule: target != prediction is one component (they touch across i = 7 / 8).
    (k, j, i), positive = next_click(target, prediction, (1, 1, 1), CVPR25_CLICKS)
    assert positive == bool(target[k, j, i]) and (target != prediction)[k, j, i]
    assert 2 <= i <= 14 and 3 <= k <= 8 and 3 <= j <= 8


def test_cvpr25_rule_measures_depth_in_voxels_and_breaks_ties_with_seed_42():
    region = np.zeros((30, 30, 60), bool)
    region[2:9, 2:23, 2:23] = True  # 7 slices: 3 voxels deep at its centre
    region[10:29, 24:27, 30:33] = True  # a 3 x 3 rod
    # In mm with 5 mm slices the slab is far deeper than anything else; our rule takes its centre.
    assert deepest_point(region, (5.0, 1.0, 1.0)) == (5, 12, 12)
    # In voxels the slab's centre slice is 4 voxels deep wherever it is 4 voxels from the slab's sides: a
    # plateau, and the challenge draws from it exactly as CVPR25_iter_eval.py's sample_coord does.
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    plateau = np.argwhere(depth == depth.max())
    np.random.seed(42)
    expected = tuple(int(v) for v in plateau[np.random.choice(len(plateau))])
    assert len(plateau) > 1 and deepest_point(region, (5.0, 1.0, 1.0), CVPR25_CLICKS) == expected


def test_cvpr25_rule_pools_large_crops_like_the_challenge():
    region = np.zeros((40, 40, 40), bool)
    region[5:31, 8:36, 4:33] = True
    pooled = ClickRule("pooled", split_signs=False, depth_in_mm=False, tie_break="seeded",
                       downsample_above_voxels=1000)
    k, j, i = deepest_point(region, (1.0, 1.0, 1.0), pooled)
    # Pooled depths are in 2-voxel units and blocky, so the click is near, not at, the box's centre.
    assert region[k, j, i] and abs(k - 17.5) <= 3 and abs(j - 21.5) <= 3 and abs(i - 18) <= 3
    full = deepest_point(region, (1.0, 1.0, 1.0), CVPR25_CLICKS)
    assert region[full] and abs(full[0] - 17.5) <= 1.5


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.tuples(*[st.sampled_from([0.4, 1.0, 5.0])] * 3))
def test_cvpr25_click_is_deepest_in_voxels_in_the_largest_error(seed, spacing):
    rng = np.random.default_rng(seed)
    target = ndimage.binary_dilation(rng.random((8, 9, 10)) > 0.95, iterations=2)
    prediction = ndimage.binary_dilation(rng.random((8, 9, 10)) > 0.95, iterations=1)
    click = next_click(target, prediction, spacing, CVPR25_CLICKS)
    error = target != prediction
    if not error.any():
        assert click is None
        return
    index, positive = click
    assert error[index] and positive == bool(target[index])
    components, _ = ndimage.label(error, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    component = components == components[index]
    assert component.sum() == sizes.max()
    # Brute force: distance in voxels from each component voxel to the nearest voxel outside the component,
    # the volume's outside included (a one-voxel frame around the array).
    frame = np.pad(~component, 1, constant_values=True)
    outside = np.argwhere(frame) - 1
    inside = np.argwhere(component)
    depth = cdist(inside, outside).min(axis=1)
    assert cdist([index], outside).min() == pytest.approx(depth.max())


# ------------------------------------------------------------------ stroke protocols (issue 24)
@pytest.mark.parametrize("protocol, kinds", [("lasso", ["lasso", "click", "click"]),
                                             ("scribbles", ["scribble", "scribble", "scribble"])])
def test_stroke_protocols_baseline_only_deterministic_and_written(tmp_path, protocol, kinds):
    case, blob = blob_case(tmp_path)
    rows = simulate_case(None, case, num_clicks=3, protocol=protocol)
    again = simulate_case(None, case, num_clicks=3, protocol=protocol)
    assert [(r.prompt, r.positive, r.r, r.dice) for r in rows] == [(r.prompt, r.positive, r.r, r.dice) for r in again]
    placed = [r.prompt for r in rows if r.placed]
    assert placed == kinds[:len(placed)] and rows[0].positive
    assert rows[0].dice > 0.5  # a lasso or scribble in a bright blob: region growing finds it
    result = evaluate_cases([case], None, num_clicks=3, protocol=protocol)
    paths = write_results(result, tmp_path / "out")
    assert {p.name for p in paths.values()} == {f"{protocol}.csv", f"{protocol}_summary.json",
                                                f"dice_vs_prompts_{protocol}.png"}
    summary = json.loads(paths["json"].read_text())
    assert summary["protocol"] == protocol and set(summary["mean_dice"]["baseline"]) == {"1", "2", "3"}
    assert kinds[0] in summary["methods"]["baseline"]["latency_by_prompt_s"]
    with open(paths["csv"], newline="") as f:
        assert [r["prompt"] for r in csv.DictReader(f)][0] == kinds[0]


def test_baseline_keeps_a_strokes_drawn_voxels(tmp_path):
    from SAMVolSegmentLib.tools.evaluation import Prompt, _BaselineMethod, prepared_target
    from SAMVolSegmentLib.tools.stroke_simulation import simulate_lasso, simulate_scribble

    case, blob = blob_case(tmp_path)
    image, target, geometry, _, _ = prepared_target(case)
    method = _BaselineMethod(image)
    lasso = simulate_lasso(target, geometry)
    mask, _, _ = method.stroke(Prompt("lasso", True, lasso.anchor_kji, lasso.points_ras))
    k = lasso.anchor_kji[0]
    assert mask[k][target[k] > 0].all()  # the filled lasso is foreground whatever region growing found
    scribble = simulate_scribble(target, geometry)  # negative, through the target: its voxels become background
    mask, _, _ = method.stroke(Prompt("scribble", False, scribble.anchor_kji, scribble.points_ras))
    index_kji = np.rint(geometry.ras_to_ijk(scribble.points_ras)[:, ::-1]).astype(int)
    assert not mask[tuple(index_kji.T)].any()
    mask, _, _ = method.step((0, 0, 0), geometry.index_to_ras((0, 0, 0)), False)  # ... and stay so after a click
    assert not mask[tuple(index_kji.T)].any()


def test_unknown_protocol_is_refused(tmp_path):
    case, _ = blob_case(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        simulate_case(None, case, num_clicks=2, protocol="boxes")


def test_a_sloppy_lasso_is_reproducible_and_recorded(tmp_path):
    case, _ = blob_case(tmp_path)
    options = {"margin_voxels": 1, "jitter_mm": 1.0}
    rows = simulate_case(None, case, num_clicks=1, protocol="lasso", lasso_options=options)
    again = simulate_case(None, case, num_clicks=1, protocol="lasso", lasso_options=options)
    exact = simulate_case(None, case, num_clicks=1, protocol="lasso")
    assert rows[0].dice == again[0].dice != exact[0].dice
    result = evaluate_cases([case], None, num_clicks=1, protocol="lasso", lasso_options=options)
    assert result.summary()["lasso_options"] == options
