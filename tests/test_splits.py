"""Train/validation splits: whole slides held out, or spatial blocks with a one-patch gap; the
validation share never above MAX_SHARE × val_fraction."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lpd.data.splits import MAX_SHARE, split_train_val

P = 100  # patch side, level-0 px


def _grid(nx: int, ny: int, stride: int = P) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx) * stride, np.arange(ny) * stride)
    return np.stack([xs.ravel(), ys.ravel()], axis=1) + 5000


def _gap_ok(
    coords: np.ndarray, slide_index: np.ndarray, train: np.ndarray, val: np.ndarray
) -> bool:
    """Every training box is ≥ one patch side from every validation box of its slide."""
    for s in np.unique(slide_index[val]):
        t, v = train[slide_index[train] == s], val[slide_index[val] == s]
        if t.size and v.size:
            d = np.abs(coords[t][:, None, :] - coords[v][None, :, :]).max(axis=2)
            if int(d.min()) - P < P:
                return False
    return True


def test_multi_slide_holds_out_whole_slides_when_within_the_share() -> None:
    sizes = [40, 30, 20, 10, 50]
    slide_index = np.repeat(np.arange(5), sizes)
    coords = np.concatenate([_grid(s, 1) for s in sizes])
    n = slide_index.size
    for seed in range(6):
        split = split_train_val(slide_index, coords, P, 0.2, seed)
        train, val = split.train, split.val
        assert np.intersect1d(train, val).size == 0
        assert 0 < val.size <= MAX_SHARE * 0.2 * n
        if split.mode == "slides":
            assert train.size + val.size == n  # nothing dropped across slides
            assert not set(slide_index[val]) & set(slide_index[train])
        else:
            assert split.mode == "blocks" and _gap_ok(coords, slide_index, train, val)
            assert set(slide_index[train]) == set(range(5))
    a = split_train_val(slide_index, coords, P, 0.2, 3)
    b = split_train_val(slide_index, coords, P, 0.2, 3)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    # many slides of one size: whole slides fit the share
    many = np.repeat(np.arange(10), 8)
    split = split_train_val(many, np.concatenate([_grid(8, 1)] * 10), P, 0.1, 0)
    assert split.mode == "slides" and split.val.size == 8 and split.n_gap == 0


def test_demo_like_store_keeps_every_slide_in_training() -> None:
    """Three slides of 24–40 dense patches (the demo's: one slide would be a third of all
    labels): validation ≤ 1.5 × val_fraction, blocks inside the slides, every slide trains, the
    gap holds, and most patches train."""
    rng = np.random.default_rng(0)
    parts, index = [], []
    for s, (nx, ny) in enumerate([(8, 5), (6, 5), (6, 4)]):
        grid = _grid(nx, ny)
        keep = rng.random(len(grid)) > 0.15  # holes, as annotations leave
        parts.append(grid[keep])
        index.append(np.full(keep.sum(), s))
    coords, slide_index = np.concatenate(parts), np.concatenate(index)
    n = slide_index.size
    for val_fraction in (0.1, 0.15):
        for seed in (0, 42):
            split = split_train_val(slide_index, coords, P, val_fraction, seed)
            assert split.mode == "blocks"  # the smallest slide is > 1.5 × 0.15 of the patches
            assert 0 < split.val.size <= MAX_SHARE * val_fraction * n
            assert set(slide_index[split.train]) == {0, 1, 2}
            assert np.intersect1d(split.train, split.val).size == 0
            assert _gap_ok(coords, slide_index, split.train, split.val)
            assert split.train.size + split.val.size + split.n_gap == n
            assert split.train.size >= 0.6 * n  # whole-slide hold-out would train on ≤ 2/3


@pytest.mark.parametrize("stride", [P, P // 2])
def test_single_slide_blocks_keep_a_one_patch_gap(stride: int) -> None:
    coords = _grid(30, 24, stride)
    slide_index = np.zeros(len(coords), dtype=np.int64)
    split = split_train_val(slide_index, coords, P, 0.2, seed=1)
    train, val = split.train, split.val
    assert val.size > 0 and train.size > 0
    assert np.intersect1d(train, val).size == 0
    assert 0.08 <= val.size / len(coords) <= MAX_SHARE * 0.2
    # gap: the boxes [x, x+P) of every training and validation patch are ≥ P apart (Chebyshev)
    d = np.abs(coords[train][:, None, :] - coords[val][None, :, :]).max(axis=2)
    assert int(d.min()) - P >= P
    # only gap patches are dropped, and not most of the slide
    dropped = len(coords) - train.size - val.size
    assert 0 < dropped == split.n_gap < len(coords) // 4  # blocks at the edges first
    again = split_train_val(slide_index, coords, P, 0.2, seed=1)
    assert np.array_equal(again.train, train) and np.array_equal(again.val, val)


def test_degenerate_inputs() -> None:
    one = np.zeros(3, dtype=np.int64)
    split = split_train_val(one, _grid(3, 1), P, 0.0, 0)
    assert split.train.tolist() == [0, 1, 2] and split.val.size == 0 and split.mode == "none"
    # two touching patches: no split can keep a gap; three in a row: the ends, the middle dropped
    split = split_train_val(one[:2], _grid(2, 1), P, 0.3, 0)
    assert split.train.size == 2 and split.val.size == 0
    split = split_train_val(one, _grid(3, 1), P, 0.3, 0)
    assert sorted([*split.train, *split.val]) == [0, 2] and split.val.size == 1
    # one patch in 3 is above 1.5 × 0.1: no validation rather than too much
    split = split_train_val(one, _grid(3, 1), P, 0.1, 0)
    assert split.val.size == 0 and split.train.size == 3
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(one, _grid(3, 1), P, 1.0, 0)
