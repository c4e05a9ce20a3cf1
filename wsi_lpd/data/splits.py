"""Train/validation split of a patch store that does not leak between neighbouring patches.

With two or more slides whole slides are held out; with one slide, square blocks of patches are
held out and training patches closer than one patch to a validation patch are dropped, so no
validation patch overlaps or touches a training patch.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

BLOCK_PATCHES = 4
"""Side of a spatial validation block, in patches (single-slide split)."""


def split_train_val(
    slide_index: np.ndarray,
    coords_px: np.ndarray,
    patch_px: int,
    val_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sorted int64 index arrays into the N patches; deterministic per seed.

    ``slide_index`` (N,) slide of each patch; ``coords_px`` (N, 2) patch top-left (x, y) and
    ``patch_px`` the patch side, both in the same pixel units (level-0 px). ``val_fraction`` in
    [0, 1): the share of patches to hold out (approximately: whole slides or blocks). With ≥ 2
    slides, whole slides are held out, never all of them. With one slide, blocks of
    ``BLOCK_PATCHES``² patches are held out and every training patch keeps a gap of at least one
    patch side to every validation patch (training patches in the gap are dropped). The validation
    set is empty when ``val_fraction`` is 0 or the slide is too small for a gap.
    """
    slide_index = np.asarray(slide_index).reshape(-1)
    coords = np.asarray(coords_px, dtype=np.float64).reshape(-1, 2)
    n = slide_index.size
    if coords.shape[0] != n:
        raise ValueError(f"split: {n} slide indices but {coords.shape[0]} coordinates")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split: val_fraction must be in [0, 1), got {val_fraction}")
    if patch_px <= 0:
        raise ValueError(f"split: patch_px must be > 0, got {patch_px}")
    everything = np.arange(n, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if n == 0 or val_fraction == 0.0:
        return everything, none
    rng = np.random.default_rng(seed)
    slides, counts = np.unique(slide_index, return_counts=True)
    if slides.size >= 2:
        held = _pick_groups(slides, counts, val_fraction * n, rng)
        val = np.isin(slide_index, held)
        log.info("validation split: %d of %d slides held out", held.size, slides.size)
        return everything[~val], everything[val]
    return _block_split(coords, float(patch_px), val_fraction, rng)


def _pick_groups(
    groups: np.ndarray, counts: np.ndarray, target: float, rng: np.random.Generator
) -> np.ndarray:
    """Groups in random order, each taken when it brings the held-out count closer to ``target``;
    at least one and never all."""
    order = rng.permutation(groups.size)
    chosen: list[int] = []
    total = 0
    for i in order:
        if len(chosen) == groups.size - 1:
            break
        if not chosen or abs(total + counts[i] - target) < abs(total - target):
            chosen.append(int(i))
            total += int(counts[i])
    return groups[np.asarray(chosen, dtype=np.int64)]


def _block_split(
    coords: np.ndarray, patch: float, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = coords.shape[0]
    everything = np.arange(n, dtype=np.int64)
    origin = coords.min(axis=0)
    for side in (BLOCK_PATCHES, 2, 1):
        cells = np.floor((coords - origin) / (side * patch)).astype(np.int64)
        blocks, block_of, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
        if blocks.shape[0] < 2:
            continue
        held = _pick_groups(np.arange(blocks.shape[0]), counts, val_fraction * n, rng)
        val = np.isin(block_of.reshape(-1), held)
        train = _outside_gap(coords, val, patch)
        if train.any():
            log.info(
                "validation split: %d of %d blocks of %d patches held out, %d training patches "
                "dropped in the gap",
                held.size,
                blocks.shape[0],
                side,
                int((~val & ~train).sum()),
            )
            return everything[train], everything[val]
    log.warning("validation split: the slide is too small for a spatial split; no validation")
    return everything, np.zeros(0, dtype=np.int64)


def _outside_gap(coords: np.ndarray, val: np.ndarray, patch: float) -> np.ndarray:
    """Non-validation patches whose box is at least one patch side away from every validation box
    (Chebyshev distance of top-left corners ≥ 2 patch sides)."""
    keep = ~val
    if not val.any() or not keep.any():
        return keep
    tree = cKDTree(coords[val])
    dist, _ = tree.query(coords[keep], k=1, p=np.inf)
    keep[np.flatnonzero(keep)[dist < 2.0 * patch]] = False
    return keep
