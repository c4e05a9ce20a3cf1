"""LPD losses: L_cls, training pseudo mask, L_div (Jeffrey's diversity), L_sim (mask refiner).

Shapes: B images, C foreground classes, K prototypes per class, D prototype dim, C_4 stage-4 width,
(h, w) stage-4 size, (H, W) input size. Subclass channels are class-major (c·K + k).

Total loss (:class:`LPDLoss`): L = L_cls before ``warmup_iters``; afterwards
L = L_cls + λ_div·L_div + λ_sim·(L_sim + 5e-4·mean(A_4)).

``diversity_loss(mode="intent")`` is what the paper intends (Ω_c = mask == c+1, projected stage-4
prototypes, one softmax); ``mode="parity"`` reproduces the official code (Ω_c = mask == c, raw
prototypes against backbone features, a second softmax, which makes the loss ≈ 1 and inert).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.lpd import LPDOutput, merge_mean
from wsi_lpd.train.training_config import LossConfig

log = logging.getLogger(__name__)

DIV_MODES = ("intent", "parity")


def _subclasses(logits: Tensor, num_classes: int) -> int:
    ck = logits.shape[1]
    if num_classes < 1 or ck % num_classes:
        raise ValueError(
            f"loss: {ck} subclass channels are not a multiple of {num_classes} classes"
        )
    return ck // num_classes


def classification_loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    stage_weights: Sequence[float] = (0.0, 0.1, 1.0, 1.0),
    known: Tensor | None = None,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """L_cls = Σ_s w_s·BCE-with-logits(mean_k z_s[c, k], y_c).

    logits: 4 × [B, C·K]; labels: [B, C] multi-hot. Stages with weight 0 are skipped.
    ``known`` [B, C] (1 known, 0 unknown): masked BCE, the mean over known entries only (entries
    with known = 0 contribute nothing to loss or gradient; 0 when nothing is known). ``pos_weight``
    [C]: weight of the positive term per class (BCE ``pos_weight``).
    """
    if len(stage_weights) != len(logits):
        raise ValueError(
            f"loss.stage_weights: {len(stage_weights)} weights for {len(logits)} stages"
        )
    num_classes = labels.shape[1]
    if known is not None and known.shape != labels.shape:
        raise ValueError(f"loss: known of shape {tuple(known.shape)}, labels {tuple(labels.shape)}")
    target = labels.float()
    total = logits[-1].new_zeros(())
    for w, z in zip(stage_weights, logits, strict=True):
        if not w:
            continue
        _subclasses(z, num_classes)
        merged = merge_mean(z, num_classes)
        if known is None:
            term = F.binary_cross_entropy_with_logits(merged, target, pos_weight=pos_weight)
        else:
            mask = known.to(merged.dtype)
            per_entry = F.binary_cross_entropy_with_logits(
                merged, target, pos_weight=pos_weight, reduction="none"
            )
            term = (per_entry * mask).sum() / mask.sum().clamp_min(1.0)
        total = total + w * term
    return total


@torch.no_grad()
def pseudo_mask(
    cam4: Tensor, num_classes: int, K: int | None = None, bg_score: float = 0.2
) -> Tensor:
    """Training pseudo mask [B, h, w] long: argmax of [bg_score, mean-merged classes] → 0 bg, 1..C.

    ``cam4`` [B, C·K, h, w] (raw scaled cosines, not masked by labels). ``K`` is checked if given.
    """
    k = _subclasses(cam4, num_classes)
    if K is not None and k != K:
        raise ValueError(f"pseudo_mask: cam has {k} subclasses per class, expected {K}")
    parent = merge_mean(cam4.detach().float(), num_classes)
    bg = parent.new_full((parent.shape[0], 1, *parent.shape[2:]), float(bg_score))
    return torch.cat([bg, parent], dim=1).argmax(dim=1)


def jeffreys_divergence(p: Tensor, q: Tensor, dim: int = -1, eps: float = 1e-10) -> Tensor:
    """Symmetric KL: KL(p‖q) + KL(q‖p) = Σ (p − q)·(log(p+ε) − log(q+ε)) over ``dim``."""
    return ((p - q) * (torch.log(p + eps) - torch.log(q + eps))).sum(dim=dim)


def _masked_softmax(x: Tensor, region: Tensor) -> Tensor:
    """Softmax over the last dim restricted to ``region`` (bool, same shape); 0 outside it."""
    filled = x.masked_fill(~region, torch.finfo(x.dtype).min)  # finite: empty regions give no NaN
    return torch.softmax(filled, dim=-1) * region


def diversity_terms(
    features: Tensor,
    prototypes: Tensor,
    mask: Tensor,
    num_classes: int,
    *,
    mode: str = "intent",
    temperature: float | Tensor = 1.0,
    labels: Tensor | None = None,
    min_region_px: int = 1,
) -> tuple[Tensor, Tensor]:
    """(L_div, mean D_J): see :func:`diversity_loss`.

    The second value (no grad) is the Jeffrey's divergence averaged over the prototype pairs of
    every valid region (image, class); 0 when no region is valid.
    """
    if mode not in DIV_MODES:
        raise ValueError(f"diversity_loss: mode {mode!r}; expected one of {', '.join(DIV_MODES)}")
    if prototypes.shape[1] != features.shape[1]:
        raise ValueError(
            f"diversity_loss: prototype dim {prototypes.shape[1]} differs from feature width "
            f"{features.shape[1]} (parity mode needs head.prototype_dim == stage-4 width)"
        )
    k = prototypes.shape[0] // num_classes
    if k * num_classes != prototypes.shape[0]:
        raise ValueError(
            f"diversity_loss: {prototypes.shape[0]} prototypes for {num_classes} classes"
        )
    b = features.shape[0]
    zero = features.new_zeros(())
    if k < 2:
        return zero, zero.detach()
    if isinstance(temperature, Tensor):
        temperature = temperature.detach()
    f = F.normalize(features.flatten(2), dim=1)  # [B, C_f, N]
    p = F.normalize(prototypes, dim=1).reshape(num_classes, k, -1)  # [C, K, C_f]
    cos = torch.einsum("ckd,bdn->bckn", p, f) / temperature  # [B, C, K, N]
    offset = 1 if mode == "intent" else 0
    ids = torch.arange(num_classes, device=mask.device) + offset
    region = (mask.flatten(1)[:, None, :] == ids[None, :, None]).unsqueeze(2)  # [B, C, 1, N]
    valid = region[:, :, 0, :].sum(dim=-1) >= max(1, int(min_region_px))  # [B, C]
    if labels is not None:
        valid = valid & (labels > 0.5)
    region = (region & valid[:, :, None, None]).expand_as(cos)
    v = _masked_softmax(cos, region)
    if mode == "parity":
        v = _masked_softmax(v, region)
    dj = jeffreys_divergence(v.unsqueeze(3), v.unsqueeze(2))  # [B, C, K, K]
    iu = torch.triu_indices(k, k, offset=1, device=v.device)
    pair_dj = dj[:, :, iu[0], iu[1]]  # [B, C, K(K-1)/2]
    sim = torch.exp(-pair_dj).mean(dim=-1)  # [B, C]
    present = valid.to(sim.dtype)
    per_image = (sim * present).sum(dim=1) / present.sum(dim=1).clamp_min(1.0)
    mean_dj = (pair_dj.detach().mean(dim=-1) * present).sum() / present.sum().clamp_min(1.0)
    return per_image.sum() / b, mean_dj


def diversity_loss(
    features: Tensor,
    prototypes: Tensor,
    mask: Tensor,
    num_classes: int,
    *,
    mode: str = "intent",
    temperature: float | Tensor = 1.0,
    labels: Tensor | None = None,
    min_region_px: int = 1,
) -> Tensor:
    """L_div: mean over same-class prototype pairs i<j of exp(−D_J(v_i, v_j)).

    features [B, C_f, h, w] (stage-4 map); prototypes [C·K, C_f] (``intent``: projected stage-4
    prototypes; ``parity``: raw P with D = C_4); mask [B, h, w] from :func:`pseudo_mask`.
    v_k = softmax over the region Ω_c of cos(F(u), P_k)/temperature (a tensor temperature is
    detached: L_div never moves it). A region (image b, class c) is valid when it has at least
    ``min_region_px`` pixels and, with ``labels`` [B, C], when c is positive in image b. Per image:
    mean over its valid regions; L_div = Σ_b image loss / B. K = 1 gives 0.
    """
    loss, _ = diversity_terms(
        features,
        prototypes,
        mask,
        num_classes,
        mode=mode,
        temperature=temperature,
        labels=labels,
        min_region_px=min_region_px,
    )
    return loss


def select_subclasses(logits4: Tensor, labels: Tensor) -> Tensor:
    """Subclass selection [B, C·K] bool: y_b,c = 1 and z_4[c, k] > mean_k' z_4[c, k'].

    With K = 1 every labelled class is selected (the subclass is the class).
    """
    num_classes = labels.shape[1]
    k = _subclasses(logits4, num_classes)
    present = (labels > 0.5).repeat_interleave(k, dim=1)
    if k == 1:
        return present
    z = logits4.detach().reshape(logits4.shape[0], num_classes, k)
    above = (z > z.mean(dim=2, keepdim=True)).reshape(logits4.shape[0], -1)
    return present & above


def _minmax(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-sample min-max to [0, 1]: [N, ...]."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (x.ndim - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (x.ndim - 1))
    return (x - lo) / (hi - lo + eps)


def similarity_loss(
    cam4: Tensor,
    logits4: Tensor,
    images: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    region_encoder: nn.Module,
    *,
    tau: float = 0.07,
    mask_alpha: float = 0.5,
    minmax_normalise: bool = False,
    activation_penalty: float = 5e-4,
) -> Tensor:
    """L_sim (mask refiner): L_FG + L_BG + activation_penalty·mean(A_4).

    cam4 [B, C·K, h, w] (with grad), logits4 [B, C·K], images [B, 3, H, W] (normalised input),
    labels [B, C], prototypes [C·K, D] raw P, region_encoder: frozen module [N, 3, H, W] -> [N, D]
    (gradients flow through it into the CAM). Â = bilinear(A_4 → H×W, align_corners=True);
    M = Â ≥ mask_alpha·max(Â_b) over all channels and pixels of image b. For each selected (b, j):
    FG = Â_j·X_b·M_j, BG = (1 − Â_j)·X_b·(1 − M_j). FG: single-positive InfoNCE (positive P_j);
    BG: multi-positive InfoNCE (positives: every other prototype). Returns 0 (term skipped) when no
    subclass is selected in the batch.
    """
    sel = select_subclasses(logits4, labels)
    if not bool(sel.any()):
        return cam4.new_zeros(())
    if prototypes.shape[0] != cam4.shape[1]:
        raise ValueError(f"similarity_loss: {prototypes.shape[0]} prototypes, {cam4.shape[1]} CAMs")
    up = F.interpolate(cam4, size=images.shape[-2:], mode="bilinear", align_corners=True)
    thr = mask_alpha * up.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    masks = (up >= thr).to(up.dtype)
    bi, ji = torch.nonzero(sel, as_tuple=True)
    a = up[bi, ji].unsqueeze(1)  # [N, 1, H, W]
    m = masks[bi, ji].unsqueeze(1)
    x = images[bi]
    fg = a * x * m
    bg = (1.0 - a) * x * (1.0 - m)
    if minmax_normalise:
        fg, bg = _minmax(fg), _minmax(bg)
    e_fg = region_encoder(fg)
    e_bg = region_encoder(bg)
    if e_fg.ndim != 2 or e_fg.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"similarity_loss: region encoder gives {tuple(e_fg.shape)}, prototypes have "
            f"dim {prototypes.shape[1]} (head.prototype_dim must equal the region encoder dim)"
        )
    p = F.normalize(prototypes, dim=1)
    s_fg = F.normalize(e_fg, dim=1) @ p.T / tau  # [N, C·K]
    s_bg = F.normalize(e_bg, dim=1) @ p.T / tau
    loss_fg = F.cross_entropy(s_fg, ji)
    others = torch.ones_like(s_bg, dtype=torch.bool)
    others[torch.arange(len(ji), device=ji.device), ji] = False
    pos = torch.logsumexp(s_bg.masked_fill(~others, float("-inf")), dim=1)
    loss_bg = (torch.logsumexp(s_bg, dim=1) - pos).mean()
    return loss_fg + loss_bg + activation_penalty * cam4.mean()


class LPDLoss:
    """L_cls + λ_div·L_div + λ_sim·(L_sim + penalty), with a warm-up of L_cls only.

    ``region_encoder`` (needed when λ_sim > 0) is frozen here (eval, no parameter grads).
    Call with ``(output, images, labels, iteration, known=None)``; returns ``{"total", "cls",
    "div", "sim", "div_jd"}`` scalar tensors (``div``/``sim`` are 0 before warm-up or when their λ
    is 0; ``div_jd`` is the mean Jeffrey's divergence over the valid L_div regions, a metric).

    L_div options: ``div_temperature`` a float T > 0 or ``"logit_scale"`` (T = 1/t_4, detached,
    so the cosines are scaled exactly like the stage-4 CAM and L_div cannot move t_4;
    ``div_use_logit_scale=True`` means the same); None: ``"logit_scale"`` in ``intent`` mode, 1 in
    ``parity`` mode. In ``intent`` mode only regions of classes
    positive in the image label count (``div_positive_only``) and regions under
    ``div_min_region_px`` stage-4 pixels are skipped; ``parity`` mode ignores both (exact code
    parity). ``pos_weight`` [C]: BCE positive weight per class for L_cls.
    """

    def __init__(
        self,
        num_classes: int,
        config: LossConfig | None = None,
        *,
        region_encoder: nn.Module | None = None,
        pos_weight: Sequence[float] | Tensor | None = None,
    ) -> None:
        c = LossConfig() if config is None else config
        if c.lambda_sim > 0 and region_encoder is None:
            raise ValueError("LPDLoss: loss.lambda_sim > 0 needs a region encoder for L_sim")
        temperature = c.div_temperature
        if temperature is None:
            temperature = "logit_scale" if c.div_mode == "intent" else 1.0
        self.num_classes = num_classes
        self.stage_weights = tuple(float(w) for w in c.stage_weights)
        self.lambda_div = c.lambda_div
        self.lambda_sim = c.lambda_sim
        self.warmup_iters = c.warmup_iters
        self.div_mode = c.div_mode
        self.div_use_logit_scale = c.div_use_logit_scale or temperature == "logit_scale"
        self.div_temperature = 1.0 if temperature == "logit_scale" else float(temperature)
        self.div_positive_only = c.div_positive_only
        self.div_min_region_px = c.div_min_region_px
        self.bg_score = c.bg_score
        self.pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight).float()
        if self.pos_weight is not None and self.pos_weight.shape != (num_classes,):
            raise ValueError(
                f"LPDLoss: pos_weight needs {num_classes} values, "
                f"got {tuple(self.pos_weight.shape)}"
            )
        self.sim_kwargs: dict[str, Any] = {
            "tau": c.sim_tau,
            "mask_alpha": c.sim_mask_alpha,
            "minmax_normalise": c.sim_minmax_normalise,
            "activation_penalty": c.sim_activation_penalty,
        }
        self.region_encoder = region_encoder
        if region_encoder is not None:
            region_encoder.eval()
            region_encoder.requires_grad_(False)

    def __call__(
        self,
        output: LPDOutput,
        images: Tensor,
        labels: Tensor,
        iteration: int,
        known: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for one batch; labels [B, C] 0/1, known [B, C] 0/1 (None: all known),
        images [B, 3, H, W] normalised."""
        if labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(
                f"loss: labels of shape {tuple(labels.shape)}, expected [B, {self.num_classes}]"
            )
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(labels.device)
        cls_loss = classification_loss(
            output.logits, labels, self.stage_weights, known=known, pos_weight=pos_weight
        )
        zero = cls_loss.new_zeros(())
        div, sim, div_jd = zero, zero, zero
        if iteration >= self.warmup_iters:
            cam4 = output.cams[3]
            if self.lambda_div > 0:
                div, div_jd = self._diversity(output, labels)
            if self.lambda_sim > 0:
                assert self.region_encoder is not None
                sim = similarity_loss(
                    cam4,
                    output.logits[3],
                    images,
                    labels,
                    output.raw_prototypes,
                    self.region_encoder,
                    **self.sim_kwargs,
                )
        total = cls_loss + self.lambda_div * div + self.lambda_sim * sim
        return {"total": total, "cls": cls_loss, "div": div, "sim": sim, "div_jd": div_jd}

    def _diversity(self, output: LPDOutput, labels: Tensor) -> tuple[Tensor, Tensor]:
        mask = pseudo_mask(output.cams[3], self.num_classes, bg_score=self.bg_score)
        temperature: float | Tensor = self.div_temperature
        if self.div_use_logit_scale:
            temperature = 1.0 / output.logit_scales[3].detach()
        region_kwargs: dict[str, Any] = {}
        if self.div_mode == "intent":
            protos = output.prototypes[3]
            region_kwargs = {
                "labels": labels if self.div_positive_only else None,
                "min_region_px": self.div_min_region_px,
            }
        else:
            protos = output.raw_prototypes
            if protos.shape[1] != output.features[3].shape[1]:
                raise ConfigError(
                    f"head.prototype_dim: parity L_div needs prototype_dim == stage-4 width "
                    f"({protos.shape[1]} != {output.features[3].shape[1]})"
                )
        return diversity_terms(
            output.features[3],
            protos,
            mask,
            self.num_classes,
            mode=self.div_mode,
            temperature=temperature,
            **region_kwargs,
        )
