"""HisynSeg trainer: synthesis → realism filter → segmentation with consistency (→ round 2).

Same inputs and outputs as :func:`wsi_lpd.training.train` (``model.pt`` with method ``hisynseg``,
``last.pt``, ``train_log.csv``, ``curves.png``), plus ``synthetic.zarr`` (the filtered synthesised
images with their masks, a patch store), ``synthesis.json`` (synthesis/filter statistics) and,
with round 2, ``round2.zarr`` (real patches with pseudo masks).

Steps (docs/lpd-method.md §5):

a. synthesise ``n_mosaic`` Mosaic and ``n_bezier`` Bézier images from single-label patches;
b. per kind, train a ResNet-18 real/synthetic discriminator (real = multi-label patches, as many
   synthesised ones) and keep fresh candidates with P(real) > ``filter.threshold`` until ``n_*``
   are kept (at most ``max_candidates_factor``·n tried); with no multi-label patch the filter is
   skipped (warning) and the first n candidates are kept;
c. each step: a synthetic batch, L_syn = w1·BCE(GAP(CAM), y) + w2·Dice(seg, mask) (background
   index C ignored), and a real batch, L_real = w1·BCE(GAP(CAM), y) + w3·mean|softmax(seg↓) −
   softmax(CAM)| (seg logits resized bilinearly to the CAM grid); AdamW, poly decay per iteration;
d. optionally (``round2: true``) pseudo-mask the real patches with the round-1 model (best
   validation weights when any; d4 TTA, the true image labels, background rule), then train a
   fresh model on synthetic + pseudo-masked real batches (BCE + Dice on both, no consistency).

The config is a YAML with ``model`` (see :mod:`wsi_lpd.hisynseg.model`), ``data``,
``hisynseg`` (:class:`HisynSegSettings`) and ``train`` (:class:`wsi_lpd.training.TrainSettings`).
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from wsi_lpd.augment import Augment
from wsi_lpd.classes import ClassList
from wsi_lpd.datasets import BcssWsssDataset, PatchDataset, read_png_rgb
from wsi_lpd.device import resolve_device
from wsi_lpd.errors import CheckpointError, ConfigError, DatasetError
from wsi_lpd.hisynseg.model import HisynSegOutput
from wsi_lpd.hisynseg.realism import filter_realistic, to_tensor, train_discriminator
from wsi_lpd.hisynseg.synthesis import (
    KINDS,
    BezierParams,
    MosaicParams,
    SingleLabelPool,
    chunks,
    synthesise,
)
from wsi_lpd.model.build import build_model
from wsi_lpd.model.checkpoint import read_checkpoint, save_checkpoint
from wsi_lpd.patch_store import PatchStoreWriter, open_patch_store
from wsi_lpd.training import (
    TrainResult,
    TrainSettings,
    cycle_batches,
    plot_curves,
    poly_lr,
    resume_state,
    save_last,
    seed_everything,
    validate,
    write_log,
)

log = logging.getLogger(__name__)

METHOD = "hisynseg"
LOG_COLUMNS = (
    "round",
    "iteration",
    "epoch",
    "lr",
    "total",
    "synthetic",
    "real",
    "bce_syn",
    "dice_syn",
    "bce_real",
    "consistency",
    "dice_real",
    "images_per_s",
    "val_mIoU",
)
LOSS_KEYS = (
    "total",
    "synthetic",
    "real",
    "bce_syn",
    "dice_syn",
    "bce_real",
    "consistency",
    "dice_real",
)


# ----------------------------------------------------------------------------------------------
# Config


def _parse_fields(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``data`` against the dataclass ``cls`` (unknown keys, types of the defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        default = getattr(defaults, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, list | tuple) and len(value) == len(default)
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            value = tuple(float(v) for v in value) if ok else value
        else:  # nested sections are parsed by the caller
            ok = True
        if not ok:
            raise ConfigError(
                f"{where}.{key}: expected {type(default).__name__} like {default!r}, got {value!r}"
            )
        out[key] = value
    return out


@dataclass
class FilterSettings:
    """``hisynseg.filter``: the realism discriminator (official: 3 / 5 epochs, Adam 1e-3, 256)."""

    enabled: bool = True
    model: str = "resnet18"  # a timm classifier name
    epochs_mosaic: int = 3
    epochs_bezier: int = 5
    lr: float = 1e-3
    batch_size: int = 256
    threshold: float = 0.5  # keep synthesised images with P(real) > threshold
    n_train: int = 5000  # real (multi-label) and as many synthesised images to train on
    val_fraction: float = 0.2
    max_candidates_factor: float = 4.0  # try at most factor·n candidates per kind

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FilterSettings:
        s = cls(**_parse_fields(cls, data, "hisynseg.filter"))
        if s.epochs_mosaic < 1 or s.epochs_bezier < 1 or s.batch_size < 1 or s.n_train < 1:
            raise ConfigError("hisynseg.filter: epochs_*, batch_size and n_train must be >= 1")
        if not 0.0 <= s.threshold < 1.0:
            raise ConfigError(f"hisynseg.filter.threshold: must be in [0, 1), got {s.threshold}")
        if s.lr <= 0 or not 0.0 <= s.val_fraction < 1.0 or s.max_candidates_factor < 1.0:
            raise ConfigError("hisynseg.filter: lr > 0, val_fraction in [0, 1), factor >= 1")
        return s


@dataclass
class HisynSegSettings:
    """The ``hisynseg`` section: synthesis, filter, loss weights, round 2 (paper defaults)."""

    n_mosaic: int = 7200  # filtered Mosaic images kept
    n_bezier: int = 7200  # filtered Bézier images kept
    mosaic_anchor_range: tuple[float, float] = (0.2, 0.8)
    mosaic_transform_p: float = 0.8
    mosaic_shift: float = 0.0625
    mosaic_scale: float = 0.2
    mosaic_rotate_deg: float = 45.0
    bezier_points: int = 5
    bezier_rad: float = 0.2
    bezier_edgy: float = 0.05
    synth_chunk: int = 256  # images synthesised (and scored) at a time
    pool_cache_mb: int = 1024  # decoded single-label patches kept in memory
    w1: float = 1.0  # BCE on image labels (both batches)
    w2: float = 1.0  # Dice on synthetic masks
    w3: float = 1.0  # L1 consistency on real images
    round2: bool = False
    filter: FilterSettings = field(default_factory=FilterSettings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HisynSegSettings:
        parsed = _parse_fields(cls, data, "hisynseg")
        parsed["filter"] = FilterSettings.from_mapping(data.get("filter") or {})
        s = cls(**parsed)
        if s.n_mosaic < 0 or s.n_bezier < 0 or s.n_mosaic + s.n_bezier == 0:
            raise ConfigError("hisynseg.n_mosaic / n_bezier: must be >= 0 and not both 0")
        if s.synth_chunk < 1 or s.pool_cache_mb < 0:
            raise ConfigError("hisynseg.synth_chunk must be >= 1 and pool_cache_mb >= 0")
        if min(s.w1, s.w2, s.w3) < 0:
            raise ConfigError("hisynseg.w1 / w2 / w3: loss weights must be >= 0")
        s.mosaic_params()  # validates the synthesis parameters
        s.bezier_params()
        return s

    def mosaic_params(self) -> MosaicParams:
        return MosaicParams(
            anchor_range=self.mosaic_anchor_range,
            transform_p=self.mosaic_transform_p,
            shift=self.mosaic_shift,
            scale=self.mosaic_scale,
            rotate_deg=self.mosaic_rotate_deg,
        )

    def bezier_params(self) -> BezierParams:
        return BezierParams(points=self.bezier_points, rad=self.bezier_rad, edgy=self.bezier_edgy)


@dataclass
class HisynSegConfig:
    """A whole HisynSeg training config (counterpart of :class:`wsi_lpd.training.TrainConfig`)."""

    method: str
    model_config: dict[str, Any]
    hisynseg: HisynSegSettings
    train: TrainSettings

    @property
    def loss(self) -> dict[str, float]:
        """The loss weights (what ``TrainConfig.loss`` is for LPD; recorded in run.json)."""
        return {"w1": self.hisynseg.w1, "w2": self.hisynseg.w2, "w3": self.hisynseg.w3}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], method: str | None = None) -> HisynSegConfig:
        """Parse the YAML mapping (sections model, data, hisynseg, train)."""
        model = dict(data.get("model") or {})
        method = method or model.get("method", METHOD)
        model.pop("method", None)
        if method != METHOD:
            raise ConfigError(f"method: {method!r} is not trained by the hisynseg trainer")
        if "encoder" not in model:
            raise ConfigError("model.encoder: missing (e.g. {type: timm, name: resnet18})")
        for section in ("loss", "region_encoder"):
            if data.get(section):
                raise ConfigError(f"{section}: not used by hisynseg (loss weights go in hisynseg:)")
        return cls(
            method=METHOD,
            model_config=model,
            hisynseg=HisynSegSettings.from_mapping(data.get("hisynseg") or {}),
            train=TrainSettings.from_mapping(data.get("train") or {}),
        )


# ----------------------------------------------------------------------------------------------
# Losses


def dice_loss(
    logits: Tensor, mask: Tensor, ignore_index: int | None = None, eps: float = 1e-7
) -> Tensor:
    """Multiclass soft Dice: 1 − 2Σpt/Σ(p+t) per class over the batch, softmax over C.

    ``logits``: B×C×H×W; ``mask``: B×H×W class indices (``ignore_index`` pixels left out). Classes
    absent from the target contribute 0; the mean is over the C classes (smp's DiceLoss).
    """
    c = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    valid = (
        torch.ones_like(mask, dtype=torch.bool) if ignore_index is None else mask != ignore_index
    )
    target = F.one_hot(torch.where(valid, mask, 0).clamp(0, c - 1), c).permute(0, 3, 1, 2)
    target = target.float() * valid[:, None]
    probs = probs * valid[:, None]
    inter = (probs * target).sum(dim=(0, 2, 3))
    card = (probs + target).sum(dim=(0, 2, 3))
    score = (2.0 * inter / card.clamp_min(eps)).clamp_min(eps)
    present = (target.sum(dim=(0, 2, 3)) > 0).float()
    return ((1.0 - score) * present).mean()


def consistency_loss(seg_logits: Tensor, cam: Tensor) -> Tensor:
    """mean |softmax_c(resize(seg → CAM grid, bilinear)) − softmax_c(CAM)| (no stop-gradient)."""
    small = F.interpolate(seg_logits.float(), size=cam.shape[-2:], mode="bilinear")
    return (torch.softmax(small, dim=1) - torch.softmax(cam.float(), dim=1)).abs().mean()


def synthetic_losses(
    out: HisynSegOutput, labels: Tensor, mask: Tensor, w1: float, w2: float, ignore_index: int
) -> dict[str, Tensor]:
    """L_syn = w1·BCE(image logits, labels) + w2·Dice(seg, mask) -> {loss, bce, dice}."""
    bce = F.binary_cross_entropy_with_logits(out.logits.float(), labels)
    dice = dice_loss(out.seg, mask, ignore_index)
    return {"loss": w1 * bce + w2 * dice, "bce": bce, "dice": dice}


def real_losses(out: HisynSegOutput, labels: Tensor, w1: float, w3: float) -> dict[str, Tensor]:
    """L_real = w1·BCE(image logits, labels) + w3·L1 consistency -> {loss, bce, consistency}."""
    bce = F.binary_cross_entropy_with_logits(out.logits.float(), labels)
    cons = consistency_loss(out.seg, out.cam)
    return {"loss": w1 * bce + w3 * cons, "bce": bce, "consistency": cons}


# ----------------------------------------------------------------------------------------------
# Data plumbing


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The (N, C) multi-hot labels of a training set (``.labels``, or its parts' for a concat)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, ConcatDataset):
        labels = np.concatenate([dataset_labels(d) for d in dataset.datasets])
    if labels is None and isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if labels is None:
        raise DatasetError(f"{type(dataset).__name__}: training set has no .labels (N×C) array")
    return np.asarray(labels)


def raw_image_source(
    dataset: Dataset, normalisation: Mapping[str, Any]
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
    if isinstance(dataset, ConcatDataset):
        parts = [raw_image_source(d, normalisation) for d in dataset.datasets]
        ends = dataset.cumulative_sizes

        def concat_get(i: int) -> np.ndarray:
            k = bisect.bisect_right(ends, i)
            return parts[k](i - (ends[k - 1] if k else 0))

        return concat_get
    if isinstance(dataset, Subset):
        inner = raw_image_source(dataset.dataset, normalisation)
        return lambda i: inner(int(dataset.indices[i]))
    log.warning("%s: reading pixels by de-normalising its items", type(dataset).__name__)
    mean = np.asarray(normalisation["mean"], np.float32)
    std = np.asarray(normalisation["std"], np.float32)

    def denormalise(i: int) -> np.ndarray:
        x = dataset[i]["image"].numpy().transpose(1, 2, 0) * std + mean
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    return denormalise


def _cached(
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
    """Write a patch store with masks under a temporary name, then move it to ``path``."""
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with PatchStoreWriter(tmp, classes, mpp, patch_px, with_masks=True) as writer:
        batches(writer)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# (a) + (b): synthesis and the realism filter


def build_synthetic_store(
    path: Path,
    pool: SingleLabelPool,
    real_images: np.ndarray,
    classes: ClassList,
    settings: HisynSegSettings,
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
    params = {"mosaic": settings.mosaic_params(), "bezier": settings.bezier_params()}
    stats: dict[str, Any] = {"filter": use_filter, "threshold": f.threshold}

    def kind_batch(kind: str, idx: range, stream: int) -> Any:
        return synthesise(
            kind,
            pool,
            idx,
            seed=seed,
            stream=stream,
            mosaic=params["mosaic"],
            bezier=params["bezier"],
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
                    model_name=f.model,
                    epochs=f.epochs_mosaic if kind == "mosaic" else f.epochs_bezier,
                    lr=f.lr,
                    batch_size=f.batch_size,
                    val_fraction=f.val_fraction,
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
            if kept < n_keep:
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
                "candidates": tried,
                "acceptance": kept / max(tried, 1),
                "mean_p_real": p_sum / max(tried, 1) if disc is not None else None,
                "discriminator": report.to_dict() if report is not None else None,
            }

    _write_store(path, classes, mpp, pool.size_px, write)
    if sum(stats[k]["kept"] for k in KINDS if k in stats) == 0:
        shutil.rmtree(path, ignore_errors=True)
        raise DatasetError(
            f"{path}: no synthesised image passed the realism filter (threshold {f.threshold}); "
            "lower hisynseg.filter.threshold or set hisynseg.filter.enabled: false"
        )
    return stats


def _real_multilabel(
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
    model: nn.Module,
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
            probs = model.predict(x, image_labels=given, tta=True)  # type: ignore[operator]
            masks = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for k, i in enumerate(idx):
                writer.append(images[k], labels[i], (0, 0), slide, masks[k])

    _write_store(path, classes, mpp, patch_px, write)
    log.info("round 2: pseudo-masked %d real patches into %s", len(labels), path)


# ----------------------------------------------------------------------------------------------
# (c) + (d): segmentation training


def _loader(dataset: Dataset, s: TrainSettings, seed: int, dev: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= s.batch_size,  # type: ignore[arg-type]
        num_workers=s.workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=s.workers > 0,
        pin_memory=dev.type == "cuda",
    )


def _training_record(
    config: HisynSegConfig, iteration: int, rnd: int, best: float | None, stats: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "round": rnd,
        "best_val_mIoU": best,
        "hisynseg": asdict(config.hisynseg),
        "settings": asdict(config.train),
        "synthesis": dict(stats),
    }


def _new_model(
    config: HisynSegConfig, classes: ClassList, normalisation: Mapping[str, Any], dev: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    s = config.train
    model = build_model(METHOD, config.model_config, classes).to(dev)
    model.predict_config = {**model.predict_config, "normalisation": dict(normalisation)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    return model, optimizer


def train_hisynseg(
    config: HisynSegConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    classes: ClassList,
    *,
    mpp: float,
    patch_px: int,
    normalisation: Mapping[str, Any],
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train HisynSeg on ``train_set`` (items with ``image`` and ``labels``; ``.labels`` N×C) and
    write ``model.pt``, ``last.pt``, ``train_log.csv``, ``curves.png`` (and the synthetic stores)
    into ``out_dir``. ``model.pt`` is the best-validation checkpoint over the run when validation
    masks exist, else the final model. ``resume`` continues from ``last.pt`` and reuses
    ``synthetic.zarr`` / ``round2.zarr`` when present."""
    if not isinstance(config, HisynSegConfig):
        raise ConfigError(f"train_hisynseg: expected a HisynSegConfig, got {type(config).__name__}")
    s, h = config.train, config.hisynseg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    seed_everything(s.seed)
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ConfigError("train: the training set is empty")
    labels = dataset_labels(train_set).astype(np.uint8)
    if labels.shape != (len(train_set), classes.num_foreground):  # type: ignore[arg-type]
        raise DatasetError(
            f"training labels of shape {labels.shape}, expected "
            f"({len(train_set)}, {classes.num_foreground})"  # type: ignore[arg-type]
        )
    get_raw = raw_image_source(train_set, normalisation)
    last_path, best_path = out_dir / "last.pt", out_dir / "model.pt"
    synth_path, pseudo_path = out_dir / "synthetic.zarr", out_dir / "round2.zarr"
    resuming = resume and last_path.exists()
    started = time.time()

    # (a) + (b)
    if resuming and synth_path.exists() and (out_dir / "synthesis.json").exists():
        log.info("resuming: reusing %s", synth_path)
        stats = json.loads((out_dir / "synthesis.json").read_text())
    else:
        pool = SingleLabelPool(labels, _cached(get_raw, patch_px, h.pool_cache_mb), patch_px)
        log.info(
            "hisynseg: %d single-label patches (classes %s) for synthesis",
            len(pool),
            [classes.foreground_names[c] for c in pool.classes_present],
        )
        real = _real_multilabel(get_raw, labels, h.filter.n_train, patch_px, s.seed)
        stats = build_synthetic_store(
            synth_path,
            pool,
            real,
            classes,
            h,
            mpp=mpp,
            normalisation=normalisation,
            device=dev,
            seed=s.seed,
        )
        del real
        _write_json(out_dir / "synthesis.json", stats)
    augment = dict(s.augment)
    syn_set = PatchDataset(synth_path, normalisation, Augment(seed=s.seed + 1, **augment))

    # (c) + (d)
    syn_loader = _loader(syn_set, s, s.seed + 1, dev)
    real_loader = _loader(train_set, s, s.seed, dev)
    iters_per_epoch = max(1, len(syn_loader), len(real_loader))
    round_iters = s.max_iters or s.epochs * iters_per_epoch
    rounds = 2 if h.round2 else 1
    total_iters = round_iters * rounds
    val_loader = None
    if val_set is not None and len(val_set) > 0:  # type: ignore[arg-type]
        if getattr(val_set, "has_masks", True):
            val_loader = DataLoader(val_set, batch_size=s.batch_size, num_workers=s.workers)
        else:
            log.warning("validation set has no masks: no validation mIoU, final model kept")
    best_after = s.select_best_after_iters or 0
    model, optimizer = _new_model(config, classes, normalisation, dev)
    use_amp = bool(s.amp) and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_iter, best_miou, history = 0, None, []
    if resuming:
        start_iter, best_miou, history = resume_state(last_path, model, optimizer, dev)
        log.info("resumed from %s at iteration %d", last_path, start_iter)
    if start_iter > round_iters and h.round2:
        if not pseudo_path.exists():
            raise CheckpointError(f"{pseudo_path}: missing; cannot resume round 2 without it")
        real_loader = _loader(
            PatchDataset(pseudo_path, normalisation, Augment(seed=s.seed + 2, **augment)),
            s,
            s.seed + 2,
            dev,
        )

    def save(path: Path, done: int, rnd: int) -> None:
        save_checkpoint(
            path,
            model,
            method=METHOD,
            classes=classes,
            mpp=mpp,
            patch_px=patch_px,
            normalisation=normalisation,
            model_config=config.model_config,
            training=_training_record(config, done, rnd, best_miou, stats),
        )

    model.train()
    syn_batches, real_batches = cycle_batches(syn_loader), cycle_batches(real_loader)
    seen, t_window = 0, time.time()
    running: dict[str, float] = {}
    bg = classes.background_index
    for it in range(start_iter, total_iters):
        rnd = 1 + it // round_iters
        if rnd == 2 and it == round_iters:
            if best_miou is not None and best_path.exists():
                state = read_checkpoint(best_path)["state_dict"]
                model.load_state_dict(state)
                log.info("round 2: pseudo masks from the best round-1 model (mIoU %.4f)", best_miou)
            build_pseudo_store(
                pseudo_path,
                model,
                get_raw,
                labels,
                classes,
                mpp=mpp,
                patch_px=patch_px,
                normalisation=normalisation,
                device=dev,
                batch_size=s.batch_size,
            )
            seed_everything(s.seed)
            model, optimizer = _new_model(config, classes, normalisation, dev)
            model.train()
            pseudo = PatchDataset(pseudo_path, normalisation, Augment(seed=s.seed + 2, **augment))
            real_batches = cycle_batches(_loader(pseudo, s, s.seed + 2, dev))
        step = it - (rnd - 1) * round_iters
        lr = poly_lr(s.lr, step, round_iters, s.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        syn, real = next(syn_batches), next(real_batches)
        x_syn = syn["image"].to(dev, non_blocking=True)
        x_real = real["image"].to(dev, non_blocking=True)
        y_syn = syn["labels"].to(dev, non_blocking=True)
        y_real = real["labels"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            ls = synthetic_losses(model(x_syn), y_syn, syn["mask"].to(dev), h.w1, h.w2, bg)
            out_real = model(x_real)
            if rnd == 1:
                l_real = real_losses(out_real, y_real, h.w1, h.w3)
                parts = {"bce_real": l_real["bce"], "consistency": l_real["consistency"]}
            else:
                l_real = synthetic_losses(out_real, y_real, real["mask"].to(dev), h.w1, h.w2, bg)
                parts = {"bce_real": l_real["bce"], "dice_real": l_real["dice"]}
            total = ls["loss"] + l_real["loss"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"train: loss is {total.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += x_syn.shape[0] + x_real.shape[0]
        values = {
            "total": total,
            "synthetic": ls["loss"],
            "real": l_real["loss"],
            "bce_syn": ls["bce"],
            "dice_syn": ls["dice"],
            **parts,
        }
        for k, v in values.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["_n"] = running.get("_n", 0.0) + 1
        done = it + 1
        round_end = done % round_iters == 0
        end_of_epoch = (step + 1) % iters_per_epoch == 0 or round_end
        # a row at every epoch end too, so a validation score sits on its own iteration's row
        if done % s.log_every == 0 or end_of_epoch:
            row: dict[str, float] = {
                "round": rnd,
                "iteration": done,
                "epoch": (step + 1) / iters_per_epoch,
                "lr": lr,
                **{k: running[k] / running["_n"] for k in LOSS_KEYS if k in running},
                "images_per_s": seen / max(time.time() - t_window, 1e-9),
            }
            history.append(row)
            running, seen, t_window = {}, 0, time.time()
            if progress:
                progress(done, total_iters, row)
        if end_of_epoch and val_loader is not None:
            miou = validate(model, val_loader, classes, dev, s.val_label_mode)["miou"]
            if history:
                history[-1]["val_mIoU"] = miou if miou is not None else float("nan")
            log.info("round %d iteration %d: validation mIoU %s", rnd, done, miou)
            if miou is not None and done >= best_after and (best_miou is None or miou > best_miou):
                best_miou = miou
                save(best_path, done, rnd)
        if end_of_epoch:
            save_last(last_path, model, optimizer, done, best_miou, history)

    if val_loader is None or best_miou is None:
        save(best_path, total_iters, rounds)
    wall = time.time() - started
    write_log(out_dir / "train_log.csv", history, LOG_COLUMNS)
    plot_curves(out_dir / "curves.png", history, METHOD, LOSS_KEYS, ("synthetic", "real"))
    trained = total_iters - start_iter
    return TrainResult(
        checkpoint=best_path,
        iterations=total_iters,
        best_miou=best_miou,
        wall_time_s=wall,
        images_per_s=trained * 2 * s.batch_size / max(wall, 1e-9),
        history=history,
    )
