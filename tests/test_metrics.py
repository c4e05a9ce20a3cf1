"""Confusion matrices and the two scoring protocols against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_lpd.errors import DatasetError
from wsi_lpd.evaluate.metrics import IGNORE, mosaic_confusion_vs_mask
from wsi_lpd.scores import confusion_matrix, format_table, segmentation_scores

# Two foreground classes A, B and background BG (index 2).
TRUTH = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PRED = np.array([0, 0, 1, 1, 2, 2, 0, 2])
NAMES = ["A", "B", "BG"]


def test_confusion_matrix_hand_computed() -> None:
    cm = confusion_matrix(TRUTH, PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 0, 2]])


def test_confusion_matrix_chunked_accumulated_and_ignored() -> None:
    whole = confusion_matrix(TRUTH, PRED, 3)
    np.testing.assert_array_equal(confusion_matrix(TRUTH, PRED, 3, chunk_pixels=3), whole)
    acc = np.zeros((3, 3), dtype=np.int64)
    confusion_matrix(TRUTH[:4], PRED[:4], 3, out=acc)
    confusion_matrix(TRUTH[4:].reshape(2, 2), PRED[4:].reshape(2, 2), 3, out=acc)
    np.testing.assert_array_equal(acc, whole)
    truth = TRUTH.copy()
    truth[[0, 5]] = IGNORE
    cm = confusion_matrix(truth, PRED, 3, ignore_index=IGNORE)
    assert cm.sum() == 6
    assert cm[0, 0] == 1 and cm[2, 2] == 1


def test_confusion_matrix_rejects_out_of_range() -> None:
    with pytest.raises(DatasetError, match="ground truth holds class index 7"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(DatasetError, match="prediction"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)


def test_lpd_protocol() -> None:
    s = segmentation_scores(confusion_matrix(TRUTH, PRED, 3), "lpd", NAMES)
    assert s["classes"] == NAMES
    assert s["per_class"]["A"]["iou"] == pytest.approx(0.5)
    assert s["per_class"]["A"]["dice"] == pytest.approx(4 / 6)
    assert s["per_class"]["B"]["iou"] == pytest.approx(1 / 3)
    assert s["per_class"]["B"]["dice"] == pytest.approx(0.5)
    assert s["per_class"]["BG"]["iou"] == pytest.approx(0.5)
    assert s["miou"] == pytest.approx((0.5 + 1 / 3) / 2)  # background not in the mean
    assert s["mdice"] == pytest.approx((4 / 6 + 0.5) / 2)
    assert s["fwiou"] == pytest.approx(3 / 8 * 0.5 + 2 / 8 / 3 + 3 / 8 * 0.5)  # all three
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    assert s["pixels"] == 8


def test_wsss_tissue_protocol_drops_gt_background() -> None:
    s = segmentation_scores(confusion_matrix(TRUTH, PRED, 3), "wsss-tissue", NAMES)
    assert s["classes"] == ["A", "B"]
    assert "BG" not in s["per_class"]
    # A: TP 2, FP 0 (the BG-truth pixel predicted A is dropped), FN 1.
    assert s["per_class"]["A"]["iou"] == pytest.approx(2 / 3)
    assert s["per_class"]["A"]["dice"] == pytest.approx(0.8)
    # B: TP 1, FP 1, FN 1 (predicted background counts against B).
    assert s["per_class"]["B"]["iou"] == pytest.approx(1 / 3)
    assert s["miou"] == pytest.approx(0.5)
    assert s["mdice"] == pytest.approx(0.65)
    assert s["fwiou"] == pytest.approx(3 / 5 * 2 / 3 + 2 / 5 / 3)
    assert s["pixels"] == 5


def test_absent_class_is_null_and_left_out_of_means() -> None:
    truth = np.array([0, 0, 1, 3])
    pred = np.array([0, 0, 1, 3])
    s = segmentation_scores(confusion_matrix(truth, pred, 4), "lpd", ["A", "B", "C", "BG"])
    assert s["per_class"]["C"]["iou"] is None
    assert s["per_class"]["C"]["dice"] is None
    assert s["miou"] == pytest.approx(1.0)
    assert s["fwiou"] == pytest.approx(1.0)
    table = format_table(s, title="toy")
    assert "### toy" in table
    assert "| C | — | — |" in table
    assert "| **mIoU** | 100.00 |" in table


def test_scores_validate_inputs() -> None:
    cm = np.eye(3, dtype=np.int64)
    with pytest.raises(ValueError, match="protocol"):
        segmentation_scores(cm, "voc", NAMES)
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(cm, "lpd", ["A", "B"])


def test_mosaic_vs_mask_nearest_on_truth_grid() -> None:
    # Mosaic at 2 level-0 px per px, truth at 4: truth pixel (i, j) takes mosaic (2i+1, 2j+1).
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:, 4:] = 1  # right half B
    truth = np.zeros((5, 5), dtype=np.uint8)  # last row/column lie outside the mosaic
    truth[:, 2:] = 1
    cm = mosaic_confusion_vs_mask(labels, 2.0, truth, 4.0, 3, background_index=2)
    # Rows 0-3: columns 0-1 → A correct, 2-3 → B correct, column 4 outside → background.
    # Row 4 is outside the mosaic: 2 A pixels and 3 B pixels predicted background.
    assert cm[0, 0] == 8
    assert cm[1, 1] == 8
    assert cm[1, 2] == 4 + 3
    assert cm[0, 2] == 2
    assert cm.sum() == 25


def test_label_scores_hand_computed() -> None:
    from wsi_lpd.scores import average_precision, label_scores

    probs = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.6, 0.3], [0.3, 0.1, 0.9]])
    labels = np.array([[1, 0, -1], [0, 1, -1], [1, -1, -1], [1, 0, -1]])
    scores = label_scores(probs, labels)
    # class 0: TP 2, FP 0, FN 1 -> F1 0.8; AP (1 + 1 + 3/4) / 3
    # class 1 (row 2 unknown, its 0.6 is no false positive): F1 1, AP 1; class 2: no known positive
    assert scores["classes"] == 2
    assert np.isclose(scores["f1"], (0.8 + 1.0) / 2)
    assert np.isclose(scores["map"], ((1 + 1 + 0.75) / 3 + 1.0) / 2)
    # tied scores form one threshold step: precision 1/2 at recall 1
    assert np.isclose(average_precision(np.array([0.5, 0.5]), np.array([1, 0])), 0.5)
    assert average_precision(np.array([0.5]), np.array([0])) is None
    assert np.isnan(label_scores(probs, -np.ones_like(labels))["f1"])
