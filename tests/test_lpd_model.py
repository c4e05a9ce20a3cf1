"""LPD head: shapes, merges, prediction (probabilities, label masking, TTA) and the PBIP bank."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from wsi_lpd.errors import ConfigError, DatasetError
from wsi_lpd.networks.lpd import (
    LPDModel,
    merge_mean,
    merge_softmax_weighted,
    pbip_prototype_bank,
)
from wsi_lpd.networks.predict import predict_probs, predicted_labels

C, K, D = 4, 2, 32


def _encoder():
    from wsi_lpd.networks.encoders import build_encoder

    return build_encoder({"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1]})


@pytest.fixture(scope="module")
def model() -> LPDModel:
    torch.manual_seed(0)
    return LPDModel(_encoder(), C, prototypes_per_class=K, prototype_dim=D).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_forward_shapes_and_stride(model: LPDModel, images: torch.Tensor) -> None:
    out = model(images)
    sizes = [(16, 16), (8, 8), (4, 4), (4, 4)]  # strides 4, 8, 16, 16
    for s, (h, w) in enumerate(sizes):
        assert out.cams[s].shape == (2, C * K, h, w)
        assert out.logits[s].shape == (2, C * K)
        assert out.features[s].shape == (2, model.encoder.out_channels[s], h, w)
        assert out.prototypes[s].shape == (C * K, model.encoder.out_channels[s])
        torch.testing.assert_close(out.logits[s], out.cams[s].mean(dim=(2, 3)))
    assert out.raw_prototypes.shape == (C * K, D)
    # scaled cosine: |A| <= t_s
    assert float(out.cams[3].detach().abs().max()) <= float(out.logit_scales[3].detach()) + 1e-4


def test_early_cams_detached_but_logits_keep_grad(model: LPDModel, images: torch.Tensor) -> None:
    out = model(images)
    assert not any(c.requires_grad for c in out.cams[:3])
    assert out.cams[3].requires_grad
    assert all(z.requires_grad for z in out.logits)


def test_head_initialisation(model: LPDModel) -> None:
    assert isinstance(model.prototypes, torch.nn.Parameter)
    torch.testing.assert_close(model.logit_scales.detach(), torch.full((4,), 1 / 0.07))
    for adapter in model.adapters:
        assert adapter.fc1.out_features == D // 2
        assert float(adapter.fc1.bias.detach().abs().sum()) == 0.0
        assert float(adapter.fc1.weight.detach().std()) < 0.03


def test_merges() -> None:
    x = torch.tensor([[1.0, 3.0, 0.0, 0.0]])  # C = 2, K = 2
    torch.testing.assert_close(merge_mean(x, 2), torch.tensor([[2.0, 0.0]]))
    w = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    expected = float(w[0] * 1 + w[1] * 3)
    torch.testing.assert_close(merge_softmax_weighted(x, 2), torch.tensor([[expected, 0.0]]))
    maps = torch.randn(2, 6, 3, 3)
    assert merge_softmax_weighted(maps, 3).shape == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="not a multiple"):  # a shape error
        merge_mean(torch.zeros(1, 5), 2)


def test_cam_method_requires_one_prototype() -> None:
    with pytest.raises(ConfigError, match="prototypes_per_class"):
        LPDModel(_encoder(), C, method="cam", prototypes_per_class=2, prototype_dim=D)


def test_predict_sums_to_one(model: LPDModel, images: torch.Tensor) -> None:
    probs = model.predict(images)
    assert probs.shape == (2, C + 1, 64, 64)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 64, 64))
    assert float(probs.min()) >= 0.0


def test_predict_masks_absent_classes(model: LPDModel, images: torch.Tensor) -> None:
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    probs = predict_probs(model, images, image_labels=labels)
    pred = probs.argmax(dim=1)
    for b in range(2):
        absent = (labels[b] == 0).nonzero().flatten().tolist()
        present = (labels[b] == 1).nonzero().flatten().tolist()
        for c in absent:
            assert not bool((pred[b] == c).any())
            # an absent class has score 0: never more probable than a present class
            assert bool((probs[b, c] <= probs[b, present].min(dim=0).values + 1e-6).all())
    unmasked = predict_probs(model, images, mask_absent="none")
    assert not torch.allclose(unmasked, probs)
    all_ones = predict_probs(model, images, image_labels=torch.ones(2, C))
    torch.testing.assert_close(unmasked, all_ones)


def test_probabilities_span_the_unit_range(model: LPDModel, images: torch.Tensor) -> None:
    """Scores normalised to sum 1 (not a softmax over [0, 1] scores, capped at e/(e+C) ≈ 0.4):
    where one class is alone in the image label its probability can approach 1."""
    only = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    probs = predict_probs(model, images, image_labels=only)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 64, 64))
    assert float(probs[0, 0].max()) > 0.9 and float(probs[1, 1].max()) > 0.9


def test_predicted_labels_fall_back_to_top1() -> None:
    logits = torch.tensor([[-9.0, -9.0, -5.0, -5.0, -9.0, -9.0], [3.0, 3.0, -9.0, -9.0, 2.0, 2.0]])
    labels = predicted_labels(logits, 3)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_predict_restores_mode_and_tta_shape(model: LPDModel, images: torch.Tensor) -> None:
    model.train()
    plain = predict_probs(model, images)
    assert model.training
    model.eval()
    tta = predict_probs(model, images, tta=True)
    assert tta.shape == plain.shape
    torch.testing.assert_close(tta.sum(dim=1), torch.ones(2, 64, 64))
    assert not torch.allclose(tta, plain)


def test_predict_rejects_bad_input(model: LPDModel, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="image_labels"):
        predict_probs(model, images, image_labels=torch.ones(2, C + 1))
    with pytest.raises(ConfigError, match="mask_absent"):
        predict_probs(model, images, mask_absent="gt")


@pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is not None, reason="CRF installed")
def test_crf_without_pydensecrf_warns_and_skips(model: LPDModel, images: torch.Tensor) -> None:
    with pytest.warns(UserWarning, match="pydensecrf"):
        probs = predict_probs(model, images, crf=True)
    torch.testing.assert_close(probs, predict_probs(model, images))


def test_pbip_bank_is_fixed_buffer_with_ck_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(C * K, D, generator=gen), dim=1)
    feats = {
        c: torch.cat([dirs[c * K + k] + 0.05 * torch.randn(15, D, generator=gen) for k in range(K)])
        for c in range(C)
    }
    bank = pbip_prototype_bank(feats, K, seed=3)
    assert bank.shape == (C * K, D)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(C * K))
    # every true cluster direction is recovered by a centre of its own class
    for c in range(C):
        sims = dirs[c * K : (c + 1) * K] @ bank[c * K : (c + 1) * K].T
        assert float(sims.max(dim=1).values.min()) > 0.95
    torch.testing.assert_close(bank, pbip_prototype_bank(feats, K, seed=3))

    model = LPDModel(_encoder(), C, method="pbip", prototypes_per_class=K, prototype_dim=D)
    assert "prototypes" in dict(model.named_buffers())
    assert "prototypes" not in dict(model.named_parameters())
    assert not model.normalise_prototypes
    model.set_prototype_bank(bank)
    torch.testing.assert_close(model.prototypes, bank)
    out = model(torch.randn(1, 3, 64, 64))
    assert out.logits[3].shape == (1, C * K)
    with pytest.raises(ValueError, match="shape"):
        model.set_prototype_bank(bank[:-1])


def test_pbip_bank_rejects_too_few_features() -> None:
    with pytest.raises(DatasetError, match="class 1"):
        pbip_prototype_bank({0: torch.randn(5, 8), 1: torch.randn(1, 8)}, 2, seed=0)
    with pytest.raises(DatasetError, match="classes"):
        pbip_prototype_bank({1: torch.randn(5, 8)}, 2, seed=0)
    assert math.isclose(float(pbip_prototype_bank({0: torch.randn(4, 8)}, 4, 0).norm(dim=1)[0]), 1)
