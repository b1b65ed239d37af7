"""Segment merge policies of the Slicer module on plain label arrays (Segment Editor semantics, no Slicer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMVolSegment"))

from SAMVolSegmentSlicerLib.segment_merge import (
    EditPolicy,
    MaskMode,
    OtherSegment,
    OtherSegments,
    OverwriteMode,
    editable_area,
    merge_region,
)

SHAPE = (1, 1, 8)
# Voxels 0..7 along i:  other A = 2..3 (visible), other B = 4..5 (hidden).
A = np.array([0, 0, 1, 1, 0, 0, 0, 0], bool).reshape(SHAPE)
B = np.array([0, 0, 0, 0, 1, 1, 0, 0], bool).reshape(SHAPE)
OTHERS = (OtherSegment("A", A, visible=True), OtherSegment("B", B, visible=False))
EMPTY = np.zeros(SHAPE, bool)
ALL = np.ones(SHAPE, bool)


def flat(a):
    return np.asarray(a, int).ravel().tolist()


def test_default_protects_other_segments():
    result = merge_region(EMPTY, ALL, OTHERS)
    assert flat(result.target) == [1, 1, 0, 0, 0, 0, 1, 1]
    assert result.others == {}


def test_overlap_keeps_others_and_overlaps():
    result = merge_region(EMPTY, ALL, OTHERS, EditPolicy(other_segments=OtherSegments.OVERLAP))
    assert flat(result.target) == [1] * 8 and result.others == {}


def test_overwrite_all_and_visible_only():
    all_ = merge_region(EMPTY, ALL, OTHERS, EditPolicy(other_segments=OtherSegments.OVERWRITE))
    assert flat(all_.target) == [1] * 8
    assert set(all_.others) == {"A", "B"} and not all_.others["A"].any() and not all_.others["B"].any()
    visible = merge_region(
        EMPTY, ALL, OTHERS,
        EditPolicy(other_segments=OtherSegments.OVERWRITE, overwrite_mode=OverwriteMode.VisibleSegments),
    )
    assert set(visible.others) == {"A"}
    none = merge_region(
        EMPTY, ALL, OTHERS, EditPolicy(other_segments=OtherSegments.OVERWRITE, overwrite_mode=OverwriteMode.None_)
    )
    assert none.others == {} and flat(none.target) == [1] * 8


@pytest.mark.parametrize(
    ("mode", "expected_area"),
    [
        (MaskMode.Everywhere, [1] * 8),
        (MaskMode.InsideAllSegments, [0, 0, 1, 1, 1, 1, 0, 0]),
        (MaskMode.InsideVisibleSegments, [0, 0, 1, 1, 0, 0, 0, 0]),
        (MaskMode.OutsideAllSegments, [1, 1, 0, 0, 0, 0, 1, 1]),
        (MaskMode.OutsideVisibleSegments, [1, 1, 0, 0, 1, 1, 1, 1]),
    ],
)
def test_mask_modes(mode, expected_area):
    assert flat(editable_area(SHAPE, OTHERS, EditPolicy(mask_mode=mode))) == expected_area


def test_inside_single_segment_and_missing_mask_segment():
    policy = EditPolicy(mask_mode=MaskMode.InsideSingleSegment, mask_segment_id="B")
    assert flat(editable_area(SHAPE, OTHERS, policy)) == flat(B)
    # Editing inside a segment under PROTECT overlaps it instead of doing nothing.
    result = merge_region(EMPTY, ALL, OTHERS, policy)
    assert flat(result.target) == flat(B) and result.others == {}
    with pytest.raises(ValueError, match="Masking segment"):
        editable_area(SHAPE, OTHERS, EditPolicy(mask_mode=MaskMode.InsideSingleSegment, mask_segment_id="Z"))


def test_outside_editable_area_keeps_current_voxels_for_additions_and_removals():
    current = np.array([1, 0, 1, 0, 0, 0, 0, 0], bool).reshape(SHAPE)
    proposed = np.array([0, 1, 0, 0, 0, 0, 0, 0], np.uint8).reshape(SHAPE)
    policy = EditPolicy(mask_mode=MaskMode.OutsideAllSegments, other_segments=OtherSegments.OVERLAP)
    result = merge_region(current, proposed, OTHERS, policy)
    # Voxel 0 (editable) is removed, voxel 1 added, voxel 2 (inside A: not editable) kept.
    assert flat(result.target) == [0, 1, 1, 0, 0, 0, 0, 0]


def test_intensity_range_limits_the_editable_area():
    intensity = np.arange(8, dtype=float).reshape(SHAPE)
    policy = EditPolicy(intensity_range=(1.0, 6.0), other_segments=OtherSegments.OVERLAP)
    assert flat(merge_region(EMPTY, ALL, OTHERS, policy, intensity=intensity).target) == [0, 1, 1, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="intensities"):
        merge_region(EMPTY, ALL, OTHERS, policy)


def test_base_content_is_kept_even_when_the_model_drops_it():
    base = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool).reshape(SHAPE)
    result = merge_region(base, np.zeros(SHAPE, np.uint8), (), base=base)
    assert flat(result.target) == flat(base)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        merge_region(EMPTY, np.zeros((1, 1, 7)))


masks = arrays(bool, (2, 3, 4))


@settings(max_examples=80, deadline=None)
@given(masks, masks, masks, masks, st.sampled_from(list(MaskMode)[:5]), st.sampled_from(list(OtherSegments)))
def test_invariants(current, proposed, other_a, other_b, mode, others_rule):
    others = (OtherSegment("a", other_a, True), OtherSegment("b", other_b, False))
    policy = EditPolicy(mask_mode=mode, other_segments=others_rule)
    result = merge_region(current, proposed, others, policy)
    area = editable_area(current.shape, others, policy)
    # Nothing changes outside the editable area; the target never exceeds current | proposed.
    assert np.array_equal(result.target[~area], current[~area])
    assert not np.any(result.target & ~(current | proposed))
    if others_rule is not OtherSegments.OVERWRITE:
        assert result.others == {}
    else:
        for seg_id, region in result.others.items():
            original = other_a if seg_id == "a" else other_b
            # Others only lose voxels, and only the ones the target holds.
            assert not np.any(region & ~original)
            assert not np.any(region & result.target & area)
    if others_rule is OtherSegments.PROTECT and mode not in (MaskMode.InsideAllSegments, MaskMode.InsideVisibleSegments):
        # No new overlap with any other segment.
        newly = result.target & ~current
        assert not np.any(newly & (other_a | other_b))
