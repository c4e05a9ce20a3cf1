"""The train stage: a model trained from patch-level labels into one folder.

:func:`train_model` opens the training data, trains in ``nproc`` processes and publishes ``OUT/``
at once with ``model.pt``, ``last.pt``, ``train_log.csv``, ``curves.png`` and ``run.json``; its
options are one :class:`~wsi_lpd.train.training_config.TrainingConfig` (the training YAML).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wsi_lpd.data.training_data import build_training_data
from wsi_lpd.run_metadata import write_run_metadata
from wsi_lpd.train.engine import TrainJob, TrainResult, launch_training
from wsi_lpd.train.training_config import TrainingConfig

log = logging.getLogger("wsi_lpd.train")


def _write_run(
    folder: Path,
    result: TrainResult,
    *,
    parameters: dict[str, Any],
    inputs: dict[str, Any],
    started: float,
) -> None:
    """``run.json`` inside the folder about to be published."""
    write_run_metadata(
        folder,
        "train",
        parameters=parameters,
        inputs=inputs,
        started=started,
        iterations=result.iterations,
        best_metric=result.best_metric,
        best_score=result.best_score,
        best_val_mIoU=result.best_score if result.best_metric == "val_mIoU" else None,
        untrained_classes=result.untrained_classes,
        images_per_s=round(result.images_per_s, 2),
    )


def train_model(
    cfg: TrainingConfig,
    out: str | os.PathLike[str],
    *,
    model_config: str | os.PathLike[str],
    patches: Sequence[Path] | None = None,
    val_patches: Path | None = None,
    bcss_dir: Path | None = None,
    layout: str = "bcss",
    dataset_mpp: float | None = None,
    device: str = "auto",
    nproc: int = 1,
    resume: bool = False,
    on_valid: Callable[[], None] | None = None,
) -> Path:
    """Train ``cfg`` on patch stores (``patches``, ``val_patches``) or a BCSS-style folder
    (``bcss_dir`` with ``layout`` and ``dataset_mpp`` µm/px) into ``out``; returns ``out/model.pt``.

    ``model_config`` (the YAML ``cfg`` came from) is recorded in run.json; ``on_valid`` is called
    once the data are opened."""
    started = time.time()
    out = Path(out)
    data = build_training_data(
        cfg,
        patches=patches,
        val_patches=val_patches,
        bcss_dir=bcss_dir,
        layout=layout,
        dataset_mpp=dataset_mpp,
    )
    if on_valid is not None:
        on_valid()
    n_val = len(data.val_set) if data.val_set is not None else 0
    log.info(
        "training %s on %d patches (%d held out for validation; %s), %.2f µm/px, %d px, "
        "%d process(es)",
        cfg.method,
        len(data.train_set),
        n_val,
        ", ".join(data.classes.foreground_names),
        data.mpp,
        data.patch_px,
        nproc,
    )
    inputs: dict[str, Any] = {
        "patches": [str(p) for p in patches or []],
        "bcss_dir": str(bcss_dir or ""),
        "n_train": len(data.train_set),
        "n_val": n_val,
    }
    finalise = functools.partial(
        _write_run,
        parameters={
            "method": cfg.method,
            "model_config": str(model_config),
            "device": device,
            "nproc": nproc,
            "train": cfg.train.model_dump(),
            "loss": cfg.loss_record(),
        },
        inputs=inputs,
        started=started,
    )
    job = TrainJob(cfg, data, out, device=device, resume=resume, finalise=finalise)
    launch_training(job, nproc)
    log.info("wrote %s", out / "model.pt")
    return out / "model.pt"
