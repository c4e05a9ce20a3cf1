"""HisynSeg losses: BCE on image labels, Dice on (synthetic or pseudo) masks, L1 consistency.

L_syn = w1·BCE(GAP(CAM), y) + w2·Dice(seg, mask) (background index C ignored);
L_real = w1·BCE(GAP(CAM), y) + w3·mean|softmax(seg↓) − softmax(CAM)| (seg logits resized
bilinearly to the CAM grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_lpd.networks.hisynseg import HisynSegOutput


def dice_loss(
    logits: Tensor, mask: Tensor, ignore_index: int | None = None, eps: float = 1e-7
) -> Tensor:
    """Multiclass soft Dice: 1 − 2Σpt/Σ(p+t) per class over the batch, softmax over C.

    ``logits``: B×C×H×W; ``mask``: B×H×W class indices (``ignore_index`` pixels left out). Classes
    absent from the target contribute 0; the mean is over the C classes (smp's DiceLoss).
    """
    c = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    valid = (
        torch.ones_like(mask, dtype=torch.bool) if ignore_index is None else mask != ignore_index
    )
    target = F.one_hot(torch.where(valid, mask, 0).clamp(0, c - 1), c).permute(0, 3, 1, 2)
    target = target.float() * valid[:, None]
    probs = probs * valid[:, None]
    inter = (probs * target).sum(dim=(0, 2, 3))
    card = (probs + target).sum(dim=(0, 2, 3))
    score = (2.0 * inter / card.clamp_min(eps)).clamp_min(eps)
    present = (target.sum(dim=(0, 2, 3)) > 0).float()
    return ((1.0 - score) * present).mean()


def consistency_loss(seg_logits: Tensor, cam: Tensor) -> Tensor:
    """mean |softmax_c(resize(seg → CAM grid, bilinear)) − softmax_c(CAM)| (no stop-gradient)."""
    small = F.interpolate(seg_logits.float(), size=cam.shape[-2:], mode="bilinear")
    return (torch.softmax(small, dim=1) - torch.softmax(cam.float(), dim=1)).abs().mean()


def synthetic_losses(
    out: HisynSegOutput, labels: Tensor, mask: Tensor, w1: float, w2: float, ignore_index: int
) -> dict[str, Tensor]:
    """L_syn = w1·BCE(image logits, labels) + w2·Dice(seg, mask) -> {loss, bce, dice}."""
    bce = F.binary_cross_entropy_with_logits(out.logits.float(), labels)
    dice = dice_loss(out.seg, mask, ignore_index)
    return {"loss": w1 * bce + w2 * dice, "bce": bce, "dice": dice}


def real_losses(out: HisynSegOutput, labels: Tensor, w1: float, w3: float) -> dict[str, Tensor]:
    """L_real = w1·BCE(image logits, labels) + w3·L1 consistency -> {loss, bce, consistency}."""
    bce = F.binary_cross_entropy_with_logits(out.logits.float(), labels)
    cons = consistency_loss(out.seg, out.cam)
    return {"loss": w1 * bce + w3 * cons, "bce": bce, "consistency": cons}
