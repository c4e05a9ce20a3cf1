"""Patch prediction for CAM/prototype models: fused stage CAMs -> class probabilities.

Recipe (LPD test pipeline): stages 2–4 merged with the softmax-weighted rule, ReLU, per-channel
min–max over H×W, × image labels, bilinear upsample to the input size, fused with stage weights
(0, 0.3, 0.3, 0.4); background = (1 − max_c S_c)^α; softmax over the C+1 channels. Optional TTA
({identity, h-flip} × intensity {0.9, 1.0, 1.1} on the normalised tensor) and DenseCRF (only when
``pydensecrf`` is importable).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.base import SegmentationNetwork
from wsi_lpd.networks.merge import merge_softmax_weighted

log = logging.getLogger(__name__)

MASK_ABSENT = ("predicted", "none")
TTA_INTENSITIES = (0.9, 1.0, 1.1)


def predicted_labels(logits4: Tensor, num_classes: int, threshold: float = 0.5) -> Tensor:
    """Image labels [B, C] float 0/1: sigmoid(softmax-merged z_4) > threshold; top-1 if none."""
    probs = torch.sigmoid(merge_softmax_weighted(logits4, num_classes))
    labels = (probs > threshold).float()
    empty = labels.sum(dim=1) == 0
    if bool(empty.any()):
        top = F.one_hot(probs.argmax(dim=1), num_classes).float()
        labels[empty] = top[empty]
    return labels


def _normalise_maps(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """ReLU then per-channel min–max over H×W: [B, C, h, w] -> [0, 1]."""
    cam = F.relu(cam)
    flat = cam.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    hi = flat.max(dim=2).values[..., None, None]
    return (cam - lo) / (hi - lo + eps)


def _fused_scores(
    cams: Sequence[Tensor],
    labels: Tensor,
    stage_weights: Sequence[float],
    size: tuple[int, int],
) -> Tensor:
    """Fused foreground scores S [B, C, H, W] of one pass from its 4 stage CAMs [B, C·K, h, w]."""
    num_classes = labels.shape[1]
    fused = labels.new_zeros(labels.shape[0], num_classes, *size)
    for w, cam in zip(stage_weights, cams, strict=True):
        if not w:
            continue
        s = _normalise_maps(merge_softmax_weighted(cam, num_classes))
        s = s * labels[:, :, None, None]
        fused = fused + w * F.interpolate(s, size=size, mode="bilinear", align_corners=False)
    return fused


def predict_probs(
    model: SegmentationNetwork,
    images: Tensor,
    *,
    image_labels: Tensor | None = None,
    mask_absent: str = "predicted",
    stage_weights: Sequence[float] = (0.0, 0.3, 0.3, 0.4),
    bg_power: float = 10.0,
    tta: bool = False,
    crf: bool = False,
    label_threshold: float = 0.5,
    normalisation: Mapping[str, Sequence[float]] | None = None,
) -> Tensor:
    """Class probabilities [B, C+1, H, W] (C foreground then background) summing to 1.

    ``images``: normalised [B, 3, H, W]. ``image_labels`` [B, C] 0/1 masks absent classes; when
    None, ``mask_absent="predicted"`` uses the model's predicted labels, ``"none"`` masks nothing.
    ``normalisation`` ({"mean", "std"}, RGB in [0, 1]) is used only to de-normalise for DenseCRF.
    The model must return an ``LPDOutput`` and expose ``num_classes``; it runs in eval mode.
    """
    if mask_absent not in MASK_ABSENT:
        raise ConfigError(
            f"predict.mask_absent: unknown {mask_absent!r}; expected predicted or none"
        )
    if len(stage_weights) != 4:
        raise ConfigError(f"predict.stage_weights: need 4 weights, got {list(stage_weights)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"predict: images must be [B, 3, H, W], got {tuple(images.shape)}")
    num_classes = model.num_classes
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            size = (images.shape[-2], images.shape[-1])
            out = model(images)  # the identity pass also gives the predicted labels
            labels = _resolve_labels(
                out.logits[3], num_classes, image_labels, mask_absent, label_threshold
            )
            fused = _fused_scores(out.cams, labels, stage_weights, size)
            passes = []
            if tta:
                passes = [(f, m) for f in (False, True) for m in TTA_INTENSITIES if f or m != 1.0]
            for flip, mult in passes:
                x = images.flip(-1) if flip else images
                s = _fused_scores(model(x * mult).cams, labels, stage_weights, size)
                fused += s.flip(-1) if flip else s
            fused /= 1 + len(passes)
            bg = (1.0 - fused.max(dim=1, keepdim=True).values).clamp_min(0) ** bg_power
            # Scores in [0, 1] normalised to sum to 1. The official code takes a softmax here,
            # which caps any class at e/(e+C) (0.40 for 4 classes) and flattens every pixel to
            # ≈ 0.3: useless as a confidence. The argmax, hence the segmentation, is the same.
            scores = torch.cat([fused, bg], dim=1)
            probs = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)
    finally:
        model.train(was_training)
    if crf:
        probs = apply_crf(probs, images, normalisation)
    return drop_untrained(probs, getattr(model, "untrained_classes", ()))


def drop_untrained(probs: Tensor, untrained: Sequence[int]) -> Tensor:
    """Zero the probability channels of classes the model never learnt, then renormalise.

    ``probs`` [B, C+1, H, W]; ``untrained``: foreground class indices (the checkpoint's
    ``untrained_classes``). Their channels can then never win an argmax.
    """
    if not len(untrained):
        return probs
    keep = torch.ones(probs.shape[1], dtype=probs.dtype, device=probs.device)
    keep[list(untrained)] = 0
    probs = probs * keep.view(1, -1, *([1] * (probs.ndim - 2)))
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _resolve_labels(
    logits4: Tensor,
    num_classes: int,
    image_labels: Tensor | None,
    mask_absent: str,
    threshold: float,
) -> Tensor:
    """Labels [B, C] (float 0/1) used to mask absent classes; logits4 [B, C·K]."""
    b, c = logits4.shape[0], num_classes
    if image_labels is not None:
        if tuple(image_labels.shape) != (b, c):
            raise ValueError(
                f"predict: image_labels of shape {tuple(image_labels.shape)}, expected ({b}, {c})"
            )
        return (image_labels > 0.5).to(logits4)
    if mask_absent == "none":
        return logits4.new_ones(b, c)
    return predicted_labels(logits4, c, threshold)


def apply_crf(
    probs: Tensor, images: Tensor, normalisation: Mapping[str, Sequence[float]] | None
) -> Tensor:
    """DenseCRF refinement (Gaussian 15/30, bilateral 10/20/50, 5 iterations) if available."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        warnings.warn("predict.crf: pydensecrf is not installed; skipping DenseCRF", stacklevel=3)
        log.warning("pydensecrf is not installed; DenseCRF skipped")
        return probs
    rgb = _denormalise(images, normalisation)
    out = []
    n, h, w = probs.shape[1:]
    for p, img in zip(probs.cpu().numpy().astype(np.float32), rgb, strict=True):
        d = dcrf.DenseCRF2D(w, h, n)
        d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p)))
        d.addPairwiseGaussian(sxy=15, compat=30)
        d.addPairwiseBilateral(sxy=10, srgb=20, rgbim=np.ascontiguousarray(img), compat=50)
        q = np.array(d.inference(5), dtype=np.float32).reshape(n, h, w)
        out.append(q / np.clip(q.sum(axis=0, keepdims=True), 1e-12, None))
    return torch.from_numpy(np.stack(out)).to(probs)


def _denormalise(images: Tensor, normalisation: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """Normalised [B, 3, H, W] -> uint8 [B, H, W, 3]; per-image min–max when no stats are given."""
    x = images.detach().float().cpu()
    if normalisation is not None:
        mean = torch.tensor(normalisation["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(normalisation["std"], dtype=torch.float32).view(1, 3, 1, 1)
        x = x * std + mean
    else:
        lo = x.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
        hi = x.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo + 1e-8)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
