"""HisynSeg segmentation network: encoder + light FPN decoder + auxiliary CAM head, and ``predict``.

``model_config`` (stored verbatim in ``model.pt``)::

    encoder:     {...}                       # wsi_lpd.networks.encoders.build_encoder (required)
    decoder:     {channels: 128}             # FPN width
    head:        {dropout: 0.5}              # aux CAM head: Dropout + 1×1 conv on the deepest map
    background:  {rule: saturation, saturation_threshold: 0.05, dark_value: 0.15,
                  smooth_px: 5, softness: 0.01}          # or {rule: none}
    predict:     {mask_absent: predicted, label_threshold: 0.5, tta: false, crf: false}

Decoder: 1×1 lateral convs to ``channels`` on the four stage maps, top-down sum with bilinear
upsampling (FPN), a 3×3 conv–BN–ReLU per level, all levels upsampled to the finest (stride 4 for
the usual encoders) and summed, a 3×3 conv–BN–ReLU and a 1×1 classifier → C logits, upsampled
(bilinear) to the input size. CAM head: Dropout(p) + 1×1 conv on stage 4 → C maps; GAP → image
logits.

Background. The segmentation net only knows the C tissue classes (synthesised masks have no
background), so ``predict`` adds the background channel with the same rule that finds tissue on
slides (:func:`wsi_lpd.slide.tissue.tissue_mask`): stained tissue is saturated, glass is white/grey
and
unsaturated, near-black pixels (pen, borders) are not tissue. Per pixel (RGB in [0, 1] after
de-normalising with the checkpoint's normalisation), with S the HSV saturation averaged over a
``smooth_px`` box and V the brightest channel::

    t = σ((S − saturation_threshold) / softness) · σ((V − dark_value) / softness)
    probs = [t · softmax_c(seg logits), 1 − t]                   # C + 1 channels, sum 1

``rule: none`` sets t = 1 (no background). Absent classes (``mask_absent: predicted``: sigmoid of
the aux image logits > ``label_threshold``, top-1 when none; or the given ``image_labels``) get
−∞ logits before the softmax, as HisynSeg's round-2 pseudo-masking does. ``tta`` averages logits
over the 8 dihedral transforms (d4, as the official test); ``crf`` uses the shared DenseCRF step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.base import SegmentationNetwork
from wsi_lpd.networks.encoders import Encoder, build_encoder
from wsi_lpd.networks.model_config import (
    BackgroundConfig,
    HisynSegModelConfig,
    HisynSegPredictConfig,
)
from wsi_lpd.networks.predict import apply_crf, drop_untrained
from wsi_lpd.settings import parse_section

log = logging.getLogger(__name__)


@dataclass
class HisynSegOutput:
    """``seg``: B×C×H×W logits at the input size; ``cam``: B×C×h×w aux CAMs on the deepest map;
    ``logits``: B×C image logits (GAP of ``cam``)."""

    seg: Tensor
    cam: Tensor
    logits: Tensor


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FPNDecoder(nn.Module):
    """Four stage maps -> C logits at the finest stage's resolution (see the module docstring)."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in in_channels)
        self.fuse = _conv_bn_relu(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            if lat[i].shape[-2:] != lat[i - 1].shape[-2:]:
                up = F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear")
            else:
                up = lat[i]
            lat[i - 1] = lat[i - 1] + up
        size = lat[0].shape[-2:]
        fused: Tensor | None = None
        for conv, x in zip(self.smooth, lat, strict=True):
            y = conv(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear")
            fused = y if fused is None else fused + y
        assert fused is not None
        logits: Tensor = self.classifier(self.fuse(fused))
        return logits


class HisynSegModel(SegmentationNetwork):
    """Segmentation network with an auxiliary CAM head; ``forward -> HisynSegOutput``."""

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        *,
        decoder_channels: int = 128,
        dropout: float = 0.5,
        background: Mapping[str, Any] | None = None,
        predict_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.decoder = FPNDecoder(list(encoder.out_channels), decoder_channels, num_classes)
        self.cam_head = nn.Sequential(
            nn.Dropout(dropout), nn.Conv2d(encoder.out_channels[-1], num_classes, 1)
        )
        self.background = parse_section(
            BackgroundConfig, background, None, "model.background"
        ).model_dump()
        given = dict(predict_config or {})
        norm = given.pop("normalisation", None)
        #: the predict settings (+ ``normalisation`` once known)
        self.predict_config: dict[str, Any] = parse_section(
            HisynSegPredictConfig, given, None, "model.predict"
        ).model_dump()
        if norm is not None:
            self.predict_config["normalisation"] = norm

    def forward(self, images: Tensor) -> HisynSegOutput:
        """images: normalised B×3×H×W."""
        features = self.encoder(images)
        seg = self.decoder(features)
        if seg.shape[-2:] != images.shape[-2:]:
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear")
        cam = self.cam_head(features[-1])
        return HisynSegOutput(seg=seg, cam=cam, logits=cam.mean(dim=(2, 3)))

    # ------------------------------------------------------------------ prediction

    def tissue_probability(self, images: Tensor) -> Tensor:
        """P(tissue) B×1×H×W of normalised images by the background rule (module docstring)."""
        b, _, h, w = images.shape
        cfg = self.background
        if cfg["rule"] == "none":
            return images.new_ones(b, 1, h, w)
        norm = self.predict_config.get("normalisation")
        if not norm:
            raise ConfigError(
                "predict: the hisynseg background rule needs predict_config['normalisation'] "
                "(set by load_model and the trainer)"
            )
        mean = torch.tensor(norm["mean"], dtype=images.dtype, device=images.device)
        std = torch.tensor(norm["std"], dtype=images.dtype, device=images.device)
        rgb = (images * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0.0, 1.0)
        v = rgb.amax(dim=1, keepdim=True)
        sat = torch.where(v > 0, (v - rgb.amin(dim=1, keepdim=True)) / v.clamp_min(1e-6), 0.0)
        k = int(cfg["smooth_px"])
        if k > 1:
            sat = F.avg_pool2d(sat, k, stride=1, padding=k // 2, count_include_pad=False)
            sat = sat[..., :h, :w]
        soft = float(cfg["softness"])
        tissue = torch.sigmoid((sat - float(cfg["saturation_threshold"])) / soft)
        return tissue * torch.sigmoid((v - float(cfg["dark_value"])) / soft)

    def predicted_labels(self, logits: Tensor, threshold: float) -> Tensor:
        """Image labels B×C 0/1: sigmoid(aux logits) > threshold; the top class when none."""
        labels = (torch.sigmoid(logits) > threshold).to(logits.dtype)
        empty = labels.sum(dim=1) == 0
        if bool(empty.any()):
            top = F.one_hot(logits.argmax(dim=1), self.num_classes).to(logits.dtype)
            labels[empty] = top[empty]
        return labels

    def _tta_logits(self, images: Tensor, tta: bool) -> tuple[Tensor, Tensor]:
        """(segmentation logits B×C×H×W, image logits B×C), averaged over d4 when ``tta``."""
        if not tta:
            out = self(images)
            return out.seg, out.logits
        seg_sum, img_sum = None, None
        for k in range(4):
            for flip in (False, True):
                x = torch.rot90(images, k, dims=(-2, -1))
                x = x.flip(-1) if flip else x
                out = self(x)
                s = out.seg.flip(-1) if flip else out.seg
                s = torch.rot90(s, -k, dims=(-2, -1))
                seg_sum = s if seg_sum is None else seg_sum + s
                img_sum = out.logits if img_sum is None else img_sum + out.logits
        assert seg_sum is not None and img_sum is not None
        return seg_sum / 8.0, img_sum / 8.0

    def predict(
        self, images: Tensor, image_labels: Tensor | None = None, *, tta: bool | None = None
    ) -> Tensor:
        """Probabilities B×(C+1)×H×W (C tissue classes, then background; sum 1 over channels).

        ``images``: normalised B×3×H×W. ``image_labels`` (B×C, 0/1) masks absent classes; None →
        the predicted labels when ``mask_absent: predicted``, else no masking. ``tta`` overrides
        the config's d4 test-time augmentation.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"predict: images must be [B, 3, H, W], got {tuple(images.shape)}")
        cfg = self.predict_config
        use_tta = bool(cfg["tta"]) if tta is None else tta
        b, c = images.shape[0], self.num_classes
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                seg, logits = self._tta_logits(images, use_tta)
                seg, logits = seg.float(), logits.float()
                if image_labels is not None:
                    if tuple(image_labels.shape) != (b, c):
                        raise ValueError(
                            f"predict: image_labels of shape {tuple(image_labels.shape)}, "
                            f"expected ({b}, {c})"
                        )
                    labels = (image_labels > 0.5).float()
                elif cfg["mask_absent"] == "predicted":
                    labels = self.predicted_labels(logits, float(cfg["label_threshold"]))
                else:
                    labels = None
                if labels is not None:
                    # rows without any given label keep every class
                    labels = torch.where(labels.sum(1, keepdim=True) > 0, labels, 1.0)
                    seg = seg.masked_fill(labels[:, :, None, None] == 0, float("-inf"))
                fg = torch.softmax(seg, dim=1)
                tissue = self.tissue_probability(images.float())
                probs = torch.cat([fg * tissue, 1.0 - tissue], dim=1)
        finally:
            self.train(was_training)
        if cfg.get("crf"):
            probs = apply_crf(probs, images, cfg.get("normalisation"))
        return drop_untrained(probs, self.untrained_classes)


def build_hisynseg(cfg: HisynSegModelConfig, classes: ClassList) -> HisynSegModel:
    """Builder of method ``hisynseg`` (see :func:`wsi_lpd.networks.build.build_model`)."""
    assert cfg.encoder is not None
    model = HisynSegModel(
        build_encoder(cfg.encoder),
        classes.num_foreground,
        decoder_channels=cfg.decoder.channels,
        dropout=cfg.head.dropout,
        background=cfg.background.model_dump(),
        predict_config=cfg.predict.model_dump(),
    )
    log.info(
        "built hisynseg model: %d classes, decoder %d channels, background rule %s",
        classes.num_foreground,
        cfg.decoder.channels,
        cfg.background.rule,
    )
    return model
