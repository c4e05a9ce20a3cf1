"""Train/validation split of a patch store that does not leak between neighbouring patches and
uses every label.

The validation share stays at most ``MAX_SHARE × val_fraction`` of the patches. Whole slides are
held out only when that holds (many slides of similar size); otherwise square blocks of patches
are held out inside each slide and training patches closer than one patch to a validation patch
are dropped (the gap), so no validation patch overlaps or touches a training patch and every
annotated slide still contributes training patches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

MAX_SHARE = 1.5
"""The validation share may exceed ``val_fraction`` by this factor, never more."""
BLOCK_SIDES = (4, 2, 1)
"""Sides of the spatial validation blocks tried, in patches (the split dropping fewest wins)."""


@dataclass(frozen=True)
class Split:
    """Sorted int64 index arrays into the N patches, and how they were chosen.

    ``mode``: ``slides`` (whole slides held out), ``blocks`` (spatial blocks of ``block_patches``
    patches per side inside the slides) or ``none`` (no validation). ``n_gap``: patches in the
    one-patch gap around validation blocks, used for neither.
    """

    train: np.ndarray
    val: np.ndarray
    mode: str
    block_patches: int = 0
    n_gap: int = 0


def split_train_val(
    slide_index: np.ndarray,
    coords_px: np.ndarray,
    patch_px: int,
    val_fraction: float,
    seed: int,
) -> Split:
    """Split N patches into training and validation; deterministic per seed.

    ``slide_index`` (N,) slide of each patch; ``coords_px`` (N, 2) patch top-left (x, y) and
    ``patch_px`` the patch side, both in the same pixel units (level-0 px). ``val_fraction`` in
    [0, 1): the share of patches to hold out, kept ≤ ``MAX_SHARE × val_fraction``. With ≥ 2
    slides whole slides are held out when some choice of slides meets that bound; otherwise (and
    with one slide) blocks of patches are held out inside every slide with a gap of at least one
    patch side to every training patch of the same slide. No validation when ``val_fraction`` is
    0 or no block fits the bound.
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
    if n == 0 or val_fraction == 0.0:
        return Split(everything, np.zeros(0, dtype=np.int64), "none")
    rng = np.random.default_rng(seed)
    target, cap = val_fraction * n, MAX_SHARE * val_fraction * n
    slides, counts = np.unique(slide_index, return_counts=True)
    if slides.size >= 2:
        held = _pick_slides(slides, counts, target, cap, rng)
        n_held = int(counts[np.isin(slides, held)].sum())
        if held.size:
            val = np.isin(slide_index, held)
            log.info(
                "validation split: %d of %d slides held out (%d of %d patches)",
                held.size,
                slides.size,
                n_held,
                n,
            )
            return Split(everything[~val], everything[val], "slides")
        log.info(
            "validation split: no whole slide fits %.3g × val_fraction (%d of %d patches); "
            "spatial blocks inside each slide instead",
            MAX_SHARE,
            int(cap),
            n,
        )
    return _block_split(slide_index, coords, float(patch_px), val_fraction, cap, rng)


def _pick_slides(
    slides: np.ndarray, counts: np.ndarray, target: float, cap: float, rng: np.random.Generator
) -> np.ndarray:
    """Slides in random order, each taken when it brings the held-out count closer to ``target``
    without passing ``cap``; never all (may be none)."""
    chosen: list[int] = []
    total = 0
    for i in rng.permutation(slides.size):
        if len(chosen) == slides.size - 1:
            break
        new = total + int(counts[i])
        if new <= cap and abs(new - target) < abs(total - target):
            chosen.append(int(i))
            total = new
    return slides[np.asarray(chosen, dtype=np.int64)]


@dataclass
class _Block:
    slide: int
    members: np.ndarray  # patch indices (global)
    gap: np.ndarray  # patch indices of the same slide within one patch of the block, not in it


def _block_split(
    slide_index: np.ndarray,
    coords: np.ndarray,
    patch: float,
    val_fraction: float,
    cap: float,
    rng: np.random.Generator,
) -> Split:
    """Blocks held out per slide for every block side; the split that drops fewest patches to
    the gap wins (ties: the larger blocks)."""
    n = slide_index.size
    everything = np.arange(n, dtype=np.int64)
    best: Split | None = None
    for side in BLOCK_SIDES:
        blocks = _blocks(slide_index, coords, patch, side)
        val, excluded = _choose_blocks(blocks, slide_index, val_fraction, cap, rng)
        if not val.any():
            continue
        train = ~excluded
        split = Split(
            everything[train], everything[val], "blocks", side, int(n - val.sum() - train.sum())
        )
        if best is None or split.n_gap < best.n_gap:
            best = split
    if best is None:
        log.warning(
            "validation split: the slides are too small for a spatial split within %.3g × "
            "val_fraction; no validation",
            MAX_SHARE,
        )
        return Split(everything, np.zeros(0, dtype=np.int64), "none")
    log.info(
        "validation split: blocks of %d×%d patches inside %d slide(s): %d validation, %d training "
        "patches, %d dropped in the one-patch gap",
        best.block_patches,
        best.block_patches,
        np.unique(slide_index[best.val]).size,
        best.val.size,
        best.train.size,
        best.n_gap,
    )
    return best


def _blocks(slide_index: np.ndarray, coords: np.ndarray, patch: float, side: int) -> list[_Block]:
    """Square cells of ``side`` patches per slide (grid from the slide's first patch), each with
    its gap: the slide's other patches whose box is less than one patch side away (Chebyshev
    distance of top-left corners < 2 patch sides)."""
    out: list[_Block] = []
    for s in np.unique(slide_index):
        idx = np.flatnonzero(slide_index == s)
        xy = coords[idx]
        cells = np.floor((xy - xy.min(axis=0)) / (side * patch)).astype(np.int64)
        _, block_of, sizes = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
        members = np.split(np.argsort(block_of.reshape(-1), kind="stable"), np.cumsum(sizes)[:-1])
        radius = 2.0 * patch * (1.0 - 1e-9)  # strictly closer than 2 patch sides
        near = cKDTree(xy).query_ball_point(xy, radius, p=np.inf)
        for local in members:
            around = np.setdiff1d(np.concatenate([np.asarray(near[j], int) for j in local]), local)
            out.append(_Block(int(s), idx[local], idx[around]))
    return out


def _choose_blocks(
    blocks: list[_Block],
    slide_index: np.ndarray,
    val_fraction: float,
    cap: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(validation mask, excluded mask = validation or gap). Blocks are tried cheapest first
    (fewest gap patches per validation patch, random among equals): first per slide towards
    ``val_fraction`` of the slide, then over all slides towards ``val_fraction`` of all patches;
    a block is taken when it brings the count closer to its target, keeps the total ≤ ``cap``
    and leaves its slide at least one training patch."""
    n = slide_index.size
    slides, counts = np.unique(slide_index, return_counts=True)
    size = dict(zip(slides.tolist(), counts.tolist(), strict=True))
    held = dict.fromkeys(size, 0)  # validation patches per slide
    lost = dict.fromkeys(size, 0)  # validation or gap patches per slide
    order = rng.permutation(len(blocks))
    cost = np.array([blocks[i].gap.size / blocks[i].members.size for i in order])
    order = order[np.argsort(cost, kind="stable")]
    val = np.zeros(n, dtype=bool)
    excluded = np.zeros(n, dtype=bool)
    taken = np.zeros(len(blocks), dtype=bool)
    for scope in ("slide", "all"):
        for i in order:
            b = blocks[i]
            if taken[i]:
                continue
            total = sum(held.values())
            now, target = (held[b.slide], size[b.slide]) if scope == "slide" else (total, n)
            target *= val_fraction
            add = int((~val[b.members]).sum())
            if abs(now + add - target) >= abs(now - target) or total + add > cap:
                continue
            touched = np.concatenate([b.members, b.gap])
            newly = int((~excluded[touched]).sum())
            if lost[b.slide] + newly >= size[b.slide]:
                continue  # the slide would keep no training patch
            taken[i] = True
            val[b.members] = True
            excluded[touched] = True
            held[b.slide] += add
            lost[b.slide] += newly
    return val, excluded
