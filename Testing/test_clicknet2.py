"""ClickNet2 (the default family since v2): the predictor contract with a tuple embedding, click features,
the session end to end, loading from an exported file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib.engine.predictor import Predictor, tensor_nbytes
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import load_model
from SAMVolSegmentLib.model.clicknet2 import CLICK_FEATURES, ClickNet2, ClickNet2Config, _grown_region
from SAMVolSegmentLib.tools.training import export_model

TINY = ClickNet2Config(image_size=32, encoder_channels=(4, 8, 8, 8), embed_dim=8, decoder_channels=(8, 8, 8),
                       refine_channels=4)


@pytest.fixture()
def model() -> ClickNet2:
    torch.manual_seed(0)
    return ClickNet2(TINY).eval()


def test_embedding_shapes_and_logits_at_half_the_roi(model):
    with torch.inference_mode():
        coarse, fine, images = model.encode_image(torch.randn(2, 1, 32, 32, 32))
        assert coarse.shape == (2, 8, 8, 8, 8) and fine.shape == (2, 4, 16, 16, 16) and images.shape == (2, 2, 16, 16, 16)
        points = torch.tensor([[[16.0, 16.0, 16.0]], [[4.0, 8.0, 20.0]]])
        logits, iou = model.decode_prompts((coarse, fine, images), points, torch.ones(2, 1, dtype=torch.int64),
                                           torch.zeros(2, 1, 16, 16, 16))
    assert logits.shape == (2, 1, 16, 16, 16) and iou.shape == (2, 1)
    assert torch.all((iou > 0) & (iou < 1))
    assert TINY.low_res_size == 16 and ClickNet2Config().low_res_size == 64


def test_the_image_channels_are_the_pooled_roi(model):
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        _, _, images = model.encode_image(image)
    torch.testing.assert_close(images[:, :1], torch.nn.functional.avg_pool3d(image, 2))


def test_a_positive_click_raises_its_own_logit_more_than_a_far_voxel(model):
    with torch.inference_mode():
        embedding = model.encode_image(torch.zeros(1, 1, 32, 32, 32))
        logits, _ = model.decode_prompts(embedding, torch.tensor([[[8.0, 8.0, 8.0]]]), torch.ones(1, 1, dtype=torch.int64),
                                         torch.zeros(1, 1, 16, 16, 16))
    assert logits[0, 0, 4, 4, 4] > logits[0, 0, 14, 14, 14] + 1.0  # the click prior at initialisation


def test_click_features_follow_the_image():
    """Similarity and grown regions: a bright cube clicked inside is found, a dark gap stops the growing."""
    model = ClickNet2(TINY)
    image = torch.zeros(1, 1, 16, 16, 16)
    image[0, 0, 2:8, 2:8, 2:8] = 3.0
    image[0, 0, 10:14, 2:8, 2:8] = 3.0  # same intensity, not connected
    images = torch.cat([image, image], 1)
    features = model.click_features(images, torch.tensor([[[9.0, 9.0, 9.0]]]), torch.tensor([[1]]))  # S grid 32
    names = {name: features[0, i] for i, name in enumerate(CLICK_FEATURES)}
    assert names["heat_positive"][4, 4, 4] == names["heat_positive"].max()
    assert names["heat_negative"].abs().max() == 0
    assert names["similar_positive"][3, 3, 3] == pytest.approx(1.0) and names["similar_positive"][0, 0, 0] < 1e-6
    grown = names["grown_tight"].numpy() > 0
    assert grown[2:8, 2:8, 2:8].all() and not grown[10:14].any() and grown.sum() == 6**3


def test_labels_other_than_zero_or_one_are_padding(model):
    with torch.inference_mode():
        embedding = model.encode_image(torch.randn(1, 1, 32, 32, 32))
        prev = torch.zeros(1, 1, 16, 16, 16)
        one, _ = model.decode_prompts(embedding, torch.tensor([[[10.0, 10.0, 10.0]]]), torch.tensor([[1]]), prev)
        padded, _ = model.decode_prompts(embedding, torch.tensor([[[10.0, 10.0, 10.0], [3.0, 3.0, 3.0]]]),
                                         torch.tensor([[1, -1]]), prev)
    torch.testing.assert_close(one, padded)


def test_grown_region_keeps_only_seeded_components():
    similar = np.zeros((6, 6, 6), bool)
    similar[0:2, 0:2, 0:2] = True
    similar[4:6, 4:6, 4:6] = True
    out = _grown_region(similar, [(0, 0, 0)])
    assert out[0:2, 0:2, 0:2].all() and not out[4:6].any()
    assert not _grown_region(similar, [(3, 3, 3)]).any()


def test_predictor_caches_the_tuple_embedding_and_counts_all_its_bytes(model):
    predictor = Predictor(model)
    embedding = predictor.embed(np.zeros((32, 32, 32), np.float32), ("volume", 0))
    assert isinstance(embedding, tuple) and predictor.encoder_calls == 1
    assert predictor.cache.nbytes == tensor_nbytes(embedding) == sum(t.nelement() * 4 for t in embedding)
    assert predictor.embed(np.zeros((32, 32, 32), np.float32), ("volume", 0)) is embedding
    assert predictor.encoder_calls == 1
    prediction = predictor.predict(embedding, np.array([[16.0, 16.0, 16.0]]), np.array([True]))
    assert prediction.low_res_logits.shape == (1, 1, 16, 16, 16) and 0 < prediction.iou < 1


def test_exported_default_family_runs_a_session(tmp_path):
    """The whole path a user takes: export → load by path → session on a real SimpleITK image → undo."""
    torch.manual_seed(0)
    path = export_model(ClickNet2(ClickNet2Config()), tmp_path / "v2.pt", {"step": 1})
    model = load_model(path)
    assert isinstance(model, ClickNet2) and model.model_id.startswith("clicknet2:")
    array = np.zeros((40, 60, 60), np.float32)
    array[10:30, 20:40, 20:40] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 2.0))
    session = InteractiveSession(Predictor(model))
    session.set_volume(image)
    centre_ras = np.array([-45.0, -45.0, 40.0])  # LPS (45, 45, 40) → RAS
    update = session.add_click(centre_ras, positive=True)
    assert update.mask.any()
    assert session.mask_array_kji().shape == array.shape
    session.undo()
    assert not session.mask_array_kji().any()


def test_fast_inference_paths_equal_the_training_paths():
    """PointwiseConv3d (matmul without autograd) and the reshape pooling give the convolution's / avg_pool3d's
    results, so the speed-ups change nothing a trained model computes."""
    from SAMVolSegmentLib.model.clicknet2 import PointwiseConv3d, _pool2

    torch.manual_seed(0)
    conv = PointwiseConv3d(7, 5, 1)
    x = torch.randn(2, 7, 8, 6, 4)
    with torch.inference_mode():
        fast = conv(x)
    torch.testing.assert_close(fast, torch.nn.functional.conv3d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_pool2(x), torch.nn.functional.avg_pool3d(x, 2), rtol=1e-6, atol=1e-6)


def test_inference_decode_equals_the_training_path():
    """The whole per-click decode without autograd (oneDNN convolutions, channels-last 32³ layer, matrix-product
    pointwise layers) gives the logits and IoU of the autograd path, on the default family's real channel counts."""
    torch.manual_seed(0)
    model = ClickNet2(ClickNet2Config(image_size=64)).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # a trained-like model: every layer contributes
            parameter.add_(0.05 * torch.randn_like(parameter))
    roi = torch.randn(1, 1, 64, 64, 64)
    points = torch.tensor([[[30.0, 33.0, 28.0], [10.0, 50.0, 40.0]]])
    labels = torch.tensor([[1, 0]])
    previous = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        fast_logits, fast_iou = model.decode_prompts(model.encode_image(roi), points, labels, previous)
    with torch.enable_grad():
        logits, iou = model.decode_prompts(model.encode_image(roi), points, labels, previous)
    torch.testing.assert_close(fast_logits, logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast_iou, iou.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("count", [1, 5, 40, 64, 65, 150])
def test_nearest_value_distance_is_the_minimum_over_values(count):
    from SAMVolSegmentLib.model.clicknet2 import _nearest_value_distance

    torch.manual_seed(count)
    image = torch.randn(6, 7, 8)
    values = list(torch.randn(count))
    expected = torch.stack([(image - v).abs() for v in values]).min(0)[0]
    assert torch.equal(_nearest_value_distance(image, values), expected)


def test_heatmaps_match_full_gaussians_within_their_cutoff():
    points = torch.tensor([[[3.0, 60.0, 31.5], [20.0, 20.0, 20.0]]])
    labels = torch.tensor([[1, 0]])
    maps = ClickNet2.heatmaps(points, labels, 32, 64, 1.5)
    axis = torch.arange(32.0)
    for k, channel in ((0, 0), (1, 1)):
        c = (points[0, k] + 0.5) * 32 / 64 - 0.5
        g = [torch.exp(-((axis - c[d]) ** 2) / (2 * 1.5**2)) for d in range(3)]
        full = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        torch.testing.assert_close(maps[0, channel], full, atol=1e-7, rtol=0)


# ---------------------------------------------------------------- v3: normalisation rule and box input
def _sphere_in_negative_background(offset: float = 0.0):
    """Issue 22's failing case on an oblique grid (so the covering model grid has padding): a +60 sphere
    (radius 12 mm, noise σ 8) in a −100 background, 1.0 × 1.2 × 2.5 mm, intensities shifted by ``offset``.
    Returns (array_kji, ijk_to_ras, sphere centre RAS)."""
    rng = np.random.default_rng(22)
    shape = (40, 90, 80)  # k, j, i
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = ((i - 40) * 1.0) ** 2 + ((j - 45) * 1.2) ** 2 + ((k - 20) * 2.5) ** 2
    image = np.where(r2 <= 144.0, 60.0, -100.0) + rng.normal(0, 8, shape) + offset
    angle = np.deg2rad(20)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                   [0, 0, 1]]) @ np.diag([1.0, 1.2, 2.5])
    ijk_to_ras[:3, 3] = [10, -20, 5]
    centre_ras = ijk_to_ras[:3, :3] @ np.array([40, 45, 20]) + ijk_to_ras[:3, 3]
    return image.astype(np.float32), ijk_to_ras, centre_ras


def _masks_after_two_clicks(model, offset: float = 0.0):
    import hashlib

    image, ijk_to_ras, centre_ras = _sphere_in_negative_background(offset)
    masks = []
    with InteractiveSession(model) as session:
        session.set_volume(image, ijk_to_ras)
        for point, positive in ((centre_ras, True), (centre_ras + np.array([0, 0, 12.0]), False)):
            session.add_click(point, positive)
            mask = session.mask_array_kji()
            masks.append((int(mask.sum()), hashlib.sha256(np.packbits(mask > 0).tobytes()).hexdigest()[:16]))
    return masks


def _v2_weights_with(**config_changes) -> ClickNet2:
    """The shipped v2 default's weights in a ClickNet2 whose configuration adds ``config_changes``."""
    from SAMVolSegmentLib.model import read_checkpoint
    from SAMVolSegmentLib.model.registry import resolve_model_path
    from SAMVolSegmentLib.tools.training import initialise_from

    path = resolve_model_path("default")
    config = dict(read_checkpoint(path)["config"])
    if "normalization" in config or "box_input" in config:
        pytest.skip("the shipped default is no longer v2")
    model = ClickNet2(ClickNet2Config.from_dict({**config, **config_changes}))
    initialise_from(model, path)
    model.model_id = f"v2-weights:{sorted(config_changes.items())}"
    return model.eval()


def test_the_v2_default_keeps_its_outputs_bit_for_bit():
    """v1/v2 weight files declare no normalisation: they keep the reference rule and give the masks they gave
    before v3 (computed with the code at 46e0ae0: click at the sphere's centre, then a negative click)."""
    model = load_model("default")
    if "normalization" in model.config.to_dict() and model.config.normalization != "zscore_positive":
        pytest.skip("the shipped default is no longer v2")
    torch.set_num_threads(1)
    assert _masks_after_two_clicks(model) == [(9250, "2cccb13f6403ecdc"), (3408, "2695d9538fe7d003")]


@pytest.mark.parametrize("offset", [-1000.0, 500.0])
def test_the_robust_normalisation_gives_the_same_mask_for_shifted_intensities(offset):
    """A model that declares the robust normalisation segments a volume and its intensity-shifted copy alike
    (the v2 weights under that rule: the rule, not training, makes the masks equal)."""
    model = _v2_weights_with(normalization="robust_zscore_inside")
    reference = _masks_after_two_clicks(model)
    assert reference[0][0] > 0
    assert _masks_after_two_clicks(model, offset) == reference


def test_box_input_starts_at_v2_and_round_trips_in_the_export(tmp_path):
    """Zero-initialised box weights: with a box, the fine-tune's first model gives v2's logits exactly; the
    export keeps box_input and the normalisation, and loads with the box wired to the predictor."""
    v2 = _v2_weights_with()
    v3 = _v2_weights_with(box_input=True, normalization="robust_zscore_inside")
    torch.manual_seed(0)
    image = torch.randn(1, 1, 128, 128, 128)
    points, labels = torch.tensor([[[60.0, 64.0, 70.0]]]), torch.ones(1, 1, dtype=torch.int64)
    with torch.inference_mode():
        embedding = v2.encode_image(image)
        expected, _ = v2.decode_prompts(embedding, points, labels, torch.zeros(1, 1, 64, 64, 64))
        boxed, _ = v3.decode_prompts(embedding, points, labels, torch.zeros(1, 1, 64, 64, 64),
                                     boxes_roi=torch.tensor([[[30.0, 40.0, 50.0], [90.0, 100.0, 110.0]]]))
    assert torch.equal(expected, boxed)
    with pytest.raises(ValueError, match="no box input"):
        v2.decode_prompts(embedding, points, labels, torch.zeros(1, 1, 64, 64, 64), boxes_roi=torch.zeros(1, 2, 3))
    loaded = load_model(export_model(v3, tmp_path / "v3.pt"))
    assert loaded.config.box_input and loaded.config.normalization == "robust_zscore_inside"
    predictor = Predictor(loaded)
    assert predictor.accepts_box and predictor.normalization == "robust_zscore_inside"
    assert not Predictor(v2).accepts_box and Predictor(v2).normalization == "zscore_positive"


def test_box_channel_is_the_covered_share_of_each_voxel():
    boxes = torch.tensor([[[-0.5, -0.5, -0.5], [3.5, 1.5, 7.5]], [[float("nan")] * 3] * 2])
    channel = ClickNet2.box_channel(boxes, 4, 8)  # 4³ cells of 2 ROI voxels each
    assert channel.shape == (2, 1, 4, 4, 4)
    assert torch.all(channel[1] == 0)  # NaN: no box
    np.testing.assert_allclose(channel[0, 0, :, 0, 0].numpy(), [1, 1, 0, 0])  # voxels 0..3 of dim 0
    np.testing.assert_allclose(channel[0, 0, 0, :, 0].numpy(), [1, 0, 0, 0])  # voxels 0..1 of dim 1
    assert float(channel[0].sum()) * 8 == pytest.approx(4 * 2 * 8)  # the box's volume in ROI voxels


def test_a_box_model_takes_the_box_as_input_without_a_centre_click_or_clip():
    """The engine passes the box to a model that declares box input: no engine click, and the mask is not
    clipped (a box prompt, as the CVPR 2025 challenge's models read it)."""
    model = _v2_weights_with(box_input=True, normalization="robust_zscore_inside")
    with torch.no_grad():
        # Weights that make the box alone give a mask, and a mask outside the box (a negative "outside"
        # penalty): the engine must not clip it away.
        model.box_decoder.weight.fill_(2.0)
        model.box_outside_gain.fill_(-20.0)
    image, ijk_to_ras, centre_ras = _sphere_in_negative_background()
    with InteractiveSession(model) as session:
        session.set_volume(image, ijk_to_ras)
        update = session.set_box(centre_ras - 8.0, centre_ras + 8.0)
        assert session.clicks == () and update.mask.any()
        mask = session.mask_array_kji() > 0
        geometry = session.geometry
        inside = geometry.box_mask_kji(((0, mask.shape[0]), (0, mask.shape[1]), (0, mask.shape[2])),
                                       centre_ras - 8.0, centre_ras + 8.0)
        assert (mask & ~inside).any()  # not clipped to the box
        session.clear_box()  # the box alone made this mask: lifting the box keeps it (the CVPR25 "initial" mode)
        assert np.array_equal(session.mask_array_kji() > 0, mask) and session.box_ras is None
        session.add_click(centre_ras, positive=True)  # the next click decodes without the box
        assert session.clicks and session.mask_array_kji().any()


def _ball(extent_mm: float, radius_mm: float, spacing_mm: float = 2.0) -> np.ndarray:
    """(K, J, I) bool: a centred ball in a cube of ``extent_mm`` sampled at ``spacing_mm``."""
    axis = (np.arange(int(extent_mm / spacing_mm)) - (extent_mm / spacing_mm - 1) / 2) * spacing_mm
    k, j, i = np.meshgrid(axis, axis, axis, indexing="ij")
    return i**2 + j**2 + k**2 <= radius_mm**2


def test_coarse_context_finds_a_structure_larger_than_one_roi_and_leaves_small_ones_alone():
    """``coarse_context``: a sphere 240 mm across (the 192 mm ROI lies inside it) is found by the 3 mm context ROI;
    a small sphere's mask is the same with and without it (the context mask stays inside the first ROI)."""
    from SAMVolSegmentLib.engine.metrics import dice

    model = load_model("default")
    torch.set_num_threads(1)
    ijk_to_ras = np.diag([2.0, 2.0, 2.0, 1.0])
    for radius, extent in ((120.0, 300.0), (12.0, 64.0)):
        truth = _ball(extent, radius)
        image = (np.where(truth, 140.0, 40.0) + np.random.default_rng(0).normal(0, 8, truth.shape)).astype(np.float32)
        centre_ras = ijk_to_ras[:3, :3] @ ((np.array(truth.shape) - 1) / 2)
        masks = []
        for context in (False, True):
            with InteractiveSession(model, coarse_context=context) as session:
                session.set_volume(image, ijk_to_ras)
                session.add_click(centre_ras, positive=True)
                masks.append(session.mask_array_kji() > 0)
        if radius > 100:
            assert dice(masks[1], truth) > dice(masks[0], truth) + 0.2
        else:
            assert np.array_equal(masks[0], masks[1])


def test_click_features_extended_click_by_click_equal_those_from_scratch(model):
    """Inference keeps each embedding's click summary and adds only the new clicks: bit-identical logits at every
    click (past the 64-value running minimum too), for two ROIs taking turns, after a click is dropped (no
    longer a prefix) and for padding labels."""
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        embeddings = [model.encode_image(torch.randn(1, 1, 32, 32, 32)) for _ in range(2)]
        points = torch.from_numpy(rng.uniform(0, 31, (1, 80, 3)).astype(np.float32))
        labels = torch.from_numpy(rng.choice([1, 0, -1], (1, 80), p=[0.5, 0.4, 0.1]))
        previous = torch.zeros(1, 1, 16, 16, 16)
        sequence = [(e, n) for n in range(1, 81) for e in (0, 1)] + [(0, 79), (0, 80), (1, 5)]
        for which, n in sequence:
            cached = model.decode_prompts(embeddings[which], points[:, :n], labels[:, :n], previous)[0]
            kept = model._click_cache
            model._click_cache = {}
            fresh = model.decode_prompts(embeddings[which], points[:, :n], labels[:, :n], previous)[0]
            model._click_cache = kept
            assert torch.equal(cached, fresh), (which, n)
        assert len(model._click_cache) == 2
    with torch.no_grad():
        model.train()
        model.decode_prompts(embeddings[0], points[:, :3], labels[:, :3], previous)  # training never uses it
    assert all(entry[1].points.shape[0] != 3 for entry in model._click_cache.values())
