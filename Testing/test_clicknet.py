"""ClickNet (the bundled default family): the predictor interface, click geometry, config, fast convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from SAMVolSegmentLib.model.clicknet import ClickNet, ClickNetConfig, FastConv3d

TINY = ClickNetConfig(image_size=32, stem_channels=(4, 8), context_channels=(8, 8), embed_dim=8, decoder_channels=8)


@pytest.fixture
def model() -> ClickNet:
    torch.manual_seed(0)
    return ClickNet(TINY).eval()


def test_interface_shapes(model):
    with torch.inference_mode():
        embedding = model.encode_image(torch.randn(2, 1, 32, 32, 32))
        assert embedding.shape == (2, TINY.embed_dim, 8, 8, 8)
        points = torch.tensor([[[10.0, 12.0, 14.0], [3.0, 4.0, 5.0]], [[20.0, 20.0, 20.0], [0.0, 0.0, 0.0]]])
        labels = torch.tensor([[1, 0], [1, 1]])
        logits, iou = model.decode_prompts(embedding, points, labels, torch.zeros(2, 1, 8, 8, 8))
    assert logits.shape == (2, 1, 8, 8, 8) and iou.shape == (2, 1)
    assert bool(((iou >= 0.5) & (iou <= 1.0)).all())


def test_config_round_trip_and_low_res_size():
    config = ClickNetConfig.from_dict(TINY.to_dict())
    assert config == TINY and config.low_res_size == 8
    assert ClickNetConfig().low_res_size == 32 and ClickNetConfig().image_size == 128


@pytest.mark.parametrize("point", [(100.0, 20.0, 60.0), (3.0, 90.0, 127.0)])
def test_click_heatmap_peaks_at_the_click_in_tensor_order(point):
    model = ClickNet(ClickNetConfig())
    heat = model.click_heatmaps(torch.tensor([[point]]), torch.tensor([[1]]))
    peak = torch.nonzero(heat[0, 0] == heat[0, 0].max())[0].tolist()
    assert peak == [int(c // 4) for c in point]  # 4 ROI voxels per low-res voxel, axes kept in (R, A, S) order
    assert float(heat[0, 1].abs().max()) == 0.0


def test_negative_and_padding_clicks(model):
    heat = model.click_heatmaps(torch.tensor([[[16.0, 16.0, 16.0], [4.0, 4.0, 4.0]]]), torch.tensor([[0, -1]]))
    assert float(heat[0, 0].max()) == 0.0  # no positive click; label -1 (padding) draws nothing
    assert float(heat[0, 1].max()) > 0.9


def test_untrained_prior_follows_the_clicks(model):
    with torch.inference_mode():
        embedding = model.encode_image(torch.zeros(1, 1, 32, 32, 32))
        logits, _ = model.decode_prompts(embedding, torch.tensor([[[16.0, 16.0, 16.0], [4.0, 4.0, 4.0]]]),
                                         torch.tensor([[1, 0]]), torch.zeros(1, 1, 8, 8, 8))
    assert logits[0, 0, 4, 4, 4] > logits[0, 0, 7, 7, 0] > logits[0, 0, 1, 1, 1]


@pytest.mark.parametrize("cin,stride,dilation,bias", [(16, 1, 1, True), (12, 2, 1, True), (20, 1, 2, False),
                                                     (8, 1, 1, False), (32, 1, 1, True)])
def test_fast_conv_matches_plain_conv(cin, stride, dilation, bias):
    torch.manual_seed(0)
    conv = FastConv3d(cin, 8, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias)
    x = torch.randn(1, cin, 12, 12, 12)
    expected = F.conv3d(x, conv.weight, conv.bias, stride, dilation, dilation)
    with torch.inference_mode():
        fast = conv(x)
    assert torch.allclose(fast, expected, atol=1e-5)
    assert torch.allclose(conv(x), expected, atol=1e-5)  # autograd path
    assert list(conv.state_dict()) == (["weight", "bias"] if bias else ["weight"])


def test_prototype_similarity_marks_features_like_the_clicked_ones():
    embedding = torch.zeros(1, 4, 8, 8, 8)
    embedding[:, 0, :4] = 1.0  # region A (dim0 < 4) has feature e0, region B has e1
    embedding[:, 1, 4:] = 1.0
    model = ClickNet(TINY)
    heat = model.click_heatmaps(torch.tensor([[[4.0, 16.0, 16.0], [28.0, 16.0, 16.0]]]), torch.tensor([[1, 0]]))
    similarity = model.prototype_similarity(embedding, heat)
    assert similarity.shape == (1, 2, 8, 8, 8)
    assert float(similarity[0, 0, :4].min()) > float(similarity[0, 0, 4:].max())  # + click in A
    assert float(similarity[0, 1, 4:].min()) > float(similarity[0, 1, :4].max())  # − click in B
    none = model.prototype_similarity(embedding, torch.zeros(1, 2, 8, 8, 8))
    assert float(none.abs().max()) == 0.0  # no clicks, no similarity


def test_prototype_similarity_is_an_opt_in_decoder_input():
    old = {k: v for k, v in TINY.to_dict().items() if k != "prototype_similarity"}  # a file written before it
    assert ClickNetConfig.from_dict(old).prototype_similarity is False
    plain, extended = ClickNet(TINY), ClickNet(ClickNetConfig(**{**old, "prototype_similarity": True}))
    assert extended.decoder[0].in_channels == plain.decoder[0].in_channels + 2
    with torch.no_grad():  # zero weights for the extra inputs: the extended model computes the plain one
        for p_ext, p_plain in zip(extended.state_dict().values(), plain.state_dict().values()):
            p_ext.zero_()
            p_ext[(slice(None), slice(0, p_plain.shape[1])) if p_ext.shape != p_plain.shape else ...] = p_plain
        embedding = plain.encode_image(torch.randn(1, 1, 32, 32, 32))
        args = (torch.tensor([[[10.0, 12.0, 14.0]]]), torch.tensor([[1]]), torch.zeros(1, 1, 8, 8, 8))
        assert torch.allclose(plain.decode_prompts(embedding, *args)[0], extended.decode_prompts(embedding, *args)[0])
