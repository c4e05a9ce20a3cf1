"""Class balance from three-state patch labels (1 positive, 0 negative, −1 unknown).

:func:`class_balanced_weights` gives per-patch sampling weights (for a weighted random sampler),
:func:`pos_weight_from_labels` the BCE positive weights, :func:`untrained_classes` the classes a
method cannot learn from the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {arr.shape}")
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"labels hold {arr[bad][0]!r}; expected 1, 0 or -1 (unknown)")
    return arr.astype(np.int8)


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-patch float64 weights (mean 1) so each class's positives are drawn about equally.

    A patch positive for classes S weighs max_{c∈S} 1/n_c (n_c: positives of class c), so a
    patch of a rare class is drawn at that class's rate. Patches with no positive (only negatives
    or unknowns) form one more group of the same total weight as a class.
    """
    arr = _labels(labels)
    n = arr.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    pos = arr == 1
    counts = pos.sum(axis=0)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights = (pos * inv[None, :]).max(axis=1)
    none = ~pos.any(axis=1)
    if none.any():
        weights[none] = 1.0 / none.sum()
    out: np.ndarray = weights * (n / weights.sum())
    return out


def pos_weight_from_labels(
    labels: np.ndarray, min_weight: float = 0.1, max_weight: float = 10.0
) -> np.ndarray:
    """(C,) float32 BCE positive weights: negatives / positives over known entries, clipped to
    [min_weight, max_weight]; 1 for a class without a known positive or negative."""
    arr = _labels(labels)
    pos = (arr == 1).sum(axis=0).astype(np.float64)
    neg = (arr == 0).sum(axis=0).astype(np.float64)
    ratio = np.divide(neg, pos, out=np.ones_like(pos), where=(pos > 0) & (neg > 0))
    out: np.ndarray = np.clip(ratio, min_weight, max_weight).astype(np.float32)
    return out


def untrained_classes(
    labels: np.ndarray, names: Sequence[str], single_label: bool = False
) -> list[str]:
    """Names of classes with no positive patch; with ``single_label``, of classes with no patch
    where the class is the only positive (what a PBIP prototype bank needs)."""
    arr = _labels(labels)
    if arr.shape[1] != len(names):
        raise ValueError(f"{len(names)} class names for labels of {arr.shape[1]} classes")
    pos = arr == 1
    if single_label:
        pos = pos & (pos.sum(axis=1) == 1)[:, None]
    return [name for name, any_pos in zip(names, pos.any(axis=0), strict=True) if not any_pos]
