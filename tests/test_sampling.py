"""Class-balanced sampling weights, BCE pos_weight and untrained classes from three-state labels."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lpd.data.sampling import class_balanced_weights, pos_weight_from_labels, untrained_classes

LABELS = np.array(
    [
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, -1],
        [1, 0, 0],
        [1, 1, -1],
        [0, 1, 0],
        [0, 0, 0],
        [-1, -1, -1],
    ]
)


def test_class_balanced_weights_draw_classes_equally() -> None:
    w = class_balanced_weights(LABELS)
    assert w.shape == (8,) and np.isclose(w.mean(), 1.0)
    pos = LABELS == 1
    # class A has 5 positives, B has 2 (uniform draws: ratio 0.4); balanced: about equal (the
    # shared A+B patch counts for both)
    mass_a, mass_b = w[pos[:, 0]].sum(), w[pos[:, 1]].sum()
    assert 0.75 <= mass_b / mass_a <= 1.0
    single = np.array([[1, 0]] * 9 + [[0, 1]])
    ws = class_balanced_weights(single)
    assert np.isclose(ws[:9].sum(), ws[9])
    # the A+B patch is drawn at the rarer class's rate
    assert np.isclose(w[4], w[5])
    # patches with no positive share one group's weight
    assert np.isclose(w[6], w[7]) and np.isclose(w[6] + w[7], w[5] + w[4])
    # a class without positives does not break anything
    assert np.all(np.isfinite(class_balanced_weights(np.zeros((4, 3), dtype=int))))


def test_pos_weight_from_known_entries() -> None:
    pw = pos_weight_from_labels(LABELS)
    # A: 5 pos, 2 neg -> 0.4; B: 2 pos, 5 neg -> 2.5; C: no positive -> 1
    np.testing.assert_allclose(pw, [0.4, 2.5, 1.0], rtol=1e-6)
    rare = np.array([[1, 0]] + [[0, 0]] * 99)
    assert pos_weight_from_labels(rare)[0] == 10.0
    with pytest.raises(ValueError, match="expected 1, 0 or -1"):
        pos_weight_from_labels(np.array([[2, 0]]))


def test_untrained_classes() -> None:
    names = ["TUM", "STR", "NEC"]
    assert untrained_classes(LABELS, names) == ["NEC"]
    # STR is positive only in a patch that is also TUM-positive -> no single-label STR patch
    single = LABELS[[0, 4, 6, 7]]
    assert untrained_classes(single, names) == ["NEC"]
    assert untrained_classes(single, names, single_label=True) == ["STR", "NEC"]
    assert untrained_classes(LABELS, names, single_label=True) == ["NEC"]
