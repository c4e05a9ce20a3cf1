"""Training data for :func:`wsi_lpd.train.engine.train`: patch stores or a BCSS-style folder, the
normalisation, the augmentation, and a validation split that does not leak.

Without a separate validation store, ``train.val_fraction`` of the patches is held out with
:func:`wsi_lpd.data.splits.split_train_val`: whole slides when the stores hold two or more, else
spatial blocks at least one patch apart. Validation then scores pixel mIoU when the stores have
masks and image-label F1 / mAP otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_lpd.classes import ClassList
from wsi_lpd.data.augment import Augment
from wsi_lpd.data.contracts import LabelledPatchSet
from wsi_lpd.data.datasets import (
    LPD_NORMALISATION,
    BcssWsssDataset,
    ConcatPatchSets,
    PatchDataset,
)
from wsi_lpd.data.splits import split_train_val
from wsi_lpd.errors import ConfigError, DatasetError
from wsi_lpd.train.training_config import NormalisationStats, TrainingConfig

log = logging.getLogger(__name__)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass
class TrainingData:
    """Datasets and the geometry a checkpoint records (µm/px, patch side in px)."""

    train_set: LabelledPatchSet
    val_set: LabelledPatchSet | None
    classes: ClassList
    mpp: float
    patch_px: int
    normalisation: dict[str, Any]


def normalisation_of(config: TrainingConfig) -> dict[str, Any]:
    """``data.normalisation`` as {"mean", "std"} (RGB in [0, 1])."""
    value = config.data.normalisation
    if isinstance(value, NormalisationStats):
        return value.model_dump()
    return {k: list(v) for k, v in (LPD_NORMALISATION if value == "lpd" else IMAGENET).items()}


def dataset_labels(dataset: LabelledPatchSet) -> np.ndarray:
    """(N, C) int8 three-state labels of a training set: 1 positive, 0 negative, −1 unknown."""
    if dataset.labels is None:
        raise DatasetError(f"{type(dataset).__name__}: training set has no .labels (N×C) array")
    labels = np.asarray(dataset.labels).astype(np.int8)
    if dataset.known is not None:
        labels = np.where(np.asarray(dataset.known) > 0, labels, -1).astype(np.int8)
    return labels


def build_training_data(
    config: TrainingConfig,
    *,
    patches: Sequence[Path] | None = None,
    val_patches: Path | None = None,
    bcss_dir: Path | None = None,
    layout: str = "bcss",
    dataset_mpp: float | None = None,
) -> TrainingData:
    """Open the training (and validation) data named on the command line."""
    s = config.train
    norm = normalisation_of(config)
    augment = Augment.from_dict(s.augment, seed=s.seed)
    if bool(patches) == bool(bcss_dir):
        raise ConfigError("train: give either --patches STORE… or --bcss-dir DIR")
    if bcss_dir is not None:
        if dataset_mpp is None:
            raise ConfigError(
                "train: --dataset-mpp is needed with --bcss-dir (µm/px of the patches)"
            )
        folder = BcssWsssDataset(
            bcss_dir, "train", layout=layout, normalisation=norm, augment=augment
        )
        valid = BcssWsssDataset(bcss_dir, "valid", layout=layout, normalisation=norm)
        patch_px = int(folder[0]["image"].shape[-1])
        return TrainingData(folder, valid, folder.classes, dataset_mpp, patch_px, norm)
    assert patches
    whole = _open_stores(patches, norm)
    ref = whole[0]
    val_set: LabelledPatchSet | None = None
    train_idx = [np.arange(len(d)) for d in whole]
    if val_patches is not None:
        val_store = PatchDataset(val_patches, norm)
        if val_store.classes != ref.classes:
            raise ConfigError(f"{val_patches}: classes differ from {patches[0]}")
        val_set = val_store
    elif s.val_fraction > 0:
        train_idx, val_parts = _split(whole, s.val_fraction, s.seed)
        n_val = sum(len(v) for v in val_parts)
        if n_val:
            val_set = _concat(
                [
                    PatchDataset(p, norm, indices=v, slide_offset=d.slide_offset)
                    for p, d, v in zip(patches, whole, val_parts, strict=True)
                    if len(v)
                ]
            )
        log.info("validation split: %d of %d patches held out", n_val, sum(len(d) for d in whole))
    train_set = _concat(
        [
            PatchDataset(p, norm, augment, indices=t, slide_offset=d.slide_offset)
            for p, d, t in zip(patches, whole, train_idx, strict=True)
            if len(t)
        ]
    )
    return TrainingData(train_set, val_set, ref.classes, ref.mpp, ref.patch_px, norm)


def _open_stores(patches: Sequence[Path], norm: Mapping[str, Any]) -> list[PatchDataset]:
    sets: list[PatchDataset] = []
    offset = 0
    for path in patches:
        d = PatchDataset(path, norm, slide_offset=offset)
        if sets and (
            d.classes != sets[0].classes
            or d.patch_px != sets[0].patch_px
            or not np.isclose(d.mpp, sets[0].mpp)
        ):
            raise ConfigError(f"{path}: classes, mpp or patch size differ from {patches[0]}")
        if len(d) == 0:
            raise DatasetError(f"{path}: the patch store holds no patch")
        sets.append(d)
        offset += len(d.slides)
    return sets


def _split(
    sets: Sequence[PatchDataset], val_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-store (train, validation) local indices of one split over all stores."""
    slide_index = np.concatenate([d.slide_index for d in sets])
    coords = np.concatenate([d.coords for d in sets])
    sides = np.concatenate([d.patch_level0_px for d in sets])
    side = float(np.nanmax(sides)) if np.isfinite(sides).any() else float(sets[0].patch_px)
    train, val = split_train_val(slide_index, coords, max(1, round(side)), val_fraction, seed)
    starts = np.cumsum([0] + [len(d) for d in sets])
    out_t, out_v = [], []
    for k in range(len(sets)):
        lo, hi = starts[k], starts[k + 1]
        out_t.append(train[(train >= lo) & (train < hi)] - lo)
        out_v.append(val[(val >= lo) & (val < hi)] - lo)
    return out_t, out_v


def _concat(sets: list[PatchDataset]) -> LabelledPatchSet:
    if not sets:
        raise DatasetError("train: no training patch is left after the validation split")
    return sets[0] if len(sets) == 1 else ConcatPatchSets(sets)
