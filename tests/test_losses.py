"""LPD losses: L_cls, pseudo mask, Jeffrey's divergence, L_div (intent/parity), L_sim, LPDLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsi_lpd.errors import ConfigError
from wsi_lpd.model.losses import (
    LPDLoss,
    classification_loss,
    default_loss_config,
    diversity_loss,
    jeffreys_divergence,
    pseudo_mask,
    select_subclasses,
    similarity_loss,
)
from wsi_lpd.model.lpd import LPDModel

C, K, D = 4, 2, 32


def _encoder():
    from wsi_lpd.model.encoders import build_encoder

    return build_encoder({"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1]})


def _region_encoder(dim: int = D) -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, dim),
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 64, 64, generator=gen)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    return images, labels


def test_jeffreys_symmetric_and_zero_for_equal() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 20, generator=gen), -1)
    q = torch.softmax(torch.randn(5, 20, generator=gen), -1)
    torch.testing.assert_close(jeffreys_divergence(p, q), jeffreys_divergence(q, p))
    torch.testing.assert_close(jeffreys_divergence(p, p), torch.zeros(5))
    assert bool((jeffreys_divergence(p, q) > 0).all())
    kl = (p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)
    torch.testing.assert_close(jeffreys_divergence(p, q), kl, atol=1e-5, rtol=1e-4)
    # finite with zeros thanks to eps inside the logs
    zero = torch.tensor([1.0, 0.0])
    assert math.isfinite(float(jeffreys_divergence(zero, torch.tensor([0.5, 0.5]))))


def test_classification_loss_matches_bce() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, C * K, generator=gen) for _ in range(4)]
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    expected = sum(
        w * F.binary_cross_entropy_with_logits(z.view(2, C, K).mean(-1), labels)
        for w, z in zip((0, 0.1, 1, 1), logits, strict=True)
    )
    torch.testing.assert_close(classification_loss(logits, labels), expected)
    assert float(classification_loss(logits, labels, (0, 0, 0, 0))) == 0.0
    with pytest.raises(ConfigError, match="stage_weights"):
        classification_loss(logits, labels, (1, 1))


def test_pseudo_mask_background_and_classes() -> None:
    cam = torch.full((1, C * K, 2, 2), -1.0)
    cam[0, 2:4, 0, 0] = 1.0  # class 1 (STR) wins at (0, 0)
    cam[0, 6, 1, 1], cam[0, 7, 1, 1] = 0.5, 0.3  # class 3 mean 0.4 > 0.2 at (1, 1)
    cam[0, 0, 0, 1], cam[0, 1, 0, 1] = 0.3, 0.0  # class 0 mean 0.15 < bg 0.2
    mask = pseudo_mask(cam, C, K)
    torch.testing.assert_close(mask, torch.tensor([[[2, 0], [0, 4]]]))
    assert pseudo_mask(cam, C, bg_score=0.1)[0, 0, 1] == 1


def test_diversity_lower_for_diverse_than_collapsed() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, D, 6, 6, generator=gen)
    mask = torch.randint(0, C + 1, (2, 6, 6), generator=gen)
    base = torch.randn(C, 1, D, generator=gen)
    collapsed = base.expand(C, K, D).reshape(C * K, D)
    diverse = torch.cat([base, -base], dim=1).reshape(C * K, D)
    loss_collapsed = diversity_loss(feats, collapsed, mask, C)
    loss_diverse = diversity_loss(feats, diverse, mask, C)
    torch.testing.assert_close(loss_collapsed, torch.tensor(1.0))
    assert float(loss_diverse) < float(loss_collapsed) - 0.05
    # a sharper temperature separates the distributions further
    assert float(diversity_loss(feats, diverse, mask, C, temperature=0.1)) < float(loss_diverse)
    # K = 1 has no pairs
    assert float(diversity_loss(feats, base[:, 0], mask, C)) == 0.0


def test_parity_mode_is_nearly_constant_one() -> None:
    values, intent = [], []
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        feats = torch.randn(2, 64, 14, 14, generator=gen)
        protos = torch.randn(C * K, 64, generator=gen)
        mask = torch.randint(0, C + 1, (2, 14, 14), generator=gen)
        values.append(float(diversity_loss(feats, protos, mask, C, mode="parity")))
        intent.append(float(diversity_loss(feats, protos, mask, C, mode="intent")))
    assert min(values) > 0.999
    assert max(values) - min(values) < 1e-4
    assert max(intent) < min(values) - 0.01


def test_parity_mode_off_by_one_regions() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, D, 5, 5, generator=gen)
    protos = torch.randn(C * K, D, generator=gen)
    nec_only = torch.full((1, 5, 5), C)  # every pixel is the last class (NEC)
    assert float(diversity_loss(feats, protos, nec_only, C, mode="intent")) > 0.0
    assert float(diversity_loss(feats, protos, nec_only, C, mode="parity")) == 0.0
    with pytest.raises(ConfigError, match="prototype dim"):
        diversity_loss(feats, torch.randn(C * K, D + 1), nec_only, C, mode="parity")


def test_select_subclasses() -> None:
    z4 = torch.tensor([[1.0, 2.0, 5.0, 0.0], [3.0, 1.0, 1.0, 1.0]])  # C = 2, K = 2
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[False, True, False, False], [True, False, False, False]])
    assert torch.equal(select_subclasses(z4, labels), expected)
    assert torch.equal(select_subclasses(z4[:, ::2], labels), labels.bool())  # K = 1


def test_similarity_loss_matches_reference_and_reaches_cam() -> None:
    gen = torch.Generator().manual_seed(0)
    cam = torch.randn(2, C * K, 4, 4, generator=gen).requires_grad_(True)
    logits = cam.detach().mean(dim=(2, 3))
    images = torch.randn(2, 3, 16, 16, generator=gen)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    protos = torch.randn(C * K, D, generator=gen)
    enc = _region_encoder()
    enc.requires_grad_(False)
    loss = similarity_loss(cam, logits, images, labels, protos, enc, activation_penalty=0.0)

    up = F.interpolate(cam.detach(), size=(16, 16), mode="bilinear", align_corners=True)
    sel = select_subclasses(logits, labels)
    fg_terms, bg_terms = [], []
    for b, j in sel.nonzero().tolist():
        m = (up[b, j] >= 0.5 * up[b].max()).float()
        e_fg = enc((up[b, j] * images[b] * m)[None])[0]
        e_bg = enc(((1 - up[b, j]) * images[b] * (1 - m))[None])[0]
        s_fg = F.cosine_similarity(e_fg[None], protos) / 0.07
        s_bg = F.cosine_similarity(e_bg[None], protos) / 0.07
        fg_terms.append(-(s_fg[j].exp() / s_fg.exp().sum()).log())
        others = torch.cat([s_bg[:j], s_bg[j + 1 :]])
        bg_terms.append(-(others.exp().sum() / s_bg.exp().sum()).log())
    expected = torch.stack(fg_terms).mean() + torch.stack(bg_terms).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-4)
    loss.backward()
    assert cam.grad is not None and float(cam.grad.abs().sum()) > 0
    assert all(p.grad is None for p in enc.parameters())

    none_selected = torch.zeros(2, C)
    assert float(similarity_loss(cam, logits, images, none_selected, protos, enc)) == 0.0
    minmax = similarity_loss(cam, logits, images, labels, protos, enc, minmax_normalise=True)
    minmax = minmax.detach()
    assert math.isfinite(float(minmax)) and not torch.isclose(minmax, loss.detach())


def _model() -> LPDModel:
    torch.manual_seed(0)
    return LPDModel(_encoder(), C, prototypes_per_class=K, prototype_dim=D)


def test_gradients_reach_prototypes_through_div_and_cls() -> None:
    model = _model()
    images, labels = _batch()
    out = model(images)
    loss = LPDLoss(C, lambda_sim=0.0, warmup_iters=0)(out, images, labels, iteration=0)
    (g_div,) = torch.autograd.grad(loss["div"], model.prototypes, retain_graph=True)
    (g_cls,) = torch.autograd.grad(loss["cls"], model.prototypes)
    assert float(g_div.abs().sum()) > 0
    assert float(g_cls.abs().sum()) > 0


def test_warmup_gives_cls_only() -> None:
    model = _model()
    images, labels = _batch()
    loss_fn = LPDLoss(C, warmup_iters=5, region_encoder=_region_encoder())
    before = {k: v.detach() for k, v in loss_fn(model(images), images, labels, 4).items()}
    assert float(before["div"]) == 0.0 and float(before["sim"]) == 0.0
    torch.testing.assert_close(before["total"], before["cls"])
    after = {k: v.detach() for k, v in loss_fn(model(images), images, labels, 5).items()}
    assert float(after["div"]) > 0.0 and float(after["sim"]) != 0.0
    assert set(after) == {"total", "cls", "div", "sim"}


def test_optimiser_steps_lower_total_loss() -> None:
    model = _model()
    images, labels = _batch()
    loss_fn = LPDLoss.from_config({"warmup_iters": 0}, C, region_encoder=_region_encoder())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for it in range(8):
        terms = loss_fn(model(images), images, labels, iteration=it)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        totals.append(float(terms["total"].detach()))
    assert totals[0] > 0 and float(terms["sim"].detach()) != 0.0
    assert min(totals[-3:]) < totals[0]


def test_loss_config_validation() -> None:
    with pytest.raises(ConfigError, match="lambda_sim"):
        LPDLoss(C, lambda_sim=0.1)
    with pytest.raises(ConfigError, match=r"loss\.lamda_div"):
        LPDLoss.from_config({"lamda_div": 1.0}, C)
    with pytest.raises(ConfigError, match="div_mode"):
        LPDLoss(C, lambda_sim=0.0, div_mode="paper")
    assert default_loss_config("cam")["lambda_div"] == 0.0
    assert default_loss_config("pbip")["sim_minmax_normalise"] is True
    LPDLoss.from_config(default_loss_config("cam"), C)
