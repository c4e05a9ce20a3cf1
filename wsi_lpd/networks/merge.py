"""Merging the K subclass channels of each class into one parent channel (class-major rows)."""

from __future__ import annotations

import torch
from torch import Tensor


def merge_mean(x: Tensor, num_classes: int) -> Tensor:
    """Parent score = mean over the K subclasses: [B, C·K, ...] -> [B, C, ...] (training)."""
    return _split_subclasses(x, num_classes).mean(dim=2)


def merge_softmax_weighted(x: Tensor, num_classes: int) -> Tensor:
    """Parent = Σ_k softmax_k(x)·x_k over the K subclasses: [B, C·K, ...] -> [B, C, ...] (test)."""
    xs = _split_subclasses(x, num_classes)
    return (torch.softmax(xs, dim=2) * xs).sum(dim=2)


def _split_subclasses(x: Tensor, num_classes: int) -> Tensor:
    b, ck = x.shape[:2]
    if ck % num_classes:
        raise ValueError(
            f"merge: {ck} subclass channels are not a multiple of {num_classes} classes"
        )
    return x.reshape(b, num_classes, ck // num_classes, *x.shape[2:])
