"""Training samples: real ROIs are the inference ROIs, licences are respected, sampling is balanced by source,
augmentation and re-synthesis keep image and target together."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from SAMVolSegmentLib.engine.preprocessing import extract_roi
from SAMVolSegmentLib.tools.training_data import (
    Case,
    SampleSource,
    augment_roi,
    case_group,
    is_non_commercial,
    load_cases,
    real_roi,
    synthesise_from_labels,
)


def test_cases_targets_and_groups_from_a_real_case(shared_data_dir):
    cases = load_cases([shared_data_dir / "mr_msd_hippocampus_003"])
    assert [c.name for c in cases] == ["mr_msd_hippocampus_003"]
    case = cases[0]
    assert [name for name, _ in case.targets] == [f"{case.name}:1", f"{case.name}:2", f"{case.name}:all"]
    assert case.group == "mr_msd_hippocampus"
    assert set(np.unique(case.labels_model)) == {0, 1, 2}


def test_non_commercial_cases_are_left_out_unless_allowed(shared_data_dir):
    brats = shared_data_dir / "mr_brats2013_pat0001_flair_glioma"
    assert load_cases([brats]) == []
    allowed = load_cases([brats], allow_non_commercial=True)
    assert len(allowed) == 1 and is_non_commercial(allowed[0].licence)
    assert not is_non_commercial("CC BY 3.0") and not is_non_commercial("Apache-2.0 (repo LICENSE)")


def test_a_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="case folders"):
        load_cases([tmp_path / "nope"])


def test_real_rois_are_the_inference_rois(shared_data_dir):
    """A training ROI centred on a model voxel is exactly what the session crops around that point."""
    case = load_cases([shared_data_dir / "mr_msd_hippocampus_003"])[0]
    values = case.targets[0][1]
    raw, labels = real_roi(case, values, np.random.default_rng(0), 128)
    assert raw.shape == labels.shape == (128, 128, 128)
    assert np.isin(labels, values).any()
    # Recover the ROI centre from where the case's image landed in the ROI, then compare with extract_roi.
    grid = case.volume.grid
    nonzero = np.argwhere(raw != 0)
    first_model = np.argwhere(case.volume.array_model != 0)[0]
    start = nonzero[0] - first_model
    centre_ras = np.asarray(grid.origin_ras) + (-start + 64) * np.asarray(grid.spacing)
    expected, _ = extract_roi(case.volume, centre_ras)
    normalised = (raw - raw[raw > 0].mean()) / raw[raw > 0].std()
    np.testing.assert_allclose(normalised, expected, atol=1e-4)


def _toy_case(name: str, group: str, n_targets: int) -> Case:
    labels = np.zeros((8, 8, 8), np.uint16)
    for v in range(1, n_targets + 1):
        labels[v % 8, :, :] = v
    case = Case(name, group, "CC0", None, labels)  # type: ignore[arg-type]
    case.targets = [(f"{name}:{v}", (v,)) for v in range(1, n_targets + 1)]
    return case


def test_sampling_is_balanced_by_group_then_case():
    many = [_toy_case(f"hippo{i}", "hippocampus", 2) for i in range(45)]
    one = [_toy_case("lesion", "lesion", 1)]
    organs = [_toy_case("organs", "multiorgan", 40)]
    source = SampleSource(many + one + organs)
    rng = np.random.default_rng(0)
    counts = collections.Counter(source.pick_target(rng)[0].group for _ in range(3000))
    assert all(abs(counts[g] / 3000 - 1 / 3) < 0.04 for g in ("hippocampus", "lesion", "multiorgan")), counts


def test_large_fraction_draws_from_the_large_targets(monkeypatch):
    import SAMVolSegmentLib.tools.training_data as training_data

    monkeypatch.setattr(training_data, "LARGE_TARGET_VOXELS_MODEL", 100)  # toy cases: 64 voxels per slab
    small = [_toy_case(f"hippo{i}", "hippocampus", 2) for i in range(5)]
    big = _toy_case("organs", "multiorgan", 1)
    big.labels_model[:4] = 1  # 256 voxels of label 1
    source = SampleSource(small + [big], large_fraction=0.5)
    assert [values for _, values in source.large_targets] == [(1,)]
    rng = np.random.default_rng(0)
    picks = collections.Counter(source.pick_target(rng)[0].name for _ in range(2000))
    assert abs(picks["organs"] / 2000 - (0.5 + 0.5 / 2)) < 0.04  # the large pool, plus its group's share
    assert SampleSource(small).large_fraction == 0.0


def test_augmentation_moves_image_and_target_together():
    rng = np.random.default_rng(0)
    raw = np.full((16, 16, 16), 10.0, np.float32)
    raw[2:6, 3:8, 9:14] = 100.0
    label = (raw > 50).astype(np.uint8)
    changed = False
    for _ in range(12):
        image, mask = augment_roi(raw, label, rng)
        assert image.shape == raw.shape and mask.dtype == np.uint8 and mask.any()
        assert image[mask > 0].mean() > image[mask == 0].mean() + 50  # the bright block is still the target
        changed |= not np.array_equal(mask, label)
    assert changed


def test_resynthesis_keeps_the_outside_empty_and_the_target_one_class():
    raw = np.zeros((32, 32, 32), np.float32)
    raw[4:28, 4:28, 4:28] = np.random.default_rng(1).uniform(50, 150, (24, 24, 24))
    labels = np.zeros(raw.shape, np.uint16)
    labels[10:20, 10:20, 10:20] = 3
    contrasts = []
    for seed in range(6):
        image = synthesise_from_labels(raw, labels, np.random.default_rng(seed))
        assert image.shape == raw.shape and np.all(image[raw == 0] == 0) and np.all(image[raw != 0] > 0)
        inner, ring = image[12:18, 12:18, 12:18], image[22:26, 12:18, 12:18]
        contrasts.append(abs(inner.mean() - ring.mean()) / (inner.std() + 1e-6))
    assert np.median(contrasts) > 1.0  # usually a visible region; the same mean as a neighbour is possible


def test_case_groups():
    assert case_group("ct_ibsi_sts003_sarcoma", {}) == case_group("ct_ibsi_sts012_sarcoma", {})
    assert case_group("mr_ibsi_sts002_t1_sarcoma", {}) != case_group("ct_ibsi_sts003_sarcoma", {})
    assert case_group("ct_deeplesion_000002_lesion", {}) == case_group("mr_pyradiomics_brain2_lesion", {}) == "lesion"
    assert case_group("ct_totalseg_example_multiorgan", {}) == "ct_totalseg_example_multiorgan"
