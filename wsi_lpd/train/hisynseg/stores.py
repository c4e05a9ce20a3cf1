"""HisynSeg's patch stores: the filtered synthetic store and round 2's pseudo-masked store.

a. synthesise ``n_mosaic`` Mosaic and ``n_bezier`` Bézier images from single-label patches;
b. per kind, train a ResNet-18 real/synthetic discriminator (real = multi-label patches, as many
   synthesised ones) and keep fresh candidates with P(real) > ``filter.threshold`` until ``n_*``
   are kept (at most ``max_candidates_factor``·n tried); with no multi-label patch the filter is
   skipped (warning) and the first n candidates are kept;
d. round 2: real patches pseudo-masked by the round-1 model (d4 TTA, the true image labels).

Both are patch stores with masks, written whole or not at all (:func:`wsi_lpd.io.atomic_dir`).
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_lpd.classes import ClassList
from wsi_lpd.data.contracts import LabelledPatchSet
from wsi_lpd.data.datasets import BcssWsssDataset, ConcatPatchSets, PatchDataset, read_png_rgb
from wsi_lpd.errors import DatasetError
from wsi_lpd.formats.patch_store import PatchStoreWriter, open_patch_store
from wsi_lpd.io import atomic_dir
from wsi_lpd.networks.hisynseg import HisynSegModel
from wsi_lpd.train.hisynseg.realism import filter_realistic, to_tensor, train_discriminator
from wsi_lpd.train.hisynseg.synthesis import (
    KINDS,
    BezierParams,
    MosaicParams,
    SingleLabelPool,
    chunks,
    synthesise,
)
from wsi_lpd.train.training_config import HisynSegSection

log = logging.getLogger(__name__)


def mosaic_params(s: HisynSegSection) -> MosaicParams:
    """The Mosaic settings of a ``hisynseg`` section."""
    return MosaicParams(
        anchor_range=s.mosaic_anchor_range,
        transform_p=s.mosaic_transform_p,
        shift=s.mosaic_shift,
        scale=s.mosaic_scale,
        rotate_deg=s.mosaic_rotate_deg,
    )


def bezier_params(s: HisynSegSection) -> BezierParams:
    """The Bézier-blob settings of a ``hisynseg`` section."""
    return BezierParams(points=s.bezier_points, rad=s.bezier_rad, edgy=s.bezier_edgy)


def raw_image_source(
    dataset: LabelledPatchSet, normalisation: Mapping[str, Any]
) -> Callable[[int], np.ndarray]:
    """``get(i) -> (H, W, 3) uint8``: the un-augmented pixels of item ``i`` of ``dataset``.

    Patch stores and BCSS folders are read directly; other datasets are de-normalised with
    ``normalisation`` (their augmentation, if any, then applies).
    """
    if isinstance(dataset, PatchDataset):
        store = open_patch_store(dataset.store_path)
        indices = dataset.indices
        return lambda i: np.asarray(store.images[int(indices[i])])
    if isinstance(dataset, BcssWsssDataset):
        return lambda i: read_png_rgb(dataset.images[i])
    if isinstance(dataset, ConcatPatchSets):
        parts = [raw_image_source(d, normalisation) for d in dataset.parts]
        ends = dataset.cumulative_sizes

        def concat_get(i: int) -> np.ndarray:
            k = bisect.bisect_right(ends, i)
            return parts[k](i - (ends[k - 1] if k else 0))

        return concat_get
    log.warning("%s: reading pixels by de-normalising its items", type(dataset).__name__)
    mean = np.asarray(normalisation["mean"], np.float32)
    std = np.asarray(normalisation["std"], np.float32)

    def denormalise(i: int) -> np.ndarray:
        x = dataset[i]["image"].numpy().transpose(1, 2, 0) * std + mean
        rgb: np.ndarray = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return rgb

    return denormalise


def cached(
    get: Callable[[int], np.ndarray], patch_px: int, budget_mb: int
) -> Callable[[int], np.ndarray]:
    n = int(budget_mb * 2**20 // max(1, patch_px * patch_px * 3))
    return functools.lru_cache(maxsize=n)(get) if n > 0 else get


def _write_store(
    path: Path,
    classes: ClassList,
    mpp: float,
    patch_px: int,
    batches: Callable[[PatchStoreWriter], None],
) -> None:
    """Write a patch store with masks, whole or not at all."""
    with (
        atomic_dir(path) as tmp,
        PatchStoreWriter(tmp, classes, mpp, patch_px, with_masks=True) as writer,
    ):
        batches(writer)


def build_synthetic_store(
    path: Path,
    pool: SingleLabelPool,
    real_images: np.ndarray,
    classes: ClassList,
    settings: HisynSegSection,
    *,
    mpp: float,
    normalisation: Mapping[str, Any],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Synthesise, filter and write ``n_mosaic`` + ``n_bezier`` images with masks to ``path``.

    ``real_images``: (N, H, W, 3) uint8 multi-label patches for the discriminator (N = 0 skips
    the filter). Returns per-kind statistics.
    """
    f = settings.filter
    targets = {"mosaic": settings.n_mosaic, "bezier": settings.n_bezier}
    if len(pool) == 0:
        raise DatasetError(
            "hisynseg: synthesis needs single-label patches (one positive label); none found"
        )
    if settings.n_bezier > 0 and len(pool.classes_present) < 2:
        raise DatasetError(
            "hisynseg.n_bezier: Bézier mixing needs single-label patches of >= 2 classes "
            f"(found classes {pool.classes_present}); set n_bezier: 0"
        )
    use_filter = f.enabled and len(real_images) > 0
    if f.enabled and not use_filter:
        log.warning("hisynseg: no multi-label patch to train the realism filter; filter skipped")
    mosaic, bezier = mosaic_params(settings), bezier_params(settings)
    stats: dict[str, Any] = {"filter": use_filter, "threshold": f.threshold}

    def kind_batch(kind: str, idx: range, stream: int) -> Any:
        return synthesise(
            kind,
            pool,
            idx,
            seed=seed,
            stream=stream,
            mosaic=mosaic,
            bezier=bezier,
        )

    def write(writer: PatchStoreWriter) -> None:
        for kind in KINDS:
            n_keep = targets[kind]
            if n_keep == 0:
                continue
            slide = writer.add_slide(f"synthetic-{kind}")
            disc, report = None, None
            if use_filter:
                n_fake = len(real_images)
                fakes = kind_batch(kind, range(n_fake), stream=0).images
                disc, report = train_discriminator(
                    real_images,
                    fakes,
                    normalisation,
                    f,
                    epochs=f.epochs_mosaic if kind == "mosaic" else f.epochs_bezier,
                    device=device,
                    seed=seed + (1 if kind == "mosaic" else 2),
                )
                del fakes
            limit = int(np.ceil(n_keep * f.max_candidates_factor)) if use_filter else n_keep
            kept, tried, p_sum = 0, 0, 0.0
            for idx in chunks(0, limit, settings.synth_chunk):
                if kept >= n_keep:
                    break
                batch = kind_batch(kind, idx, stream=1)
                tried += len(batch)
                if disc is not None:
                    keep, p_real = filter_realistic(
                        disc,
                        batch.images,
                        normalisation,
                        threshold=f.threshold,
                        batch_size=f.batch_size,
                        device=device,
                    )
                    p_sum += float(p_real.sum())
                else:
                    keep = np.ones(len(batch), bool)
                for j in np.flatnonzero(keep)[: n_keep - kept]:
                    writer.append(batch.images[j], batch.labels[j], (0, 0), slide, batch.masks[j])
                    kept += 1
            unfiltered = disc is not None and kept == 0
            if unfiltered:  # a discriminator that rejects everything would leave nothing to learn
                log.warning(
                    "hisynseg: the realism filter kept none of %d %s candidates (mean P(real) "
                    "%.2f, threshold %g); using %d unfiltered %s images instead",
                    tried,
                    kind,
                    p_sum / max(tried, 1),
                    f.threshold,
                    n_keep,
                    kind,
                )
                batch = kind_batch(kind, range(limit, limit + n_keep), stream=1)
                for j in range(len(batch)):
                    writer.append(batch.images[j], batch.labels[j], (0, 0), slide, batch.masks[j])
                kept = len(batch)
            elif kept < n_keep:
                log.warning(
                    "hisynseg: only %d of %d %s images passed the realism filter in %d candidates",
                    kept,
                    n_keep,
                    kind,
                    tried,
                )
            log.info("hisynseg: kept %d %s images of %d synthesised", kept, kind, tried)
            stats[kind] = {
                "requested": n_keep,
                "kept": kept,
                "unfiltered": unfiltered,
                "candidates": tried,
                "acceptance": kept / max(tried, 1),
                "mean_p_real": p_sum / max(tried, 1) if disc is not None else None,
                "discriminator": report.to_dict() if report is not None else None,
            }

    _write_store(path, classes, mpp, pool.size_px, write)
    return stats


def real_multilabel(
    get: Callable[[int], np.ndarray], labels: np.ndarray, n: int, patch_px: int, seed: int
) -> np.ndarray:
    idx = np.flatnonzero(labels.sum(axis=1) >= 2)
    if idx.size == 0:
        return np.zeros((0, patch_px, patch_px, 3), np.uint8)
    idx = np.sort(np.random.default_rng(seed).choice(idx, size=min(n, idx.size), replace=False))
    return np.stack([get(int(i)) for i in idx])


@torch.no_grad()
def build_pseudo_store(
    path: Path,
    model: HisynSegModel,
    get: Callable[[int], np.ndarray],
    labels: np.ndarray,
    classes: ClassList,
    *,
    mpp: float,
    patch_px: int,
    normalisation: Mapping[str, Any],
    device: torch.device,
    batch_size: int,
) -> None:
    """Round 2: real patches with pseudo masks = argmax of ``model.predict`` (d4 TTA, the true
    image labels, background where the rule says so) written as a patch store with masks."""

    def write(writer: PatchStoreWriter) -> None:
        slide = writer.add_slide("pseudo-masked")
        for idx in chunks(0, len(labels), batch_size):
            images = np.stack([get(i) for i in idx])
            x = to_tensor(images, normalisation).to(device)
            given = torch.as_tensor(
                labels[idx.start : idx.stop], dtype=torch.float32, device=device
            )
            probs = model.predict(x, image_labels=given, tta=True)
            masks = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for k, i in enumerate(idx):
                writer.append(images[k], labels[i], (0, 0), slide, masks[k])

    _write_store(path, classes, mpp, patch_px, write)
    log.info("round 2: pseudo-masked %d real patches into %s", len(labels), path)
