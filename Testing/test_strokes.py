"""Scribbles and lassos: stroke geometry (property tests) and the session steps they make."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_geometry import rotation
from test_session import TINY, centre_ras, ct_image, tiny_model  # noqa: F401  (fixture)

from SAMVolSegmentLib.batch import segment
from SAMVolSegmentLib.cli.main import main
from SAMVolSegmentLib.engine import strokes
from SAMVolSegmentLib.engine.geometry import VolumeGeometry, bbox_slices
from SAMVolSegmentLib.engine.mask_update import MaskUpdate
from SAMVolSegmentLib.engine.prompts_io import read_prompts
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.engine.strokes import (
    StrokePrompt,
    apply_drawn,
    inside_polygon,
    lasso_prompt,
    scribble_prompt,
)
from SAMVolSegmentLib.errors import InvalidPromptError
from SAMVolSegmentLib.model import ModelConfig


def geometry(spacing=(1.0, 1.0, 1.0), angles=(0.0, 0.0, 0.0), shape_kji=(40, 50, 60)) -> VolumeGeometry:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(angles) * np.asarray(spacing)
    matrix[:3, 3] = (-20.0, 15.0, 7.0)
    return VolumeGeometry.from_matrix(matrix, shape_kji)


def voxel_centres_ras(geom: VolumeGeometry, bbox, voxels) -> np.ndarray:
    kji = np.argwhere(voxels) + np.array([lo for lo, _ in bbox])
    return geom.ijk_to_ras_points(kji[:, ::-1].astype(np.float64))


spacings = st.tuples(*[st.floats(0.5, 3.0)] * 3)
angle_sets = st.tuples(*[st.floats(-0.6, 0.6)] * 3)


def convex_polygon(draw_angles, radius) -> np.ndarray:
    angles = np.sort(np.asarray(draw_angles))
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 2 * np.pi - 1e-3), min_size=3, max_size=12, unique=True),
       st.floats(2.0, 20.0), st.integers(0, 2 ** 31 - 1))
def test_inside_polygon_agrees_with_convexity(angles, radius, seed):
    polygon = convex_polygon(angles, radius)
    rel, nxt = polygon - polygon[0], np.roll(polygon, -1, axis=0) - polygon[0]
    area2 = (rel[:, 0] * nxt[:, 1] - rel[:, 1] * nxt[:, 0]).sum()
    if abs(area2) < 1.0:
        return
    points = np.random.default_rng(seed).uniform(-radius, radius, (300, 2))
    edges = np.roll(polygon, -1, axis=0) - polygon
    cross = edges[None, :, 0] * (points[:, None, 1] - polygon[None, :, 1]) - edges[None, :, 1] * (
        points[:, None, 0] - polygon[None, :, 0])
    margin = np.abs(cross) / np.maximum(np.linalg.norm(edges, axis=1), 1e-12)[None]
    clear = margin.min(axis=1) > 1e-6  # points on an edge may go either way
    expected = np.all(cross > 0, axis=1)  # angles sorted: counter-clockwise
    np.testing.assert_array_equal(inside_polygon(points, polygon)[clear], expected[clear])


@settings(max_examples=25, deadline=None)
@given(spacings, angle_sets, st.floats(4.0, 12.0), st.floats(-0.45, 0.45))
def test_lasso_fills_its_polygon_on_one_voxel_slab(spacing, angles, radius, slice_offset):
    geom = geometry(spacing, angles)
    centre = geom.ijk_to_ras_points(np.array([[30.0, 25.0, 20.0 + slice_offset]]))[0]
    # A circle in the volume's own k slice plane (directions of i and j), drawn in world coordinates.
    u, v = geom.ijk_to_ras[:3, 0] / spacing[0], geom.ijk_to_ras[:3, 1] / spacing[1]
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    polygon = centre + radius * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)
    prompt = lasso_prompt(geom, polygon, positive=True)
    kji = np.argwhere(prompt.voxels_kji) + np.array([lo for lo, _ in prompt.bbox_kji])
    assert len(np.unique(kji[:, 0])) == 1, "a lasso in a slice plane fills one slice"
    centres = voxel_centres_ras(geom, prompt.bbox_kji, prompt.voxels_kji)
    in_plane = centres - centre
    in_plane -= np.outer(in_plane @ np.cross(u, v), np.cross(u, v))
    assert np.all(np.linalg.norm(in_plane, axis=1) <= radius + 1e-6)
    expected = np.pi * radius ** 2 / (spacing[0] * spacing[1])
    assert abs(prompt.voxels_kji.sum() - expected) <= 2 * np.pi * radius / min(spacing[:2]) + 4
    assert 1 <= len(prompt.clicks_ras) <= strokes.LASSO_CLICKS
    assert np.all(np.linalg.norm(prompt.clicks_ras - centre, axis=1) < radius)


@settings(max_examples=25, deadline=None)
@given(spacings, angle_sets, st.tuples(*[st.floats(-1.0, 1.0)] * 3))
def test_oblique_lasso_stays_within_half_a_voxel_of_its_plane(spacing, angles, normal_direction):
    normal = np.asarray(normal_direction) + np.array([0.0, 0.0, 1e-3])
    if np.linalg.norm(normal) < 0.2:
        return
    normal /= np.linalg.norm(normal)
    u = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    geom = geometry(spacing, angles)
    centre = geom.ijk_to_ras_points(np.array([[30.0, 25.0, 20.0]]))[0]
    t = np.linspace(0, 2 * np.pi, 7, endpoint=False)
    prompt = lasso_prompt(geom, centre + 8 * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v), positive=False)
    centres = voxel_centres_ras(geom, prompt.bbox_kji, prompt.voxels_kji)
    slab = np.abs(normal @ geom.ijk_to_ras[:3, :3]).sum() / 2
    assert prompt.voxels_kji.any()
    assert np.all(np.abs((centres - centre) @ normal) <= slab + 1e-9)


@settings(max_examples=25, deadline=None)
@given(spacings, angle_sets, st.lists(st.tuples(*[st.floats(2.0, 35.0)] * 3), min_size=1, max_size=8))
def test_scribble_draws_every_voxel_its_points_lie_in(spacing, angles, points_ijk):
    geom = geometry(spacing, angles)
    points_ras = geom.ijk_to_ras_points(np.asarray(points_ijk, dtype=np.float64))
    prompt = scribble_prompt(geom, points_ras, positive=True)
    drawn = set(map(tuple, np.argwhere(prompt.voxels_kji) + np.array([lo for lo, _ in prompt.bbox_kji])))
    for ijk in np.rint(geom.ras_to_ijk(points_ras)).astype(int):  # the same numbers as the engine: ties alike
        assert tuple(ijk[::-1]) in drawn
    length = strokes.polyline_length_mm(strokes.as_polyline_ras(points_ras, "scribble", 1))
    expected = int(np.clip(np.ceil(length / strokes.SCRIBBLE_CLICK_SPACING_MM), 1, strokes.MAX_SCRIBBLE_CLICKS))
    assert len(prompt.clicks_ras) == expected
    assert np.all(geom.contains_ras(prompt.clicks_ras))


@pytest.mark.parametrize("points, message", [
    ([[0, 0, 0], [10, 0, 0]], "at least 3"),
    ([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]], "no area"),
    ([[0, 0, 0], [10, 0, 0], [10, 10, 5], [0, 10, 0]], "off one plane"),
    ([[0, 0, 0], [10, 0, np.nan], [10, 10, 0]], "finite"),
    ([[500, 500, 0], [510, 500, 0], [510, 510, 0]], "outside the volume"),
    ("not points", "list of"),
])
def test_bad_lassos_are_refused_with_the_fix(points, message):
    geom = geometry(shape_kji=(40, 50, 60))
    with pytest.raises(InvalidPromptError, match=message):
        lasso_prompt(geom, points, positive=True)


def test_scribble_outside_the_volume_is_refused():
    with pytest.raises(InvalidPromptError, match="outside the volume"):
        scribble_prompt(geometry(), [[900.0, 900.0, 900.0], [910.0, 900.0, 900.0]], positive=True)


def test_later_drawn_prompts_win_where_they_overlap():
    update = MaskUpdate(((0, 2), (0, 4), (0, 4)), np.zeros((2, 4, 4), np.uint8))
    first = StrokePrompt(((0, 1), (0, 4), (0, 4)), np.ones((1, 4, 4), bool), np.zeros((1, 3)), True)
    second = StrokePrompt(((0, 1), (1, 2), (0, 10)), np.ones((1, 1, 10), bool), np.zeros((1, 3)), False)
    out = apply_drawn(update, (first, second)).mask
    assert out[0].sum() == 12 and out[0, 1].sum() == 0 and out[1].sum() == 0
    assert apply_drawn(update, ()) is update


# ---------------------------------------------------------------- session steps
@pytest.fixture()
def session(tiny_model):  # noqa: F811
    image = ct_image()
    with InteractiveSession(tiny_model) as s:
        s.set_volume(image)
        yield s, image


def slice_circle(image, radius_mm=6.0, k_offset_mm=0.0):
    centre = centre_ras(image) + np.array([0.0, 0.0, k_offset_mm])
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return centre + radius_mm * np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)


def drawn_values(session, prompt_points, make):
    prompt = make(session.geometry, prompt_points, True)
    return session.mask_array_kji()[bbox_slices(prompt.bbox_kji)][prompt.voxels_kji]


def test_lasso_voxels_stay_foreground_through_later_clicks_and_undo_is_exact(session):
    s, image = session
    mirror = np.zeros(image.GetSize()[::-1], np.uint8)
    empty = s.mask_array_kji()
    polygon = slice_circle(image)
    s.add_lasso(polygon).apply_to(mirror)
    after_lasso = s.mask_array_kji()
    assert np.all(drawn_values(s, polygon, lasso_prompt) == 1)
    assert len(s.clicks) >= 1 and s.predictor.encoder_calls == 1
    s.add_click(centre_ras(image), positive=False).apply_to(mirror)
    assert np.all(drawn_values(s, polygon, lasso_prompt) == 1), "a click does not erase what the lasso drew"
    np.testing.assert_array_equal(mirror, s.mask_array_kji())
    s.undo()
    np.testing.assert_array_equal(s.mask_array_kji(), after_lasso)
    s.undo()
    np.testing.assert_array_equal(s.mask_array_kji(), empty)
    assert s.clicks == () and not s.can_undo
    s.redo()
    np.testing.assert_array_equal(s.mask_array_kji(), after_lasso)


def test_negative_scribble_clears_its_stroke(session):
    s, image = session
    s.add_click(centre_ras(image), True)
    stroke = centre_ras(image) + np.array([[-8.0, 0, 0], [0, 0, 0], [8.0, 2.0, 0]])
    before_clicks = len(s.clicks)
    s.add_scribble(stroke, positive=False)
    assert np.all(drawn_values(s, stroke, scribble_prompt) == 0)
    count = len(scribble_prompt(s.geometry, stroke, False).clicks_ras)
    assert count >= 1 and len(s.clicks) == before_clicks + count
    assert not any(c.positive for c in s.clicks[before_clicks:])
    s.reset()
    s.add_click(centre_ras(image), True)  # a reset forgets the scribble: its stroke may be foreground again


def test_a_refused_lasso_changes_nothing(session):
    s, image = session
    s.add_click(centre_ras(image), True)
    mask, clicks = s.mask_array_kji(), s.clicks
    crooked = slice_circle(image)
    crooked[::2, 2] += 10.0
    with pytest.raises(InvalidPromptError, match="off one plane"):
        s.add_lasso(crooked)
    np.testing.assert_array_equal(s.mask_array_kji(), mask)
    assert s.clicks == clicks
    s.undo()
    assert not s.can_undo


def test_strokes_count_towards_the_click_limit(session, monkeypatch):
    s, image = session
    monkeypatch.setattr("SAMVolSegmentLib.engine.session.MAX_CLICKS", 2)
    with pytest.raises(InvalidPromptError, match="more than one mask takes"):
        s.add_lasso(slice_circle(image, radius_mm=9.0))
    assert not s.can_undo


# ---------------------------------------------------------------- prompt files, segment(), samvolseg segment
def markups_file(path, curves):
    """A Slicer markups file (LPS, Slicer's default) with ``(type, name, points_ras)`` curves."""
    markups = [{"type": kind, "name": name, "coordinateSystem": "LPS", "controlPoints": [
        {"position": [-p[0], -p[1], p[2]], "positionStatus": "defined"} for p in points]}
        for kind, name, points in curves]
    path.write_text(json.dumps({"markups": markups}))
    return path


def test_prompt_files_carry_scribbles_and_lassos(tmp_path):
    lasso = np.array([[0.0, 0, 5], [10, 0, 5], [10, 10, 5], [0, 10, 5]])
    scribble = np.array([[1.0, 2, 3], [4, 5, 6]])
    path = markups_file(tmp_path / "p.mrk.json", [("ClosedCurve", "tumour", lasso), ("Curve", "negative", scribble)])
    prompts = read_prompts(path)
    assert len(prompts) == 0 and len(prompts.lassos) == 1 and len(prompts.scribbles) == 1
    np.testing.assert_allclose(prompts.lassos[0].points_ras, lasso)
    assert prompts.lassos[0].positive and not prompts.scribbles[0].positive
    (tmp_path / "p.json").write_text(json.dumps(prompts.to_json()))
    again = read_prompts(tmp_path / "p.json")
    np.testing.assert_allclose(again.scribbles[0].points_ras, scribble)
    assert again.to_json() == prompts.to_json()
    only_negative = markups_file(tmp_path / "n.mrk.json", [("Curve", "negative", scribble)])
    with pytest.raises(InvalidPromptError, match="no positive scribble or lasso"):
        read_prompts(only_negative)
    (tmp_path / "bad.json").write_text(json.dumps({"lassos": [{"ras": [[0, 0, "x"]]}]}))
    with pytest.raises(InvalidPromptError, match="Cannot read prompts"):
        read_prompts(tmp_path / "bad.json")


def test_segment_api_and_cli_apply_lassos_then_scribbles_then_clicks(tiny_model, tmp_path, capsys):  # noqa: F811
    image = ct_image()
    lasso = slice_circle(image, radius_mm=7.0)
    scribble = centre_ras(image) + np.array([[-6.0, 3.0, 4.0], [6.0, 3.0, 4.0]])
    click = centre_ras(image) + np.array([0.0, -3.0, 0.0])
    with InteractiveSession(tiny_model) as s:
        s.set_volume(image)
        s.add_lasso(lasso, True)
        s.add_scribble(scribble, False)
        s.add_click(click, True)
        expected = s.mask_array_kji()
    mask = segment(image, [click], [True], model=tiny_model, lassos=[(lasso, True)], scribbles=[(scribble, False)])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)

    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model_state_dict": tiny_model.state_dict(), "config": ModelConfig(**TINY).to_dict()}, checkpoint)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    path = markups_file(tmp_path / "prompts.mrk.json", [("Curve", "negative", scribble), ("ClosedCurve", "", lasso),
                                                         ("Fiducial", "", click[None])])
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(tmp_path / "image.nii.gz"), "--points", str(path), "--output", str(out),
                 "--model", str(checkpoint), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("+ lasso of 32 points") < printed.index("- scribble of 2 points") < printed.index("+ click")
    # The file's header stores 0.8 mm as float32: compare with the image as read back, and the loaded checkpoint.
    from_file = segment(sitk.ReadImage(str(tmp_path / "image.nii.gz")), [click], [True], model=str(checkpoint),
                        lassos=[(lasso, True)], scribbles=[(scribble, False)])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(from_file))


def test_drawn_voxels_enter_the_mask_prompt_of_their_roi(session, monkeypatch):
    s, image = session
    monkeypatch.setattr(type(s.predictor), "takes_drawn_mask", property(lambda self: True))
    seen = []
    predict = s.predictor.predict
    monkeypatch.setattr(s.predictor, "predict", lambda *a, **k: seen.append(a[3]) or predict(*a, **k))
    s.add_lasso(slice_circle(image, radius_mm=6.0), positive=True)
    prompt = seen[0][0, 0]
    positive = prompt > 0
    assert positive.any() and (prompt[~positive] == 0).all()
    # One low-res slice (the lasso's plane, S = the ROI's third axis) holds the foreground: about π r² / voxel².
    assert len(np.unique(np.argwhere(positive.numpy())[:, 2])) == 1
    voxel_mm = 1.5 * s.predictor.image_size / s.predictor.low_res_size
    assert np.pi * 36 / voxel_mm ** 2 / 2 <= int(positive.sum()) <= np.pi * (6 + voxel_mm) ** 2 / voxel_mm ** 2


def test_the_batch_path_refuses_strokes_for_a_backend_without_them(tiny_model):  # noqa: F811
    """add_scribble/add_lasso are optional members of the session protocol: a backend written before them gets
    a clear refusal before any step runs, not an AttributeError."""
    from SAMVolSegmentLib.batch import run_prompts

    class ClicksOnly:
        def __init__(self, session):
            self._session = session

        def __getattr__(self, name):
            if name in ("add_scribble", "add_lasso"):
                raise AttributeError(name)
            return getattr(self._session, name)

    image = ct_image()
    with InteractiveSession(tiny_model) as session:
        backend = ClicksOnly(session)
        with pytest.raises(InvalidPromptError, match="takes no lassos"):
            run_prompts(backend, image, [centre_ras(image)], [True], lassos=[(slice_circle(image), True)])
        assert not session.can_undo and not session.mask_array_kji().any()
