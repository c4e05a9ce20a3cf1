"""Segmentation metrics: confusion matrix, per-class IoU and Dice, mIoU, mDice, FwIoU.

Class indices follow ``ClassList.all``: foreground 0..C-1, background C. The confusion matrix is
``(C+1)×(C+1)``, rows = ground truth, columns = prediction.

Protocols (docs/lpd-method.md §2.3):

- ``lpd`` (LPD/PBIP code): every pixel counts, background included (tissue predicted on
  ground-truth background is a false positive). mIoU and mDice average the C foreground classes;
  FwIoU sums IoU over all C+1 classes weighted by ground-truth pixel frequency. Background IoU/Dice
  are reported too.
- ``wsss-tissue`` (WSSS-Tissue/HisynSeg): ground-truth background pixels are dropped entirely;
  means and FwIoU are over the C foreground classes. A tissue pixel predicted as background is a
  false negative of its true class (it is nobody's false positive).

A class absent from both ground truth and prediction (TP + FP + FN = 0) gets IoU and Dice ``None``
and is left out of the means (FwIoU is unaffected: its weight is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wsi_lpd.errors import DatasetError

PROTOCOLS = ("lpd", "wsss-tissue")
_CHUNK_PIXELS = 1 << 22


def confusion_matrix(
    truth: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_index: int | None = None,
    out: np.ndarray | None = None,
    chunk_pixels: int = _CHUNK_PIXELS,
) -> np.ndarray:
    """``num_classes × num_classes`` int64 counts (rows truth, columns prediction).

    Pixels whose truth equals ``ignore_index`` are skipped. Arrays are processed in flat chunks of
    ``chunk_pixels`` so temporaries stay small. With ``out`` the counts are added in place
    (accumulate over slides or batches) and ``out`` is returned.
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} != prediction shape {pred.shape}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64) if out is None else out
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"out has shape {cm.shape}, expected {(num_classes, num_classes)}")
    t_flat, p_flat = truth.reshape(-1), pred.reshape(-1)
    for start in range(0, t_flat.size, chunk_pixels):
        t = t_flat[start : start + chunk_pixels].astype(np.int64)
        p = p_flat[start : start + chunk_pixels].astype(np.int64)
        if ignore_index is not None:
            keep = t != ignore_index
            t, p = t[keep], p[keep]
        if t.size == 0:
            continue
        for what, values in (("ground truth", t), ("prediction", p)):
            bad = (values < 0) | (values >= num_classes)
            if bad.any():
                raise DatasetError(
                    f"{what} holds class index {int(values[bad][0])}, outside 0..{num_classes - 1}"
                )
        counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
        cm += counts.reshape(num_classes, num_classes)
    return cm


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def segmentation_scores(
    cm: np.ndarray, protocol: str = "lpd", class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Scores of a ``(C+1)×(C+1)`` confusion matrix (background last) under ``protocol``.

    Returns ``{"protocol", "classes", "per_class": {name: {"iou", "dice", "gt_pixels",
    "pred_pixels"}}, "miou", "mdice", "fwiou", "pixel_accuracy", "pixels"}``; IoU/Dice values are
    fractions 0-1 or ``None`` (class absent from truth and prediction). ``pixels`` is the number of
    pixels the protocol evaluates.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square (C+1)x(C+1), got {cm.shape}")
    n_all = cm.shape[0]
    n_fg = n_all - 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_all)]
    if len(names) != n_all:
        raise ValueError(f"{len(names)} class names for a {n_all}x{n_all} confusion matrix")
    if protocol == "lpd":
        rows = cm
        evaluated = list(range(n_all))
    else:
        rows = cm[:n_fg, :]
        evaluated = list(range(n_fg))
    tp = np.array([rows[c, c] for c in evaluated], dtype=np.int64)
    gt = rows.sum(axis=1)[evaluated]
    pred = rows.sum(axis=0)[evaluated]
    fp, fn = pred - tp, gt - tp
    total = int(rows.sum())
    per_class: dict[str, dict[str, Any]] = {}
    ious: list[float | None] = []
    dices: list[float | None] = []
    for k, c in enumerate(evaluated):
        iou = _ratio(tp[k], tp[k] + fp[k] + fn[k])
        dice = _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k])
        ious.append(iou)
        dices.append(dice)
        per_class[names[c]] = {
            "iou": iou,
            "dice": dice,
            "gt_pixels": int(gt[k]),
            "pred_pixels": int(pred[k]),
        }
    fw_den = int(gt.sum())
    fwiou = (
        None
        if fw_den == 0
        else float(sum(g / fw_den * (i or 0.0) for g, i in zip(gt, ious, strict=True)))
    )
    return {
        "protocol": protocol,
        "classes": [names[c] for c in evaluated],
        "per_class": per_class,
        "miou": _mean(ious[:n_fg]),
        "mdice": _mean(dices[:n_fg]),
        "fwiou": fwiou,
        "pixel_accuracy": _ratio(int(tp.sum()), total),
        "pixels": total,
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}"


def format_table(scores: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of per-class IoU/Dice (percent) and the means of one score dict."""
    lines = [f"### {title}", ""] if title else []
    pixels = max(1, int(scores["pixels"]))
    lines += [
        f"protocol `{scores['protocol']}`, {scores['pixels']} px evaluated",
        "",
        "| class | IoU % | Dice % | GT share % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s in scores["per_class"].items():
        share = 100.0 * s["gt_pixels"] / pixels
        lines.append(f"| {name} | {_fmt(s['iou'])} | {_fmt(s['dice'])} | {share:.2f} |")
    lines += [
        f"| **mIoU** | {_fmt(scores['miou'])} | | |",
        f"| **mDice** | | {_fmt(scores['mdice'])} | |",
        f"| **FwIoU** | {_fmt(scores['fwiou'])} | | |",
        f"| **pixel accuracy** | {_fmt(scores['pixel_accuracy'])} | | |",
    ]
    return "\n".join(lines) + "\n"


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AP = Σ_n (R_n − R_{n−1})·P_n over the distinct score thresholds (tied scores form one step);
    ``None`` without a positive."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth).reshape(-1).astype(bool)
    n_pos = int(truth.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each threshold
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def label_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image-level scores of predicted class probabilities against three-state labels.

    ``probs`` (N, C) in [0, 1]; ``labels`` (N, C) 1 positive, 0 negative, −1 unknown. Per class,
    over its known entries only: F1 of ``probs > 0.5`` and average precision. Classes with no
    known positive are skipped. Returns ``{"f1", "map", "classes"}``: macro means (NaN when no
    class is scored) and the number of classes scored.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be (N, C)")
    f1s: list[float] = []
    aps: list[float] = []
    for c in range(labels.shape[1]):
        known = labels[:, c] >= 0
        truth = labels[known, c] == 1
        if not truth.any():
            continue
        pred = probs[known, c] > 0.5
        tp = int((pred & truth).sum())
        fp = int((pred & ~truth).sum())
        fn = int((~pred & truth).sum())
        f1s.append(2.0 * tp / (2 * tp + fp + fn))
        ap = average_precision(probs[known, c], truth)
        assert ap is not None
        aps.append(ap)
    nan = float("nan")
    return {
        "f1": float(np.mean(f1s)) if f1s else nan,
        "map": float(np.mean(aps)) if aps else nan,
        "classes": float(len(f1s)),
    }
