"""Training engine for LPD and its baselines (CAM, PBIP-style): one stage, patch-level labels only.

AdamW over all parameters, poly learning-rate decay per iteration, loss warm-up (L_cls only before
``loss.warmup_iters``), AMP on CUDA, seeding, resume from ``last.pt``, validation mIoU on patches
with ground-truth masks each epoch (keeping the best checkpoint), ``train_log.csv`` and
``curves.png``.

The training config is a YAML with sections ``model`` (method, encoder, head, predict — see
:mod:`wsi_lpd.model.build`), ``loss`` (:class:`wsi_lpd.model.losses.LPDLoss` keys, defaults per
method), ``region_encoder`` (the frozen encoder behind L_sim), ``data`` (normalisation) and
``train`` (:class:`TrainSettings`).
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from wsi_lpd.classes import ClassList
from wsi_lpd.device import resolve_device
from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.metrics import confusion_matrix, segmentation_scores
from wsi_lpd.model.build import build_model
from wsi_lpd.model.checkpoint import save_checkpoint
from wsi_lpd.model.encoders import build_encoder
from wsi_lpd.model.losses import LPDLoss, default_loss_config
from wsi_lpd.model.lpd import pbip_prototype_bank

log = logging.getLogger(__name__)

LOG_COLUMNS = ("iteration", "epoch", "lr", "total", "cls", "div", "sim", "images_per_s", "val_mIoU")


@dataclass
class TrainSettings:
    """The ``train`` section of a training config (paper defaults)."""

    batch_size: int = 10
    epochs: int = 8
    max_iters: int | None = None  # stop after this many iterations (short runs); None = epochs
    lr: float = 5e-5
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    poly_power: float = 1.0
    seed: int = 42
    amp: bool = True  # CUDA only
    workers: int = 2
    val_fraction: float = 0.1  # held out of a store with masks when no validation set is given
    val_label_mode: str = "predicted"  # "given": mask absent classes with the true labels
    select_best_after_iters: int | None = None  # None = the loss warm-up
    log_every: int = 10
    augment: dict[str, float] = field(
        default_factory=lambda: {"hflip_p": 0.5, "vflip_p": 0.5, "rot90_p": 0.5}
    )
    pbip_features_per_class: int = 512  # single-label patches encoded for the PBIP bank

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"train.{unknown[0]}: unknown key; allowed: {', '.join(sorted(known))}"
            )
        settings = cls(**{k: v for k, v in data.items()})
        settings.betas = tuple(settings.betas)  # type: ignore[assignment]
        if settings.batch_size < 1 or settings.epochs < 1:
            raise ConfigError("train.batch_size and train.epochs must be >= 1")
        if settings.val_label_mode not in ("predicted", "given"):
            raise ConfigError("train.val_label_mode: expected 'predicted' or 'given'")
        return settings


@dataclass
class TrainConfig:
    """A whole training config: method, model config, loss, region encoder, settings."""

    method: str
    model_config: dict[str, Any]
    loss: dict[str, Any]
    region_encoder: dict[str, Any] | None
    train: TrainSettings

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], method: str | None = None) -> TrainConfig:
        """Parse the YAML mapping; ``method`` overrides ``model.method``."""
        model = dict(data.get("model") or {})
        method = method or model.pop("method", "lpd")
        model.pop("method", None)
        if "encoder" not in model:
            raise ConfigError("model.encoder: missing (e.g. {type: mit, variant: mit_b1})")
        loss = {**default_loss_config(method), **(data.get("loss") or {})}
        # Baselines keep their defining choices whatever the shared loss section says:
        # plain CAM has no prototype losses; PBIP's bank is fixed (nothing to diversify).
        if method == "cam":
            loss.update(lambda_div=0.0, lambda_sim=0.0)
        elif method == "pbip":
            loss.update(lambda_div=0.0, warmup_iters=0, sim_minmax_normalise=True)
        return cls(
            method=method,
            model_config=model,
            loss=loss,
            region_encoder=data.get("region_encoder"),
            train=TrainSettings.from_mapping(data.get("train") or {}),
        )


class RegionEncoder(nn.Module):
    """Frozen image encoder for L_sim (and PBIP's bank): a backbone's pooled last stage through a
    fixed random projection to the prototype dimension, as the official code's random projection
    behind its (un-pretrained) MedCLIP vision tower."""

    def __init__(self, backbone: nn.Module, dim: int, seed: int = 42) -> None:
        super().__init__()
        self.backbone = backbone
        gen = torch.Generator().manual_seed(seed)
        width = backbone.out_channels[-1]
        self.register_buffer(
            "projection", torch.randn(width, dim, generator=gen) / math.sqrt(width)
        )
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dim: int, seed: int = 42) -> RegionEncoder:
        """Build the backbone with :func:`wsi_lpd.model.encoders.build_encoder`."""
        return cls(build_encoder(config), dim, seed)

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.backbone(images)[-1].mean(dim=(2, 3))
        return pooled @ self.projection


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cycle_batches(loader: DataLoader) -> Iterator[dict[str, Tensor]]:
    while True:
        yield from loader


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay ``lr0·(1 − t/T)^power``."""
    return base_lr * (1.0 - min(iteration, total) / total) ** power


@torch.no_grad()
def pbip_bank_from_data(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    k: int,
    per_class: int,
    device: torch.device,
    seed: int,
) -> Tensor:
    """PBIP's fixed bank: cosine k-means of frozen-encoder features (a frozen copy of the model's
    initial encoder, pooled stage 4 through a fixed random map to D) of single-label patches,
    ``k`` centres per class."""
    labels = np.asarray(dataset.labels)  # type: ignore[attr-defined]
    single = labels.sum(axis=1) == 1
    rng = np.random.default_rng(seed)
    frozen = copy.deepcopy(model.encoder)  # type: ignore[attr-defined]
    encoder = RegionEncoder(frozen, model.prototype_dim, seed).to(device)  # type: ignore[arg-type]
    features: dict[int, Tensor] = {}
    for c in range(num_classes):
        idx = np.flatnonzero(single & (labels[:, c] == 1))
        if idx.size == 0:
            raise ConfigError(
                f"method pbip: no single-label patch of class {c} to build its prototype bank"
            )
        idx = rng.choice(idx, size=min(per_class, idx.size), replace=False)
        vecs = [encoder(dataset[int(i)]["image"][None].to(device)).cpu() for i in idx]
        features[c] = torch.cat(vecs)
    return pbip_prototype_bank(features, k, seed)


@torch.no_grad()
def validate(
    model: nn.Module, loader: DataLoader, classes: ClassList, device: torch.device, label_mode: str
) -> dict[str, Any]:
    """Pixel scores (protocol ``lpd``) of ``model.predict`` on patches with ground-truth masks."""
    model.eval()
    n = len(classes.all)
    cm = np.zeros((n, n), dtype=np.int64)
    for batch in loader:
        images = batch["image"].to(device)
        given = batch["labels"].to(device) if label_mode == "given" else None
        probs = model.predict(images, image_labels=given)
        if probs.shape[-2:] != batch["mask"].shape[-2:]:
            probs = nn.functional.interpolate(probs, size=batch["mask"].shape[-2:], mode="bilinear")
        pred = probs.argmax(dim=1).cpu().numpy()
        cm += confusion_matrix(batch["mask"].numpy(), pred, n)
    model.train()
    return segmentation_scores(cm, "lpd", classes.names)


@dataclass
class TrainResult:
    """Where the outputs are and how training went."""

    checkpoint: Path
    iterations: int
    best_miou: float | None
    wall_time_s: float
    images_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    config: TrainConfig,
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
    """Train ``config.method`` on ``train_set`` and write ``model.pt``, ``last.pt``,
    ``train_log.csv`` and ``curves.png`` into ``out_dir``.

    ``model.pt`` is the best-validation checkpoint when a validation set exists (selected after
    ``select_best_after_iters``), else the final one. ``resume`` continues from ``last.pt``.
    """
    s = config.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    seed_everything(s.seed)
    if len(train_set) == 0:
        raise ConfigError("train: the training set is empty")

    model = build_model(config.method, config.model_config, classes).to(dev)
    region = None
    if config.loss.get("lambda_sim", 0) > 0:
        if not config.region_encoder:
            raise ConfigError("region_encoder: needed when loss.lambda_sim > 0")
        region = RegionEncoder.from_config(config.region_encoder, model.prototype_dim, s.seed).to(
            dev
        )
    criterion = LPDLoss.from_config(config.loss, classes.num_foreground, region_encoder=region)
    if config.method == "pbip":
        bank = pbip_bank_from_data(
            model,
            train_set,
            classes.num_foreground,
            model.prototypes_per_class,
            s.pbip_features_per_class,
            dev,
            s.seed,
        )
        model.set_prototype_bank(bank)

    gen = torch.Generator().manual_seed(s.seed)
    loader = DataLoader(
        train_set,
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= s.batch_size,
        num_workers=s.workers,
        generator=gen,
        persistent_workers=s.workers > 0,
        pin_memory=dev.type == "cuda",
    )
    val_loader = (
        DataLoader(val_set, batch_size=s.batch_size, num_workers=s.workers)
        if val_set is not None and len(val_set) > 0
        else None
    )
    iters_per_epoch = max(1, len(loader))
    total_iters = s.max_iters or s.epochs * iters_per_epoch
    best_after = (
        s.select_best_after_iters
        if s.select_best_after_iters is not None
        else int(config.loss.get("warmup_iters", 0))
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    use_amp = bool(s.amp) and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    contract = {
        "method": config.method,
        "classes": classes,
        "mpp": mpp,
        "patch_px": patch_px,
        "normalisation": normalisation,
        "model_config": config.model_config,
    }
    start_iter, best_miou, history = 0, None, []
    last_path, best_path = out_dir / "last.pt", out_dir / "model.pt"
    if resume and last_path.exists():
        start_iter, best_miou, history = resume_state(last_path, model, optimizer, dev)
        log.info("resumed from %s at iteration %d", last_path, start_iter)

    model.train()
    batches = cycle_batches(loader)
    started = time.time()
    seen, t_window = 0, time.time()
    running: dict[str, float] = {}
    for it in range(start_iter, total_iters):
        batch = next(batches)
        lr = poly_lr(s.lr, it, total_iters, s.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = batch["image"].to(dev, non_blocking=True)
        labels = batch["labels"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            output = model(images)
            losses = criterion(output, images, labels, it)
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"train: loss is {losses['total'].item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += images.shape[0]
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["_n"] = running.get("_n", 0.0) + 1
        done = it + 1
        end_of_epoch = done % iters_per_epoch == 0 or done == total_iters
        if done % s.log_every == 0 or end_of_epoch:
            rate = seen / max(time.time() - t_window, 1e-9)
            row = {
                "iteration": done,
                "epoch": done / iters_per_epoch,
                "lr": lr,
                **{k: running[k] / running["_n"] for k in ("total", "cls", "div", "sim")},
                "images_per_s": rate,
            }
            history.append(row)
            running, seen, t_window = {}, 0, time.time()
            if progress:
                progress(done, total_iters, row)
        if end_of_epoch and val_loader is not None:
            scores = validate(model, val_loader, classes, dev, s.val_label_mode)
            miou = scores["miou"]
            history[-1]["val_mIoU"] = miou if miou is not None else float("nan")
            log.info("iteration %d: validation mIoU %s", done, miou)
            if miou is not None and done >= best_after and (best_miou is None or miou > best_miou):
                best_miou = miou
                _save(best_path, model, contract, config, done, best_miou)
        if end_of_epoch:
            save_last(last_path, model, optimizer, done, best_miou, history)

    if val_loader is None or best_miou is None:
        _save(best_path, model, contract, config, total_iters, best_miou)
    wall = time.time() - started
    write_log(out_dir / "train_log.csv", history)
    plot_curves(out_dir / "curves.png", history, config.method)
    trained = total_iters - start_iter
    return TrainResult(
        checkpoint=best_path,
        iterations=total_iters,
        best_miou=best_miou,
        wall_time_s=wall,
        images_per_s=trained * s.batch_size / max(wall, 1e-9),
        history=history,
    )


def _save(
    path: Path,
    model: nn.Module,
    contract: Mapping[str, Any],
    config: TrainConfig,
    iteration: int,
    best_miou: float | None,
) -> None:
    save_checkpoint(
        path,
        model,
        method=contract["method"],
        classes=contract["classes"],
        mpp=contract["mpp"],
        patch_px=contract["patch_px"],
        normalisation=contract["normalisation"],
        model_config=contract["model_config"],
        training={
            "iteration": iteration,
            "best_val_mIoU": best_miou,
            "loss": config.loss,
            "settings": asdict(config.train),
        },
    )


def save_last(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    best_miou: float | None,
    history: list[dict[str, float]],
) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "best_miou": best_miou,
            "history": history,
        },
        tmp,
    )
    tmp.replace(path)


def resume_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, float | None, list[dict[str, float]]]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot resume from it ({exc})") from exc
    return int(state["iteration"]), state.get("best_miou"), list(state.get("history", []))


def write_log(
    path: Path,
    history: list[dict[str, float]],
    columns: tuple[str, ...] = LOG_COLUMNS,
) -> None:
    """``train_log.csv`` (atomic): one row per logging interval, the given columns."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in columns})
    tmp.replace(path)


def plot_curves(
    path: Path,
    history: list[dict[str, float]],
    title: str,
    loss_keys: tuple[str, ...] = ("total", "cls", "div", "sim"),
    bold: tuple[str, ...] = ("total",),
) -> None:
    """``curves.png`` (atomic): the loss terms that are not all zero, and validation mIoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    its = [r["iteration"] for r in history]
    for key in loss_keys:
        values = [r.get(key, 0.0) for r in history]
        if any(v != 0 for v in values):
            ax_loss.plot(its, values, label=key, lw=2 if key in bold else 1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{title}: training losses")
    if its:
        ax_loss.legend(fontsize=7)
    val = [(r["iteration"], r["val_mIoU"]) for r in history if "val_mIoU" in r]
    if val:
        ax_val.plot(*zip(*val, strict=True), marker="o")
        ax_val.set_ylim(0, 1)
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("validation mIoU")
    ax_val.set_title("validation (pixel mIoU)" if val else "no validation masks")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
