"""Train LPD (or a baseline) on patch-level labels: OUT/ appears at once with model.pt, last.pt,
train_log.csv, curves.png and run.json; an interrupted run continues with --resume."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wsi_lpd.cli._common import setup_logging
from wsi_lpd.run_metadata import write_run_metadata

log = logging.getLogger("wsi_lpd.train")


def _write_run(
    folder: Path, result: Any, *, parameters: dict, inputs: dict, started: float
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


def command(
    out: Annotated[Path, typer.Option(help="Output folder (model.pt, logs), written at once.")],
    model_config: Annotated[
        Path | None,
        typer.Option(help="Training config YAML (sections model, loss, data, train, hisynseg)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Deprecated alias of --model-config.", hidden=True)
    ] = None,
    patches: Annotated[
        list[Path] | None, typer.Option(help="Patch store(s) from `wsi-lpd patches`.")
    ] = None,
    val_patches: Annotated[
        Path | None, typer.Option(help="Validation patch store (else train.val_fraction held out).")
    ] = None,
    bcss_dir: Annotated[
        Path | None, typer.Option(help="BCSS-WSSS / LUAD-HistoSeg folder instead of stores.")
    ] = None,
    layout: Annotated[str, typer.Option(help="Folder layout: bcss or luad.")] = "bcss",
    dataset_mpp: Annotated[
        float | None, typer.Option(help="µm/px of the BCSS-style patches (needed with --bcss-dir).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="lpd, cam, pbip or hisynseg (overrides model.method).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    max_iters: Annotated[int | None, typer.Option(help="Override train.max_iters.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Override train.batch_size (per process).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda[:N] or cuda:auto (a free GPU).")
    ] = "auto",
    nproc: Annotated[
        int, typer.Option(help="Data-parallel processes (one per GPU; gloo on the CPU).")
    ] = 1,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run (or extend a finished one).")
    ] = False,
) -> None:
    """Train a model from patch-level labels."""
    from wsi_lpd.data.training_data import build_training_data
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.train.engine import TrainJob, launch_training
    from wsi_lpd.train.training_config import load_training_config

    started = time.time()
    if config is not None:
        if model_config is not None:
            raise ConfigError("train: give --model-config only (--config is its old name)")
        log.warning("--config is deprecated for train: use --model-config %s", config)
        model_config = config
    if model_config is None:
        raise ConfigError("train: --model-config FILE is required")
    cfg = load_training_config(model_config, method)
    overrides = {
        k: v
        for k, v in dict(
            epochs=epochs, max_iters=max_iters, batch_size=batch_size, workers=workers, seed=seed
        ).items()
        if v is not None
    }
    if overrides:
        cfg = cfg.with_train(**overrides)
    data = build_training_data(
        cfg,
        patches=patches,
        val_patches=val_patches,
        bcss_dir=bcss_dir,
        layout=layout,
        dataset_mpp=dataset_mpp,
    )
    setup_logging()
    n_val = len(data.val_set) if data.val_set is not None else 0  # type: ignore[arg-type]
    log.info(
        "training %s on %d patches (%d held out for validation; %s), %.2f µm/px, %d px, "
        "%d process(es)",
        cfg.method,
        len(data.train_set),  # type: ignore[arg-type]
        n_val,
        ", ".join(data.classes.foreground_names),
        data.mpp,
        data.patch_px,
        nproc,
    )
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
        inputs={
            "patches": [str(p) for p in patches or []],
            "bcss_dir": str(bcss_dir or ""),
            "n_train": len(data.train_set),  # type: ignore[arg-type]
            "n_val": n_val,
        },
        started=started,
    )
    job = TrainJob(cfg, data, out, device=device, resume=resume, finalise=finalise)
    launch_training(job, nproc)
    log.info("wrote %s", out / "model.pt")
