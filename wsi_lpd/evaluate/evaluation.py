"""Evaluation: mosaics against ground truth (mode A) or a model on patches / BCSS-WSSS (mode B).

Mode A compares each mosaic's label image (class indices, background last) with a label mask
TIFF or a QuPath GeoJSON; the mosaic is read in row bands, one ``dask.delayed`` task each, run by
dask's threaded scheduler on ``workers`` threads (zarr decompression and numpy release the GIL).
Each task reads its own band and returns a small confusion matrix, so at most ``workers`` bands
are in memory: memory is bounded by the band size, never by the slide. Mode B runs a model.
The result is :class:`Evaluation`: pooled and per-slide confusion matrices and their scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import AnnotationError, CheckpointError, ConfigError, DatasetError

log = logging.getLogger(__name__)

MASK_SUFFIXES = (".tif", ".tiff")
GEOJSON_SUFFIXES = (".geojson", ".json", ".gz")
BAND_PIXELS = 1 << 23
"""Mosaic pixels per parallel band (a uint8 label band of 8 MB plus its truth)."""


@dataclass
class Evaluation:
    """Confusion matrices (rows truth, columns prediction; index into ``classes.all``)."""

    classes: ClassList
    pooled: np.ndarray
    per_slide: dict[str, np.ndarray]


def _sum_over_bands(band: Callable[[int], np.ndarray], starts: Sequence[int], workers: int) -> Any:
    """Sum of ``band(r0)`` over ``starts``: one dask task per band, ``workers`` threads
    (dask's synchronous scheduler for one worker)."""
    import dask

    tasks = [dask.delayed(band, pure=True)(r0) for r0 in starts]
    scheduler = "threads" if workers > 1 and len(tasks) > 1 else "sync"
    parts = dask.compute(*tasks, scheduler=scheduler, num_workers=max(1, workers))
    return np.sum(parts, axis=0, dtype=np.int64)


class _RowOffset:
    """Rows ``offset…`` of a 2-D (lazy) array seen as rows ``0…`` (reads stay lazy)."""

    def __init__(self, array: Any, offset: int) -> None:
        self.array, self.offset = array, offset
        self.shape = (max(0, array.shape[0] - offset), array.shape[1])

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        return self.array[rows.start + self.offset : rows.stop + self.offset, cols]


def confusion_vs_mask(
    labels: Any,
    mosaic_level0_per_px: float,
    truth: np.ndarray,
    truth_level0_per_px: float,
    num_classes: int,
    background_index: int,
    workers: int = 1,
) -> np.ndarray:
    """:func:`wsi_lpd.evaluate.metrics.mosaic_confusion_vs_mask` over bands of truth rows in
    parallel.

    Bands start on truth rows whose mosaic row is a whole number (the sampling stays exactly the
    serial one); when the two scales have no small common multiple, one band is used."""
    from wsi_lpd.evaluate.metrics import mosaic_confusion_vs_mask

    ratio = Fraction(truth_level0_per_px / mosaic_level0_per_px).limit_denominator(64)
    exact = math.isclose(float(ratio), truth_level0_per_px / mosaic_level0_per_px, rel_tol=1e-12)
    th, tw = truth.shape
    step = ratio.denominator if exact else th
    rows = max(step, BAND_PIXELS // max(1, tw) // step * step)

    def band(r0: int) -> np.ndarray:
        view = _RowOffset(labels, int(r0 * ratio)) if r0 else labels
        return mosaic_confusion_vs_mask(
            view,
            mosaic_level0_per_px,
            truth[r0 : r0 + rows],
            truth_level0_per_px,
            num_classes,
            background_index,
        )

    if th == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return _sum_over_bands(band, range(0, th, rows), workers)


def confusion_vs_annotations(
    labels: Any,
    mosaic_level0_per_px: float,
    class_geometries: Sequence[Any],
    num_classes: int,
    workers: int = 1,
    rows_per_block: int = 512,
) -> np.ndarray:
    """:func:`wsi_lpd.evaluate.metrics.mosaic_confusion_vs_annotations` over bands of mosaic rows in
    parallel: each band gets the annotations clipped to it (exact: pixels are sampled at their
    centres, band edges lie on pixel edges)."""
    from shapely.geometry import box

    from wsi_lpd.evaluate.metrics import mosaic_confusion_vs_annotations

    mh, mw = labels.shape
    s = float(mosaic_level0_per_px)
    per_band = max(1, BAND_PIXELS // max(1, mw) // rows_per_block) * rows_per_block

    def band(r0: int) -> np.ndarray:
        window = box(0, r0 * s, mw * s, min(mh, r0 + per_band) * s)
        clipped = [None if g is None else g.intersection(window) for g in class_geometries]
        return mosaic_confusion_vs_annotations(labels, s, clipped, num_classes, rows_per_block)

    if mh == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return _sum_over_bands(band, range(0, mh, per_band), workers)


def evaluate_mosaics(preds: Sequence[Path], truths: Sequence[Path], workers: int = 1) -> Evaluation:
    """Mode A: one confusion matrix per (mosaic, truth) pair, summed per slide id."""
    from wsi_lpd.data.patches import class_geometries
    from wsi_lpd.evaluate.metrics import class_lookup
    from wsi_lpd.formats.geojson import qupath_offset_px
    from wsi_lpd.formats.mosaic import open_mosaic

    if len(preds) != len(truths):
        raise ConfigError(
            f"evaluate: {len(preds)} --pred mosaic(s) but {len(truths)} --truth file(s); "
            "they pair up by order"
        )
    if not preds:
        raise ConfigError("evaluate: no --pred mosaic given")
    for truth_path in truths:
        if not Path(truth_path).is_file():
            raise AnnotationError(f"{truth_path}: ground truth file not found")
        if not truth_path.name.lower().endswith(MASK_SUFFIXES + GEOJSON_SUFFIXES):
            raise ConfigError(f"{truth_path}: --truth must be a label mask TIFF or a GeoJSON file")
    classes: ClassList | None = None
    per_slide: dict[str, np.ndarray] = {}
    for pred_path, truth_path in zip(preds, truths, strict=True):
        mosaic = open_mosaic(pred_path)
        if classes is None:
            classes = mosaic.classes
        elif mosaic.classes.names != classes.names:
            raise AnnotationError(
                f"{pred_path}: classes {mosaic.classes.names} differ from the first mosaic's "
                f"{classes.names}"
            )
        n = len(classes.all)
        if truth_path.name.lower().endswith(MASK_SUFFIXES):
            from wsi_lpd.formats.labelmask import read_label_mask

            truth = read_label_mask(truth_path)
            n_truth = len(truth.classes.all)
            if truth.mask.size and int(truth.mask.max()) >= n_truth:
                raise AnnotationError(
                    f"{truth_path}: mask value {int(truth.mask.max())} outside its "
                    f"{n_truth} classes"
                )
            lut = class_lookup(truth.classes.names, classes.names, str(truth_path))
            slide_mpp = float(mosaic.attrs["slide_mpp"])
            cm = confusion_vs_mask(
                mosaic.labels,
                mosaic.level0_per_px,
                lut[truth.mask],
                truth.mpp / slide_mpp,
                n,
                classes.background_index,
                workers,
            )
        else:
            bounds = mosaic.attrs.get("bounds") or (0, 0, 0, 0)
            offset = qupath_offset_px(SimpleNamespace(bounds=bounds))
            geoms = class_geometries(truth_path, classes, offset_px=offset)
            cm = confusion_vs_annotations(mosaic.labels, mosaic.level0_per_px, geoms, n, workers)
        key = mosaic.slide_id
        per_slide[key] = per_slide[key] + cm if key in per_slide else cm
        log.info("%s vs %s: %d px evaluated", pred_path, truth_path, int(cm.sum()))
    assert classes is not None
    pooled = np.sum(list(per_slide.values()), axis=0)
    return Evaluation(classes, pooled, per_slide)


def evaluate_model(
    model_path: Path,
    *,
    patches: Path | None = None,
    bcss_dir: Path | None = None,
    split: str = "test",
    layout: str = "bcss",
    label_mode: str = "given",
    batch_size: int = 16,
    device: str = "cpu",
) -> Evaluation:
    """Mode B: the model on a patch store with masks, or on a BCSS-WSSS split."""
    from wsi_lpd.data.datasets import BcssWsssDataset, PatchDataset
    from wsi_lpd.evaluate.metrics import model_confusion
    from wsi_lpd.networks.checkpoint import load_model

    model, contract = load_model(model_path, device)
    classes = ClassList.from_dict(contract["classes"])
    normalisation = contract["normalisation"]
    groups = None
    group_names: list[str] = []
    if patches is not None:
        dataset: Any = PatchDataset(patches, normalisation=normalisation)
        if dataset.classes.names != classes.names:
            raise CheckpointError(
                f"{model_path}: classes {classes.names} differ from {patches}'s "
                f"{dataset.classes.names}"
            )
        if not dataset.has_masks:
            raise DatasetError(f"{patches}: the patch store has no ground-truth masks")
        if not math.isclose(dataset.mpp, float(contract["mpp"]), rel_tol=0.05):
            log.warning(
                "%s: patches at %.3g µm/px, the model was trained at %.3g µm/px",
                patches,
                dataset.mpp,
                float(contract["mpp"]),
            )
        groups, group_names = dataset.slide_index, dataset.slides
    else:
        dataset = BcssWsssDataset(
            bcss_dir, split=split, classes=classes, layout=layout, normalisation=normalisation
        )
    pooled, per_group = model_confusion(
        model,
        dataset,
        len(classes.all),
        label_mode=label_mode,
        batch_size=batch_size,
        device=device,
        groups=groups,
    )
    per_slide = {group_names[g]: cm for g, cm in sorted(per_group.items())}
    return Evaluation(classes, pooled, per_slide)


def metrics_report(
    evaluation: Evaluation, protocol: str, mode: str, label_mode: str | None
) -> tuple[dict[str, Any], str, str]:
    """(``metrics.json`` payload, ``metrics.md`` text, the pooled table) of an evaluation."""
    from wsi_lpd.scores import format_table, segmentation_scores

    names = evaluation.classes.names
    pooled_scores = segmentation_scores(evaluation.pooled, protocol, names)
    slide_scores = {
        k: segmentation_scores(cm, protocol, names) for k, cm in evaluation.per_slide.items()
    }
    result = {
        "protocol": protocol,
        "mode": mode,
        "label_mode": label_mode,
        "classes": evaluation.classes.to_dict(),
        "pooled": {**pooled_scores, "confusion_matrix": np.asarray(evaluation.pooled).tolist()},
        "per_slide": {
            k: {**s, "confusion_matrix": evaluation.per_slide[k].tolist()}
            for k, s in slide_scores.items()
        },
    }
    table = format_table(pooled_scores, title="pooled")
    markdown = "# wsi-lpd evaluate\n\n" + table
    for k, s in slide_scores.items():
        markdown += "\n" + format_table(s, title=k)
    return result, markdown, table
