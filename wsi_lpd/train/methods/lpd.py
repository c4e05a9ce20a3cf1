"""LPD and its plain-CAM baseline (the same network with K = 1 and L_cls only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from wsi_lpd.classes import ClassList
from wsi_lpd.data.contracts import Batch
from wsi_lpd.networks.encoders import Encoder, build_encoder
from wsi_lpd.networks.lpd import LPDModel
from wsi_lpd.networks.merge import merge_softmax_weighted
from wsi_lpd.networks.model_config import EncoderConfig
from wsi_lpd.train.losses import LPDLoss
from wsi_lpd.train.methods.base import Method
from wsi_lpd.train.training_config import PrototypeTrainingConfig


class RegionEncoder(nn.Module):
    """Frozen image encoder for L_sim (and PBIP's bank): a backbone's pooled last stage through a
    fixed random projection to the prototype dimension, as the official code's random projection
    behind its (un-pretrained) MedCLIP vision tower."""

    def __init__(self, backbone: Encoder, dim: int, seed: int = 42) -> None:
        super().__init__()
        self.backbone = backbone
        gen = torch.Generator().manual_seed(seed)
        width = int(backbone.out_channels[-1])
        self.register_buffer(
            "projection", torch.randn(width, dim, generator=gen) / math.sqrt(width)
        )
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, config: EncoderConfig, dim: int, seed: int = 42) -> RegionEncoder:
        """Build the backbone with :func:`wsi_lpd.networks.encoders.build_encoder`."""
        return cls(build_encoder(config, section="region_encoder"), dim, seed)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.backbone(images)[-1].mean(dim=(2, 3))
        projected: Tensor = pooled @ self.projection
        return projected


class LPDMethod(Method[PrototypeTrainingConfig]):
    """``lpd`` (learnable prototypes, L_cls + λ_div·L_div + λ_sim·L_sim) and ``cam`` (K = 1)."""

    loss_keys = ("total", "cls", "div", "sim", "div_jd")

    def __init__(self, config: PrototypeTrainingConfig, classes: ClassList) -> None:
        super().__init__(config, classes)
        assert isinstance(self.model, LPDModel)
        self.network: LPDModel = self.model
        self.name = config.method
        self.loss_config = config.loss
        region = None
        if config.region_encoder is not None and config.loss.lambda_sim > 0:
            region = RegionEncoder.from_config(
                config.region_encoder, self.network.prototype_dim, config.train.seed
            )
        self.criterion = LPDLoss(classes.num_foreground, config.loss, region_encoder=region)

    def to(self, device: torch.device) -> LPDMethod:
        """Move the model and the frozen region encoder to ``device``."""
        self.model.to(device)
        if self.criterion.region_encoder is not None:
            self.criterion.region_encoder.to(device)
        return self

    def losses(self, batches: Mapping[str, Batch], iteration: int) -> dict[str, Tensor]:
        batch = batches["train"]
        output = self.model(batch["image"])
        return self.criterion(
            output, batch["image"], batch["labels"], iteration, known=batch.get("known")
        )

    def label_logits(self, images: Tensor) -> Tensor:
        output = self.network(images)
        return merge_softmax_weighted(output.logits[3], self.classes.num_foreground)

    def set_pos_weight(self, pos_weight: Tensor) -> bool:
        self.criterion.pos_weight = pos_weight
        return True

    def best_after(self) -> int:
        s = self.config.train.select_best_after_iters
        return self.loss_config.warmup_iters if s is None else s

    def record(self) -> dict[str, Any]:
        return {"loss": self.loss_config.model_dump()}
