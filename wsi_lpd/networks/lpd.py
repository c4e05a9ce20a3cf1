"""LPD head: learnable class prototypes, per-stage adapters and scaled-cosine CAMs.

Shapes: B images, C foreground classes, K prototypes (subclasses) per class, D prototype dim,
C_s channels and (h_s, w_s) size of encoder stage s (s = 1..4, index 0..3 here).

Per stage s and prototype j (rows class-major: rows c·K … c·K+K−1 belong to class c):

    A_s[j](u) = t_s · cos(f_s(u), q_s,j),   q_s,j = Adapt_s(P_j)     -> cams[s]   [B, C·K, h_s, w_s]
    z_s[j]    = mean_u A_s[j](u)                                    -> logits[s] [B, C·K]

The same class implements three methods (``method``):

- ``lpd``: P is a learnable parameter (randn init), projected prototypes are L2-normalised.
- ``cam``: the same network with K = 1 (a plain prototype/CAM classifier; no L_div, no L_sim).
- ``pbip``: P is a fixed bank (a registered buffer) from a cosine k-means of frozen-encoder features
  of single-label patches (:func:`pbip_prototype_bank`); projected prototypes are not normalised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_lpd.errors import ConfigError, DatasetError
from wsi_lpd.networks.base import SegmentationNetwork
from wsi_lpd.networks.encoders import Encoder
from wsi_lpd.networks.merge import merge_mean, merge_softmax_weighted
from wsi_lpd.networks.predict import predict_probs

log = logging.getLogger(__name__)

#: the head's variants; the methods using them are registered in :mod:`wsi_lpd.train.registry`
HeadVariant = Literal["lpd", "cam", "pbip"]
__all__ = ["HeadVariant", "LPDModel", "LPDOutput", "merge_mean", "merge_softmax_weighted"]


@dataclass
class LPDOutput:
    """What :meth:`LPDModel.forward` returns (lists are ordered stage 1..4).

    cams: 4 × [B, C·K, h_s, w_s] scaled-cosine maps (stages 1–3 detached when configured).
    logits: 4 × [B, C·K] subclass logits, GAP of the (non-detached) CAMs.
    features: 4 × [B, C_s, h_s, w_s] encoder stage maps (not normalised).
    prototypes: 4 × [C·K, C_s] prototypes projected by each stage's adapter (before any norm).
    raw_prototypes: [C·K, D] the prototype matrix P itself.
    logit_scales: [4] the temperatures t_s.
    """

    cams: list[Tensor]
    logits: list[Tensor]
    features: list[Tensor]
    prototypes: list[Tensor]
    raw_prototypes: Tensor
    logit_scales: Tensor


class AdaptiveLayer(nn.Module):
    """Prototype projection to one stage: Linear(D → D·ratio) → ReLU → Linear(→ C_s)."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float = 0.5) -> None:
        super().__init__()
        hidden = max(1, round(in_dim * ratio))
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        for layer in (self.fc1, self.fc2):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[N, D] -> [N, C_s]."""
        out: Tensor = self.fc2(F.relu(self.fc1(x)))
        return out


class LPDModel(SegmentationNetwork):
    """Encoder + C·K prototypes + four adapters + four logit scales (see module docstring).

    ``encoder`` must expose ``out_channels`` (4 ints) and map ``B×3×H×W`` to 4 stage maps.
    ``predict_config`` holds the keyword arguments of :func:`wsi_lpd.networks.predict.predict_probs`
    used by :meth:`predict`.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        *,
        method: HeadVariant = "lpd",
        prototypes_per_class: int = 10,
        prototype_dim: int = 512,
        adapter_ratio: float = 0.5,
        logit_scale_init: float = 1.0 / 0.07,
        detach_early_cams: bool = True,
        normalise_prototypes: bool | None = None,
        predict_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if method not in get_args(HeadVariant):
            raise ConfigError(f"method: unknown head variant {method!r}")
        if num_classes < 1 or prototypes_per_class < 1 or prototype_dim < 1:
            raise ConfigError(
                f"head: num_classes ({num_classes}), prototypes_per_class "
                f"({prototypes_per_class}) and prototype_dim ({prototype_dim}) must be >= 1"
            )
        if method == "cam" and prototypes_per_class != 1:
            raise ConfigError("head.prototypes_per_class: method 'cam' needs exactly 1")
        channels = [int(c) for c in encoder.out_channels]
        if len(channels) != 4:
            raise ValueError(f"encoder: expected 4 stage widths in out_channels, got {channels}")
        self.encoder = encoder
        self.method = method
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.prototype_dim = prototype_dim
        self.detach_early_cams = detach_early_cams
        self.normalise_prototypes = (
            method != "pbip" if normalise_prototypes is None else normalise_prototypes
        )
        self.predict_config: dict[str, Any] = dict(predict_config or {})
        init = torch.randn(num_classes * prototypes_per_class, prototype_dim)
        if method == "pbip":
            self.register_buffer("prototypes", F.normalize(init, dim=1))
        else:
            self.prototypes = nn.Parameter(init)
        self.adapters = nn.ModuleList(
            AdaptiveLayer(prototype_dim, c, adapter_ratio) for c in channels
        )
        self.logit_scales = nn.Parameter(torch.full((4,), float(logit_scale_init)))

    def set_prototype_bank(self, bank: Tensor) -> None:
        """Copy a fixed ``[C·K, D]`` bank into the ``pbip`` prototype buffer."""
        if self.method != "pbip":
            raise ConfigError(f"method: set_prototype_bank needs 'pbip', model is {self.method!r}")
        if tuple(bank.shape) != tuple(self.prototypes.shape):
            raise ValueError(
                f"prototype bank: shape {tuple(bank.shape)} does not match "
                f"{tuple(self.prototypes.shape)} (C·K, prototype_dim)"
            )
        with torch.no_grad():
            self.prototypes.copy_(bank.to(self.prototypes))

    def forward(self, x: Tensor) -> LPDOutput:
        """``x``: normalised images [B, 3, H, W] -> :class:`LPDOutput`."""
        feats = list(self.encoder(x))
        if len(feats) != 4:
            raise ValueError(f"encoder: forward returned {len(feats)} stage maps, expected 4")
        cams, logits, projected = [], [], []
        for s, (f, adapter) in enumerate(zip(feats, self.adapters, strict=True)):
            q = adapter(self.prototypes)
            q_used = F.normalize(q, dim=1) if self.normalise_prototypes else q
            cam = self.logit_scales[s] * torch.einsum(
                "bchw,kc->bkhw", F.normalize(f, dim=1), q_used
            )
            logits.append(cam.mean(dim=(2, 3)))
            cams.append(cam.detach() if self.detach_early_cams and s < 3 else cam)
            projected.append(q)
        return LPDOutput(cams, logits, feats, projected, self.prototypes, self.logit_scales)

    def predict(self, images: Tensor, image_labels: Tensor | None = None) -> Tensor:
        """Class probabilities [B, C+1, H, W] (C foreground then background), summing to 1."""
        return predict_probs(self, images, image_labels=image_labels, **self.predict_config)


def pbip_prototype_bank(
    features_by_class: Mapping[int, Tensor], k: int, seed: int = 42, iterations: int = 50
) -> Tensor:
    """Cosine k-means per class: {c: [N_c, D]}, c = 0..C−1 -> [C·K, D] unit centres, class-major."""
    if k < 1:
        raise ConfigError(f"pbip: prototypes_per_class must be >= 1, got {k}")
    classes = sorted(features_by_class)
    if classes != list(range(len(classes))) or not classes:
        raise DatasetError(f"pbip: features needed for classes 0..C-1, got keys {classes}")
    gen = torch.Generator().manual_seed(seed)
    banks = []
    for c in classes:
        feats = torch.as_tensor(features_by_class[c]).detach().float().cpu()
        if feats.ndim != 2 or feats.shape[0] < k:
            raise DatasetError(
                f"pbip: class {c} has features of shape {tuple(feats.shape)}; need [N >= {k}, D]"
            )
        banks.append(_cosine_kmeans(F.normalize(feats, dim=1), k, gen, iterations))
    dims = {b.shape[1] for b in banks}
    if len(dims) != 1:
        raise DatasetError(f"pbip: feature dimensions differ between classes: {sorted(dims)}")
    return torch.cat(banks, dim=0)


def _cosine_kmeans(x: Tensor, k: int, gen: torch.Generator, iterations: int) -> Tensor:
    """Spherical k-means on unit rows ``x`` [N, D] with k-means++ seeding -> [k, D] unit centres."""
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), generator=gen)]
    while centres.shape[0] < k:
        dist = (1.0 - (x @ centres.T).max(dim=1).values).clamp_min(0)
        if float(dist.sum()) <= 0:
            pick = torch.randint(n, (1,), generator=gen)
        else:
            pick = torch.multinomial(dist, 1, generator=gen)
        centres = torch.cat([centres, x[pick]], dim=0)
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        sim = x @ centres.T
        new_assign = sim.argmax(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():  # re-seed empty clusters at the worst-fitting points
            worst = sim.max(dim=1).values.argsort()[: empty.numel()]
            sums[empty] = x[worst]
        centres = F.normalize(sums, dim=1)
    log.debug("cosine k-means: %d points, %d centres", n, k)
    return centres
