"""Train/validation splits: whole slides held out, or spatial blocks with a one-patch gap."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lpd.data.splits import split_train_val

P = 100  # patch side, level-0 px


def _grid(nx: int, ny: int, stride: int = P) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx) * stride, np.arange(ny) * stride)
    return np.stack([xs.ravel(), ys.ravel()], axis=1) + 5000


def test_multi_slide_holds_out_whole_slides() -> None:
    sizes = [40, 30, 20, 10, 50]
    slide_index = np.repeat(np.arange(5), sizes)
    coords = np.concatenate([_grid(s, 1) for s in sizes])
    n = slide_index.size
    for seed in range(6):
        train, val = split_train_val(slide_index, coords, P, 0.2, seed)
        assert np.intersect1d(train, val).size == 0
        assert train.size + val.size == n  # nothing dropped across slides
        val_slides, train_slides = set(slide_index[val]), set(slide_index[train])
        assert val_slides and train_slides and not val_slides & train_slides
        assert abs(val.size / n - 0.2) <= 0.15
    a = split_train_val(slide_index, coords, P, 0.2, 3)
    b = split_train_val(slide_index, coords, P, 0.2, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # two slides and a large fraction: never all slides
    two = np.repeat([0, 1], 5)
    train, val = split_train_val(two, _grid(10, 1), P, 0.9, 0)
    assert train.size == 5 and val.size == 5


@pytest.mark.parametrize("stride", [P, P // 2])
def test_single_slide_blocks_keep_a_one_patch_gap(stride: int) -> None:
    coords = _grid(30, 24, stride)
    slide_index = np.zeros(len(coords), dtype=np.int64)
    train, val = split_train_val(slide_index, coords, P, 0.2, seed=1)
    assert val.size > 0 and train.size > 0
    assert np.intersect1d(train, val).size == 0
    assert 0.08 <= val.size / len(coords) <= 0.35
    # gap: the boxes [x, x+P) of every training and validation patch are ≥ P apart (Chebyshev)
    d = np.abs(coords[train][:, None, :] - coords[val][None, :, :]).max(axis=2)
    assert int(d.min()) - P >= P
    # only gap patches are dropped, and not most of the slide
    dropped = len(coords) - train.size - val.size
    assert 0 < dropped < len(coords) // 2
    again = split_train_val(slide_index, coords, P, 0.2, seed=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = split_train_val(slide_index, coords, P, 0.2, seed=2)
    assert not np.array_equal(other[1], val)


def test_degenerate_inputs() -> None:
    one = np.zeros(3, dtype=np.int64)
    train, val = split_train_val(one, _grid(3, 1), P, 0.0, 0)
    assert train.tolist() == [0, 1, 2] and val.size == 0
    # two touching patches: no split can keep a gap; three in a row: the ends, the middle dropped
    train, val = split_train_val(one[:2], _grid(2, 1), P, 0.3, 0)
    assert train.size == 2 and val.size == 0
    train, val = split_train_val(one, _grid(3, 1), P, 0.3, 0)
    assert sorted([*train, *val]) == [0, 2]
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(one, _grid(3, 1), P, 1.0, 0)
