"""The base of every segmentation network :func:`wsi_lpd.networks.build.build_model` builds."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class SegmentationNetwork(nn.Module):
    """A network with ``predict``: class probabilities [B, C+1, H, W] (C foreground, then
    background) of normalised images [B, 3, H, W]. ``predict_config``: its prediction settings
    (plus the checkpoint's ``normalisation`` once loaded); ``untrained_classes``: foreground
    indices it never predicts (set from the checkpoint); ``num_classes``: C."""

    num_classes: int

    def __init__(self) -> None:
        super().__init__()
        self.predict_config: dict[str, Any] = {}
        self.untrained_classes: list[int] = []

    def predict(self, images: Tensor, image_labels: Tensor | None = None) -> Tensor:
        """Class probabilities [B, C+1, H, W]; ``image_labels`` [B, C] 0/1 masks absent classes."""
        raise NotImplementedError
