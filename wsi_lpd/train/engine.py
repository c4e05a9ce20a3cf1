"""The one training engine: every method (:mod:`wsi_lpd.train.methods`) runs through
:func:`run_loop`.

AdamW over the trainable parameters, poly learning-rate decay per iteration, AMP on CUDA, seeding,
validation each epoch (pixel mIoU on patches with masks, else image-label F1 / mAP on held-out
patches) keeping the best checkpoint, ``train_log.csv`` and ``curves.png``, resume, and
data-parallel training over several processes (gradients averaged by one all-reduce per step
after the backward pass, as DistributedDataParallel does, but for any loss graph — the methods'
graphs change with warm-up and zero stage weights, which DDP's bucket readiness cannot follow;
rank 0 alone writes).

Outputs. :func:`train` works in a resumable state folder beside the output,
``OUT/../.OUT.resume/`` (:func:`state_dir`: ``last.pt`` every epoch, the best ``model.pt``, method
stores), and publishes it with :func:`wsi_lpd.io.atomic_dir` when training ends: ``OUT`` appears
whole (``model.pt``, ``last.pt``, ``train_log.csv``, ``curves.png``, ``run.json`` via
``finalise``, method artefacts) or not at all. A killed run leaves only the state folder;
``resume=True`` continues from its ``last.pt`` (or from ``OUT/last.pt`` of a finished run, to
train further).

Batches. ``train.batch_size`` is per process; each step draws one *global* batch of
``batch_size × world_size`` indices from a seeded order (a permutation, or class-balanced weighted
draws with ``train.class_balance: sampler``) and process r takes the r-th slice, so N processes
see exactly the samples one process with N× the batch would.
"""

from __future__ import annotations

import csv
import functools
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from wsi_lpd.classes import ClassList
from wsi_lpd.data.augment import Augment
from wsi_lpd.data.contracts import Batch, LabelledPatchSet
from wsi_lpd.data.sampling import class_balanced_weights, pos_weight_from_labels, untrained_classes
from wsi_lpd.data.training_data import TrainingData, dataset_labels
from wsi_lpd.device import resolve_device
from wsi_lpd.errors import CheckpointError, ConfigError, DatasetError, TrainingDivergedError
from wsi_lpd.io import atomic_dir, atomic_file
from wsi_lpd.networks.checkpoint import save_checkpoint
from wsi_lpd.scores import confusion_matrix, label_scores, segmentation_scores
from wsi_lpd.train import distributed
from wsi_lpd.train.methods import Method, TrainContext
from wsi_lpd.train.registry import make_method
from wsi_lpd.train.training_config import TrainingConfig, TrainSection

log = logging.getLogger(__name__)

VAL_KEYS = ("val_mIoU", "val_F1", "val_mAP")
STATE_NAME = "last.pt"
BEST_NAME = "model.pt"


def state_dir(out_dir: str | Path) -> Path:
    """The resumable state folder of output ``out_dir``: ``OUT/../.OUT.resume``."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.resume"


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay ``lr0·(1 − t/T)^power``."""
    return float(base_lr * (1.0 - min(iteration, total) / total) ** power)


class GlobalBatchSampler(Sampler[list[int]]):
    """Endless batches of indices: global batches of ``batch_size × world`` from a seeded order
    per epoch, this process's slice of each (see the module docstring).

    ``weights`` (N,) draws the order with replacement in proportion to them (class balance);
    otherwise a permutation. ``start``: global batches to skip (resume).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ) -> None:
        if n < world:
            raise DatasetError(f"{n} training patches cannot feed {world} processes")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.start = start

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch (the last partial batch is dropped; at least 1)."""
        return max(1, self.n // (self.batch * self.world))

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch * self.world
        epoch, b = divmod(self.start, self.batches_per_epoch)
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            if self.p is None:
                order = rng.permutation(self.n)
            else:
                order = rng.choice(self.n, size=self.n, replace=True, p=self.p)
            for k in range(b, self.batches_per_epoch):
                chunk = order[k * g : (k + 1) * g]
                yield np.array_split(chunk, self.world)[self.rank].tolist()
            epoch, b = epoch + 1, 0


@dataclass
class TrainResult:
    """Where the outputs are and how training went (``best_score`` by ``best_metric``)."""

    checkpoint: Path
    iterations: int
    best_score: float | None
    best_metric: str | None
    wall_time_s: float
    images_per_s: float
    untrained_classes: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LoopState:
    """What carries over between rounds and across a resume."""

    iteration: int = 0
    best: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    saved: dict[str, Any] | None = None  # a loaded last.pt, applied by the round it belongs to
    images: int = 0


@dataclass
class Run:
    """Fixed facts of one training run shared by its rounds."""

    context: TrainContext
    val_loader: DataLoader[Batch] | None
    metric: str | None  # "val_mIoU", "val_F1" or None (no validation)
    contract: dict[str, Any]
    progress: Callable[[int, int, dict[str, float]], None] | None


@dataclass
class Optimisation:
    """What one training step needs besides the method and its batches: AdamW over the trainable
    parameters, AMP on CUDA (bf16 where supported, else fp16 with a gradient scaler), the
    device, the memory format of images and the number of data-parallel processes."""

    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    scaler: torch.amp.GradScaler
    channels_last: bool = False
    world: int = 1

    @classmethod
    def create(
        cls, model: nn.Module, s: TrainSection, device: torch.device, world: int = 1
    ) -> Optimisation:
        """AdamW with ``train.lr``, ``betas``, ``weight_decay``; AMP when ``train.amp`` on CUDA;
        with ``train.channels_last`` on CUDA, ``model`` is converted to channels-last here and
        batches follow in :meth:`to_device`."""
        if s.channels_last and device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
        cuda = device.type == "cuda"
        use_amp = s.amp and cuda
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(
            optimizer, params, device, use_amp, amp_dtype, scaler, s.channels_last and cuda, world
        )

    def to_device(self, batch: Batch) -> Batch:
        """``batch`` on the device (images channels-last when configured)."""

        def move(t: Tensor) -> Tensor:
            return t.to(self.device, non_blocking=True)

        image = move(batch["image"])
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        moved: Batch = {
            "image": image,
            "labels": move(batch["labels"]),
            "known": move(batch["known"]),
            "slide": move(batch["slide"]),
        }
        if "mask" in batch:
            moved["mask"] = move(batch["mask"])
        return moved


def train_step(
    method: Method[Any],
    batches: Mapping[str, Batch],
    step: int,
    opt: Optimisation,
    iteration: int,
) -> dict[str, Tensor]:
    """One optimiser step of ``method``: its losses under autocast, a finite-loss check (naming
    ``iteration``), the scaled backward pass, the gradient all-reduce over processes, the step.
    ``step``: the iteration within the round (warm-ups count from it). Returns the loss terms."""
    with torch.autocast(opt.device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
        losses = method.losses(batches, step)
    lr = float(opt.optimizer.param_groups[0]["lr"])
    _check_finite(losses["total"], iteration, method.name, lr)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(losses["total"]).backward()
    if opt.world > 1:
        _average_gradients(opt.params, opt.world)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return losses


def _as_dataset(patches: LabelledPatchSet) -> Dataset[Batch]:
    """A labelled patch set as the map-style dataset it is (a DataLoader needs only
    ``__len__`` and ``__getitem__``)."""
    return cast("Dataset[Batch]", patches)


def train(
    config: TrainingConfig,
    train_set: LabelledPatchSet,
    val_set: LabelledPatchSet | None,
    classes: ClassList,
    *,
    mpp: float,
    patch_px: int,
    normalisation: Mapping[str, Any],
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    finalise: Callable[[Path, TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``config.method`` and publish ``out_dir`` atomically (see the module docstring).

    ``train_set`` items hold ``image``, ``labels`` (and ``known``, ``mask`` when present); its
    ``.labels`` (N×C, 1/0/−1) drive class balance and untrained-class detection. ``finalise``
    (rank 0) may add files (``run.json``) to the folder before it is published. In a process
    group (:mod:`wsi_lpd.train.distributed`) every rank calls this; gradients are averaged over
    ranks.
    """
    s = config.train
    out_dir = Path(out_dir)
    work = state_dir(out_dir)
    main = distributed.is_main()
    dev = resolve_device(distributed.process_device(device))
    if len(train_set) == 0:
        raise DatasetError("train: the training set is empty")
    labels = _three_state(dataset_labels(train_set), classes)
    if main:
        _prepare_state_dir(work, out_dir, resume)
    distributed.barrier()
    resuming = resume and (work / STATE_NAME).exists()
    if resume and not resuming:
        raise ConfigError(f"{out_dir}: --resume given but there is no {STATE_NAME} to resume from")

    seed_everything(s.seed)
    method = make_method(config, classes).to(dev)
    single = method.needs_single_label()
    untrained = untrained_classes(labels, classes.foreground_names, single_label=single)
    if untrained:
        why = "single-label patch" if single else "positive patch"
        log.warning(
            "%s: no %s of class(es) %s: not trained, never predicted",
            config.method,
            why,
            ", ".join(untrained),
        )
    context = TrainContext(
        config=config,
        classes=classes,
        train_set=train_set,
        labels=labels,
        mpp=mpp,
        patch_px=patch_px,
        normalisation=dict(normalisation),
        device=dev,
        work_dir=work,
        resuming=resuming,
        is_main=main,
        barrier=distributed.barrier,
    )
    _apply_class_balance(method, labels, s.class_balance, config.source)
    method.prepare(context)

    val_loader, metric = None, None
    if val_set is not None and len(val_set) > 0 and main:
        val_loader = DataLoader(
            _as_dataset(val_set), batch_size=s.batch_size, num_workers=s.workers
        )
        metric = "val_mIoU" if val_set.has_masks else "val_F1"
        log.info("validation on %d patches, best checkpoint by %s", len(val_set), metric)
    contract = {
        "classes": classes,
        "mpp": mpp,
        "patch_px": patch_px,
        "normalisation": dict(normalisation),
        "model_config": config.model_mapping,
        "untrained_classes": untrained,
        "augmentation": Augment.from_dict(s.augment).to_dict(),
    }
    run = Run(context, val_loader, metric, contract, progress)
    state = LoopState()
    if resuming:
        state.saved = _read_state(work / STATE_NAME)
        state.history = list(state.saved.get("history", []))
        state.best = state.saved.get("best_score")
        log.info("resuming from %s at iteration %d", work / STATE_NAME, state.saved["iteration"])

    started = time.time()
    offset = 0
    current: Method[Any] | None = method
    final: Method[Any] = method
    while current is not None:
        final = current
        offset += run_loop(current, run, state, offset)
        best = work / BEST_NAME if state.best is not None and (work / BEST_NAME).exists() else None
        current = current.next_round(context, best)
    wall = time.time() - started

    result = TrainResult(
        checkpoint=out_dir / BEST_NAME,
        iterations=offset,
        best_score=state.best,
        best_metric=metric,
        wall_time_s=wall,
        images_per_s=state.images / max(wall, 1e-9),
        untrained_classes=untrained,
        history=state.history,
    )
    if main:
        if state.best is None:
            _save_model(work / BEST_NAME, final, run, offset, None)
        columns = ("round", "iteration", "epoch", "lr", *final.loss_keys, "images_per_s", *VAL_KEYS)
        write_log(work / "train_log.csv", state.history, columns)
        plot_curves(
            work / "curves.png", state.history, config.method, final.loss_keys, final.curve_keys
        )
        with atomic_dir(out_dir) as tmp:
            for entry in work.iterdir():
                entry.rename(tmp / entry.name)
            if finalise is not None:
                finalise(tmp, result)
        shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    return result


def run_loop(method: Method[Any], run: Run, state: LoopState, offset: int) -> int:
    """Train ``method`` for one round starting at global iteration ``offset``; returns the
    round's iteration count. Writes ``last.pt`` each epoch and the best ``model.pt`` (rank 0)."""
    ctx = run.context
    s, dev = ctx.config.train, ctx.device
    world, rank = distributed.world_size(), distributed.rank()
    sets = method.datasets(ctx)
    samplers = {
        name: GlobalBatchSampler(
            len(ds),
            s.batch_size,
            seed=s.seed + k,
            weights=method.sample_weights if ds is ctx.train_set else None,
            rank=rank,
            world=world,
        )
        for k, (name, ds) in enumerate(sets.items())
    }
    iters_per_epoch = max(sp.batches_per_epoch for sp in samplers.values())
    round_iters = s.max_iters or s.epochs * iters_per_epoch
    end = offset + round_iters
    opt = Optimisation.create(method.model, s, dev, world)
    start = offset
    if state.saved is not None and offset <= state.saved["iteration"] <= end:
        start = _restore(method, opt.optimizer, state.saved, dev)
        state.saved = None
    elif state.saved is not None and state.saved["iteration"] > end:
        state.iteration = end  # this round finished before the interruption
        return round_iters
    for sp in samplers.values():
        sp.start = start - offset
    loaders = {
        name: iter(
            DataLoader(
                _as_dataset(ds),
                batch_sampler=samplers[name],
                num_workers=s.workers,
                pin_memory=dev.type == "cuda",
            )
        )
        for name, ds in sets.items()
    }
    if world > 1:
        _broadcast_from_main(method.model)
    best_after = method.best_after()
    method.model.train()
    running: dict[str, float] = {}
    seen, t_window = 0, time.time()
    for it in range(start, end):
        step = it - offset
        lr = poly_lr(s.lr, step, round_iters, s.poly_power)
        for group in opt.optimizer.param_groups:
            group["lr"] = lr
        batches = {name: opt.to_device(next(loader)) for name, loader in loaders.items()}
        losses = train_step(method, batches, step, opt, it + 1)
        n_images = sum(int(b["image"].shape[0]) for b in batches.values()) * world
        seen += n_images
        state.images += n_images
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["_n"] = running.get("_n", 0.0) + 1
        done = it + 1
        state.iteration = done
        end_of_epoch = (step + 1) % iters_per_epoch == 0 or done == end
        if done % s.log_every == 0 or end_of_epoch:
            row = {
                "round": method.round,
                "iteration": done,
                "epoch": (step + 1) / iters_per_epoch,
                "lr": lr,
                **{k: running[k] / running["_n"] for k in method.loss_keys if k in running},
                "images_per_s": seen / max(time.time() - t_window, 1e-9),
            }
            state.history.append(row)
            running, seen, t_window = {}, 0, time.time()
            if ctx.is_main:
                log.info("iteration %d/%d: %s", done, end, _fmt(row, method.loss_keys))
                if run.progress:
                    run.progress(
                        done, offset + round_iters * (method.rounds - method.round + 1), row
                    )
        if end_of_epoch and run.val_loader is not None and run.metric is not None:
            scores = evaluate(
                method, run.val_loader, ctx.classes, dev, s.val_label_mode, run.metric
            )
            state.history[-1].update(scores)
            score = scores.get(run.metric, float("nan"))
            log.info("iteration %d: validation %s", done, _fmt(scores, VAL_KEYS))
            if (
                np.isfinite(score)
                and done >= best_after
                and (state.best is None or score > state.best)
            ):
                state.best = score
                _save_model(ctx.work_dir / BEST_NAME, method, run, done, score)
        if end_of_epoch and ctx.is_main:
            _save_state(ctx.work_dir / STATE_NAME, method, opt.optimizer, state)
    return round_iters


def _broadcast_from_main(model: nn.Module) -> None:
    """Every process starts from rank 0's weights and buffers."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Data-parallel step: one coalesced all-reduce averages the gradients over the processes.

    A parameter without a gradient on every process keeps none (as in one process: the
    optimiser skips it); one with a gradient on some processes gets their sum / world (the
    others contributed zeros: the mean over the global batch). The reduction runs in the widest
    gradient dtype, at least float32 (float64 gradients stay float64).
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dtype = functools.reduce(torch.promote_types, (g.dtype for g in grads), torch.float32)
    device = grads[0].device
    flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
    flat = torch.cat([flags, *(g.reshape(-1).to(dtype) for g in grads)])
    dist.all_reduce(flat)
    has, offset = flat[: len(params)], len(params)
    for p, g, h in zip(params, grads, has.tolist(), strict=True):
        n = g.numel()
        if h == 0:
            p.grad = None
        else:
            p.grad = (flat[offset : offset + n] / world).view_as(g).to(g.dtype)
        offset += n


def _fmt(row: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)


def _check_finite(total: Tensor, iteration: int, method: str, lr: float) -> None:
    ok = torch.isfinite(total.detach()).float().reshape(1)
    if distributed.is_distributed():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not bool(ok.item()):
        raise TrainingDivergedError(
            f"{method}: the loss is {float(total.detach())} at iteration {iteration} (lr {lr:.3g});"
            " lower train.lr or check the training data"
        )


def _three_state(labels: np.ndarray, classes: ClassList) -> np.ndarray:
    """(N, C) int8 labels: 1 positive, 0 negative, −1 unknown (0/1 labels are all known)."""
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[1] != classes.num_foreground:
        raise DatasetError(
            f"training labels of shape {arr.shape}, expected (N, {classes.num_foreground})"
        )
    return arr.astype(np.int8)


def _apply_class_balance(
    method: Method[Any], labels: np.ndarray, mode: str, source: str | None
) -> None:
    """``sampler``: class-balanced draw weights; ``pos_weight``: BCE positive weights (L_cls)."""
    if mode == "sampler":
        method.sample_weights = class_balanced_weights(labels)
        log.info("class balance: weighted sampling of the training patches")
    elif mode == "pos_weight":
        weights = torch.as_tensor(pos_weight_from_labels(labels))
        if not method.set_pos_weight(weights):
            where = f"{source}: " if source else ""
            raise ConfigError(
                f"{where}train.class_balance: pos_weight weighs L_cls; {method.name} has none "
                "(use sampler)"
            )
        log.info("class balance: L_cls pos_weight %s", weights.tolist())


@torch.no_grad()
def evaluate(
    method: Method[Any],
    loader: DataLoader[Batch],
    classes: ClassList,
    device: torch.device,
    label_mode: str,
    metric: str,
) -> dict[str, float]:
    """Validation scores: ``val_mIoU`` (pixels, protocol ``lpd``) when the set has masks, else
    ``val_F1`` and ``val_mAP`` of the image-level predictions against the held-out labels."""
    model = method.model
    was_training = model.training
    model.eval()
    try:
        if metric == "val_mIoU":
            n = len(classes.all)
            cm = np.zeros((n, n), dtype=np.int64)
            for batch in loader:
                images = batch["image"].to(device)
                given = batch["labels"].to(device) if label_mode == "given" else None
                probs = method.predict(images, image_labels=given)
                if probs.shape[-2:] != batch["mask"].shape[-2:]:
                    probs = nn.functional.interpolate(
                        probs, size=batch["mask"].shape[-2:], mode="bilinear"
                    )
                cm += confusion_matrix(batch["mask"].numpy(), probs.argmax(dim=1).cpu().numpy(), n)
            miou = segmentation_scores(cm, "lpd", classes.names)["miou"]
            return {"val_mIoU": float("nan") if miou is None else float(miou)}
        label_probs: list[Tensor] = []
        truth: list[Tensor] = []
        for batch in loader:
            label_probs.append(torch.sigmoid(method.label_logits(batch["image"].to(device))).cpu())
            truth.append(torch.where(batch["known"] > 0.5, batch["labels"], -1.0))
        scores = label_scores(
            torch.cat(label_probs).numpy(), torch.cat(truth).numpy().astype(np.int8)
        )
        return {"val_F1": float(scores["f1"]), "val_mAP": float(scores["map"])}
    finally:
        model.train(was_training)


def _prepare_state_dir(work: Path, out_dir: Path, resume: bool) -> None:
    if resume and not (work / STATE_NAME).exists() and (out_dir / STATE_NAME).exists():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(out_dir, work, ignore=shutil.ignore_patterns("run.json"))
        log.info("resuming the finished run in %s", out_dir)
    elif not resume and work.exists():
        log.warning("%s: removing the state of an interrupted run (use --resume to continue)", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)


def _save_model(
    path: Path, method: Method[Any], run: Run, iteration: int, score: float | None
) -> None:
    c = run.contract
    save_checkpoint(
        path,
        method.model,
        method=run.context.config.method,
        classes=c["classes"],
        mpp=c["mpp"],
        patch_px=c["patch_px"],
        normalisation=c["normalisation"],
        model_config=c["model_config"],
        training={
            "iteration": iteration,
            "best_metric": run.metric,
            "best_score": score,
            "settings": run.context.config.train.model_dump(),
            **method.record(),
        },
        untrained_classes=c["untrained_classes"],
        augmentation=c["augmentation"],
    )


def _save_state(
    path: Path, method: Method[Any], optimizer: torch.optim.Optimizer, state: LoopState
) -> None:
    """``last.pt``: weights, optimiser, iteration, best score, history (atomic)."""
    with atomic_file(path) as tmp:
        torch.save(
            {
                "state_dict": method.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": state.iteration,
                "round": method.round,
                "best_score": state.best,
                "history": state.history,
            },
            tmp,
        )


def _read_state(path: Path) -> dict[str, Any]:
    try:
        saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        int(saved["iteration"])
    except Exception as exc:  # truncated zip, pickle refusals, missing keys
        raise CheckpointError(f"{path}: cannot resume from it ({type(exc).__name__})") from exc
    return saved


def _restore(
    method: Method[Any],
    optimizer: torch.optim.Optimizer,
    saved: Mapping[str, Any],
    device: torch.device,
) -> int:
    try:
        method.model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"last.pt does not fit this model ({exc})") from exc
    for group in optimizer.state.values():
        for k, v in group.items():
            if isinstance(v, Tensor):
                group[k] = v.to(device)
    return int(saved["iteration"])


def write_log(path: Path, history: list[dict[str, float]], columns: tuple[str, ...]) -> None:
    """``train_log.csv`` (atomic): one row per logging interval, the given columns."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in columns})


def plot_curves(
    path: Path,
    history: list[dict[str, float]],
    title: str,
    loss_keys: tuple[str, ...],
    bold: tuple[str, ...] = ("total",),
) -> None:
    """``curves.png`` (atomic): the loss terms that are not all zero, and the validation scores."""
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
    drawn = []
    for key in VAL_KEYS:
        val = [(r["iteration"], r[key]) for r in history if key in r]
        if val:
            ax_val.plot(*zip(*val, strict=True), marker="o", label=key)
            drawn.append(key)
    ax_val.set_ylim(0, 1)
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("validation score")
    ax_val.set_title("validation (" + ", ".join(drawn) + ")" if drawn else "no validation set")
    if drawn:
        ax_val.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@dataclass
class TrainJob:
    """Everything one training process needs (picklable: sent to spawned processes)."""

    config: TrainingConfig
    data: TrainingData
    out_dir: Path
    device: str = "auto"
    resume: bool = False
    finalise: Callable[[Path, TrainResult], None] | None = None


def run_job(job: TrainJob) -> TrainResult:
    """Train ``job`` in this process (joining a torchrun-style process group when the
    environment describes one)."""
    distributed.init_from_env(job.device)
    d = job.data
    return train(
        job.config,
        d.train_set,
        d.val_set,
        d.classes,
        mpp=d.mpp,
        patch_px=d.patch_px,
        normalisation=d.normalisation,
        out_dir=job.out_dir,
        device=job.device,
        resume=job.resume,
        finalise=job.finalise,
    )


def launch_training(job: TrainJob, nproc: int = 1) -> None:
    """Run ``job`` in ``nproc`` data-parallel processes (1: here)."""
    distributed.launch(nproc, job.device, run_job, job)
