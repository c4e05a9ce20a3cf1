"""Evaluation against ground truth: confusion matrices of mosaics (vs label masks or QuPath
annotations) and of a model on labelled patches. The scores themselves (IoU, Dice, FwIoU, the two
protocols) are :mod:`wsi_lpd.scores`, shared with training's validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wsi_lpd.errors import AnnotationError, DatasetError
from wsi_lpd.scores import confusion_matrix

IGNORE = 255
"""Ground-truth value of pixels that are not evaluated (e.g. outside every GeoJSON annotation)."""

_BLOCK_PIXELS = 1 << 24


def class_lookup(source: Sequence[str], target: Sequence[str], where: str) -> np.ndarray:
    """uint8 table mapping class indices of ``source`` names onto ``target`` names.

    Both lists must hold the same names (order may differ), else ``AnnotationError`` naming
    ``where``.
    """
    if sorted(source) != sorted(target):
        raise AnnotationError(
            f"{where}: classes {list(source)} do not match the prediction's {list(target)}"
        )
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for i, name in enumerate(source):
        lut[i] = list(target).index(name)
    return lut


def mosaic_confusion_vs_mask(
    labels: Any,
    mosaic_level0_per_px: float,
    truth: np.ndarray,
    truth_level0_per_px: float,
    num_classes: int,
    background_index: int,
) -> np.ndarray:
    """Confusion of a mosaic label image against a ground-truth mask, on the mask's grid.

    ``labels``: (Y, X) class indices (a lazy zarr array is read in row slabs of bounded size);
    each ground-truth pixel takes the mosaic pixel under its centre (nearest), pixels outside the
    mosaic count as predicted background. Scales are level-0 px per pixel.
    """
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    mh, mw = labels.shape
    th, tw = truth.shape
    cols = np.floor((np.arange(tw) + 0.5) * truth_level0_per_px / mosaic_level0_per_px)
    cols = cols.astype(np.int64)
    col_ok = (cols >= 0) & (cols < mw)
    c0, c1 = (int(cols[col_ok].min()), int(cols[col_ok].max()) + 1) if col_ok.any() else (0, 0)
    mosaic_rows_per_truth_row = max(1.0, truth_level0_per_px / mosaic_level0_per_px)
    rows_per_block = max(1, int(_BLOCK_PIXELS / max(1, c1 - c0) / mosaic_rows_per_truth_row))
    for r0 in range(0, th, rows_per_block):
        r1 = min(th, r0 + rows_per_block)
        rows = np.floor((np.arange(r0, r1) + 0.5) * truth_level0_per_px / mosaic_level0_per_px)
        rows = rows.astype(np.int64)
        row_ok = (rows >= 0) & (rows < mh)
        pred = np.full((r1 - r0, tw), background_index, dtype=np.uint8)
        if row_ok.any() and col_ok.any():
            s0, s1 = int(rows[row_ok].min()), int(rows[row_ok].max()) + 1
            slab = np.asarray(labels[s0:s1, c0:c1])
            pred[np.ix_(row_ok, col_ok)] = slab[np.ix_(rows[row_ok] - s0, cols[col_ok] - c0)]
        confusion_matrix(truth[r0:r1], pred, num_classes, ignore_index=IGNORE, out=cm)
    return cm


def mosaic_confusion_vs_annotations(
    labels: Any,
    mosaic_level0_per_px: float,
    class_geometries: Sequence[Any],
    num_classes: int,
    rows_per_block: int = 512,
) -> np.ndarray:
    """Confusion of a mosaic label image against polygon annotations rasterised on its grid.

    ``class_geometries[k]``: level-0 geometry (or None) of class k (index into ``ClassList.all``);
    pixels covered by no annotation are not evaluated; where classes overlap the later one wins.
    Only row blocks that meet an annotation are read.
    """
    import shapely
    from shapely import affinity

    from wsi_lpd.slide.geometry import rasterize

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    present = [(k, g) for k, g in enumerate(class_geometries) if g is not None and not g.is_empty]
    if not present:
        return cm
    mh, mw = labels.shape
    s = float(mosaic_level0_per_px)
    union = shapely.union_all([g for _, g in present])
    _, miny, _, maxy = union.bounds
    first = max(0, int(miny // s) // rows_per_block * rows_per_block)
    last = min(mh, int(np.ceil(maxy / s)))
    for r0 in range(first, last, rows_per_block):
        r1 = min(mh, r0 + rows_per_block)
        truth = np.full((r1 - r0, mw), IGNORE, dtype=np.uint8)
        for k, geom in present:
            local = affinity.translate(geom, yoff=-r0 * s)
            truth[rasterize(local, (r1 - r0, mw), s)] = k
        if (truth == IGNORE).all():
            continue
        pred = np.asarray(labels[r0:r1, :])
        confusion_matrix(truth, pred, num_classes, ignore_index=IGNORE, out=cm)
    return cm


def model_confusion(
    model: Any,
    dataset: Any,
    num_classes: int,
    label_mode: str = "given",
    batch_size: int = 16,
    device: str = "cpu",
    groups: Sequence[int] | np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Pooled and per-group confusion matrices of ``model.predict`` over a dataset with masks.

    Items are ``dict(image, labels, mask)`` (``wsi_lpd.data.datasets``). ``label_mode`` ``given``
    passes the items' labels as ``image_labels``; ``predicted`` passes None (the model decides).
    Predictions are bilinearly upsampled to the mask size before the argmax. ``groups[i]`` (e.g.
    slide index of item i) splits the counts; without it the per-group dict is empty.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from wsi_lpd.progress import progress as progress_bar

    if label_mode not in ("given", "predicted"):
        raise ValueError(f"label_mode must be 'given' or 'predicted', got {label_mode!r}")
    pooled = np.zeros((num_classes, num_classes), dtype=np.int64)
    per_group: dict[int, np.ndarray] = {}
    group_arr = None if groups is None else np.asarray(groups)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    start = 0
    with torch.inference_mode():
        for batch in progress_bar(loader, desc="evaluate", unit="batch", disable=not progress):
            if "mask" not in batch:
                raise DatasetError("the dataset has no ground-truth masks to evaluate against")
            images = batch["image"].to(device)
            given = batch["labels"].to(device) if label_mode == "given" else None
            probs = model.predict(images, image_labels=given)
            masks = batch["mask"].numpy()
            if tuple(probs.shape[-2:]) != masks.shape[-2:]:
                probs = F.interpolate(
                    probs, size=masks.shape[-2:], mode="bilinear", align_corners=False
                )
            pred = probs.argmax(dim=1).cpu().numpy()
            n = pred.shape[0]
            if group_arr is None:
                confusion_matrix(masks, pred, num_classes, out=pooled)
            else:
                for g in np.unique(group_arr[start : start + n]):
                    sel = group_arr[start : start + n] == g
                    cm = per_group.setdefault(
                        int(g), np.zeros((num_classes, num_classes), dtype=np.int64)
                    )
                    part = confusion_matrix(masks[sel], pred[sel], num_classes)
                    cm += part
                    pooled += part
            start += n
    return pooled, per_group


# ----------------------------------------------------------------------------------------------
# Image-level (patch label) scores
