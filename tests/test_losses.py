"""LPD losses: L_cls, pseudo mask, Jeffrey's divergence, L_div (intent/parity), L_sim, LPDLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.lpd import LPDModel
from wsi_lpd.settings import parse_section
from wsi_lpd.train.losses import (
    LPDLoss,
    classification_loss,
    diversity_loss,
    diversity_terms,
    jeffreys_divergence,
    pseudo_mask,
    select_subclasses,
    similarity_loss,
)
from wsi_lpd.train.registry import loss_defaults
from wsi_lpd.train.training_config import LossConfig

C, K, D = 4, 2, 32


def _encoder():
    from wsi_lpd.networks.encoders import build_encoder

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
    with pytest.raises(ValueError, match="stage_weights"):  # a shape error, not a config one
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
    with pytest.raises(ValueError, match="prototype dim"):
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


def _loss(
    region_encoder: nn.Module | None = None, pos_weight: list[float] | None = None, **loss: object
) -> LPDLoss:
    """LPDLoss from ``loss`` section keys, validated as a YAML's are."""
    config = parse_section(LossConfig, loss, None, "loss")
    return LPDLoss(C, config, region_encoder=region_encoder, pos_weight=pos_weight)


def _model() -> LPDModel:
    torch.manual_seed(0)
    return LPDModel(_encoder(), C, prototypes_per_class=K, prototype_dim=D)


def test_gradients_reach_prototypes_through_div_and_cls() -> None:
    model = _model()
    images, labels = _batch()
    out = model(images)
    loss = _loss(lambda_sim=0.0, warmup_iters=0)(out, images, labels, iteration=0)
    (g_div,) = torch.autograd.grad(loss["div"], model.prototypes, retain_graph=True)
    (g_cls,) = torch.autograd.grad(loss["cls"], model.prototypes)
    assert float(g_div.abs().sum()) > 0
    assert float(g_cls.abs().sum()) > 0


def test_warmup_gives_cls_only() -> None:
    model = _model()
    images, labels = _batch()
    loss_fn = _loss(warmup_iters=5, region_encoder=_region_encoder())
    before = {k: v.detach() for k, v in loss_fn(model(images), images, labels, 4).items()}
    assert float(before["div"]) == 0.0 and float(before["sim"]) == 0.0
    torch.testing.assert_close(before["total"], before["cls"])
    after = {k: v.detach() for k, v in loss_fn(model(images), images, labels, 5).items()}
    assert float(after["div"]) > 0.0 and float(after["sim"]) != 0.0
    assert set(after) == {"total", "cls", "div", "sim", "div_jd"}


def test_optimiser_steps_lower_total_loss() -> None:
    model = _model()
    images, labels = _batch()
    loss_fn = _loss(warmup_iters=0, region_encoder=_region_encoder())
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
    with pytest.raises(ValueError, match="lambda_sim"):  # L_sim without its encoder
        _loss(lambda_sim=0.1)
    with pytest.raises(ConfigError, match=r"loss\.lamda_div: unknown key"):
        _loss(lamda_div=1.0)
    with pytest.raises(ConfigError, match=r"loss\.div_mode: "):
        _loss(lambda_sim=0.0, div_mode="paper")
    assert loss_defaults("cam")["lambda_div"] == 0.0
    assert loss_defaults("pbip")["sim_minmax_normalise"] is True
    _loss(**loss_defaults("cam"))


def test_masked_classification_loss_ignores_unknown_entries() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(3, C * K, generator=gen).requires_grad_(True) for _ in range(4)]
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    known = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0]])

    def loss_and_grads(y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss = classification_loss(logits, y, known=known)
        return loss, torch.autograd.grad(loss, logits[1:])

    loss, grads = loss_and_grads(labels)
    flipped = labels.clone()
    flipped[known == 0] = 1.0 - flipped[known == 0]
    loss2, grads2 = loss_and_grads(flipped)
    # exact by construction: the flipped entries are multiplied by known = 0 (giving exactly 0
    # and a zero gradient), every other operand and the order of operations are the same
    assert torch.equal(loss, loss2)
    assert all(torch.equal(g, g2) for g, g2 in zip(grads, grads2, strict=True))
    # mean over the known entries
    z4 = logits[3].detach().view(3, C, K).mean(-1)
    bce = F.binary_cross_entropy_with_logits(z4, labels, reduction="none")
    z3 = logits[2].detach().view(3, C, K).mean(-1)
    bce3 = F.binary_cross_entropy_with_logits(z3, labels, reduction="none")
    z2 = logits[1].detach().view(3, C, K).mean(-1)
    bce2 = F.binary_cross_entropy_with_logits(z2, labels, reduction="none")
    expected = sum(w * b[known.bool()].mean() for w, b in ((0.1, bce2), (1, bce3), (1, bce)))
    torch.testing.assert_close(loss.detach(), expected)
    # all known is the plain loss (float32 sums of the same 12 entries in another order, sum/n
    # vs BCE's mean: a few ulps apart, 2·ε32·|loss| ≈ 5e-7 at worst; assert_close's float32
    # default rtol 1.3e-6 covers it on any CPU); nothing known is exactly 0 (0/clamp(0, 1))
    plain = classification_loss(logits, labels)
    torch.testing.assert_close(
        classification_loss(logits, labels, known=torch.ones_like(labels)), plain
    )
    assert (
        float(classification_loss(logits, labels, known=torch.zeros_like(labels)).detach()) == 0.0
    )
    # pos_weight is BCE's
    pw = torch.tensor([2.0, 1.0, 0.5, 3.0])
    ref = sum(
        w
        * F.binary_cross_entropy_with_logits(
            z.detach().view(3, C, K).mean(-1), labels, pos_weight=pw
        )
        for w, z in zip((0, 0.1, 1, 1), logits, strict=True)
    )
    torch.testing.assert_close(classification_loss(logits, labels, pos_weight=pw).detach(), ref)


def test_lpd_loss_passes_known_and_pos_weight() -> None:
    model = _model()
    images, labels = _batch()
    out = model(images)
    known = torch.ones_like(labels)
    known[0, 1] = 0.0
    pw = [1.0, 2.0, 1.0, 1.0]
    terms = _loss(lambda_sim=0.0, warmup_iters=9, pos_weight=pw)(out, images, labels, 0, known)
    expected = classification_loss(out.logits, labels, known=known, pos_weight=torch.tensor(pw))
    torch.testing.assert_close(terms["cls"], expected)
    with pytest.raises(ValueError, match="pos_weight"):  # one weight per class
        _loss(lambda_sim=0.0, pos_weight=[1.0, 2.0])


def test_diversity_regions_positive_only_and_min_size() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, D, 4, 4, generator=gen)
    protos = torch.randn(C * K, D, generator=gen)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2] = 1  # class 0: 8 px
    mask[0, 2, :2] = 2  # class 1: 2 px
    both = diversity_terms(feats, protos, mask, C)
    only0 = diversity_terms(feats, protos, mask, C, labels=torch.tensor([[1.0, 0, 0, 0]]))
    big = diversity_terms(feats, protos, mask, C, min_region_px=3)
    torch.testing.assert_close(only0[0], big[0])
    torch.testing.assert_close(only0[1], big[1])
    assert not torch.isclose(both[0], only0[0])
    # class 0 alone, by hand: one pair, single softmax over its 8 px
    f = F.normalize(feats.flatten(2)[0], dim=0)[:, :8]
    p = F.normalize(protos[:2], dim=1)
    v = torch.softmax(p @ f, dim=1)
    dj = float(jeffreys_divergence(v[0], v[1]))
    assert math.isclose(float(only0[0]), math.exp(-dj), rel_tol=1e-5)
    assert math.isclose(float(only0[1]), dj, rel_tol=1e-5)
    # no valid region: 0 loss and 0 divergence
    none = diversity_terms(feats, protos, mask, C, labels=torch.zeros(1, C))
    assert float(none[0]) == 0.0 and float(none[1]) == 0.0


def test_logit_scale_temperature_is_detached() -> None:
    model = _model()
    images, labels = _batch()
    out = model(images)
    terms = _loss(lambda_sim=0.0, warmup_iters=0, div_temperature="logit_scale")(
        out, images, labels, 0
    )
    (g_scale, g_proto) = torch.autograd.grad(
        terms["div"], [model.logit_scales, model.prototypes], allow_unused=True
    )
    assert g_scale is None or float(g_scale.abs().sum()) == 0.0
    assert g_proto is not None and float(g_proto.abs().sum()) > 0
    assert float(terms["div_jd"]) > 0.0
    assert _loss(lambda_sim=0.0).div_use_logit_scale  # intent default
    assert not _loss(lambda_sim=0.0, div_mode="parity").div_use_logit_scale
    with pytest.raises(ConfigError, match=r"loss\.div_temperature: "):
        _loss(lambda_sim=0.0, div_temperature="cam")


def _separation(temperature: float | str, steps: int = 20) -> tuple[float, float, float, float]:
    """L_div alone (Adam on prototypes + stage-4 adapter) from near-collapsed prototypes, on the
    fixed stage-4 features of 4 random images with one class per quadrant.

    Returns (mean same-class cosine of projected prototypes before, after; L_div before, after).
    """
    torch.manual_seed(0)
    k = 3
    model = LPDModel(_encoder(), C, prototypes_per_class=k, prototype_dim=D)
    with torch.no_grad():
        base = torch.randn(C, 1, D)
        model.prototypes.copy_((base + 0.01 * torch.randn(C, k, D)).reshape(C * k, D))
        images = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(3))
        feats = model.encoder(images)[3]  # [4, C_4, 8, 8]
    mask = torch.ones(4, 8, 8, dtype=torch.long)
    mask[:, :4, 4:], mask[:, 4:, :4], mask[:, 4:, 4:] = 2, 3, 4
    scale = 1.0 / model.logit_scales[3] if temperature == "logit_scale" else float(temperature)
    params = [model.prototypes, *model.adapters[3].parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    iu = torch.triu_indices(k, k, offset=1)

    def div_loss() -> torch.Tensor:
        protos = model.adapters[3](model.prototypes)
        return diversity_loss(feats, protos, mask, C, temperature=scale, labels=torch.ones(4, C))

    def mean_cos() -> float:
        with torch.no_grad():
            q = F.normalize(model.adapters[3](model.prototypes), dim=1).reshape(C, k, -1)
            return float((q @ q.transpose(1, 2))[:, iu[0], iu[1]].mean())

    cos0, div0 = mean_cos(), float(div_loss().detach())
    for _ in range(steps):
        div = div_loss()
        opt.zero_grad()
        div.backward()
        opt.step()
    return cos0, mean_cos(), div0, float(div_loss().detach())


def test_diversity_at_logit_scale_separates_collapsed_prototypes() -> None:
    cos0, cos1, div0, div1 = _separation("logit_scale")
    assert cos0 > 0.99 and div0 > 0.99
    assert cos1 < cos0 - 0.3
    assert div1 < 0.5
    # at temperature 1 (the official code's scale) the activation distributions stay nearly equal
    # over the same 20 steps, although the prototype directions move
    assert _separation(1.0)[3] > 0.85
