"""The data contracts between datasets and the training engine.

:class:`Batch` is what a dataset item (and, collated, a DataLoader batch: a leading B axis) holds.
:class:`LabelledPatchSet` is what the engine, the samplers and the methods read from a training
or validation set besides its items: the image-level labels, which of them are known, and whether
items carry ground-truth masks. :class:`~wsi_lpd.data.datasets.PatchDataset`,
:class:`~wsi_lpd.data.datasets.BcssWsssDataset` and
:class:`~wsi_lpd.data.datasets.ConcatPatchSets` satisfy it.
"""

from __future__ import annotations

from typing import NotRequired, Protocol, TypedDict

import numpy as np
from torch import Tensor


class Batch(TypedDict):
    """One item (shapes below) or a collated batch of them (a leading B axis)."""

    image: Tensor  # float32 3×H×W, (RGB in [0, 1] − mean) / std
    labels: Tensor  # float32 C, 1 where the class is positive
    known: Tensor  # float32 C, 1 where the label is known (positive or negative)
    slide: Tensor  # int64 scalar, the slide index (−1: no slide)
    mask: NotRequired[Tensor]  # int64 H×W class indices (background = C), where ground truth is


class LabelledPatchSet(Protocol):
    """A sized, indexable set of :class:`Batch` items with eager image-level labels."""

    @property
    def labels(self) -> np.ndarray | None:
        """(N, C) uint8, 1 where positive (None: labels read with each item's mask)."""

    @property
    def known(self) -> np.ndarray | None:
        """(N, C) uint8, 1 where the label is known (None: all known)."""

    @property
    def has_masks(self) -> bool:
        """Whether items carry ``mask`` (validation scores pixel mIoU, else label F1)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Batch: ...
