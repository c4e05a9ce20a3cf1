"""Train LPD (or a baseline) on patch-level labels: OUT/ appears at once with model.pt, last.pt,
train_log.csv, curves.png and run.json; an interrupted run continues with --resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import setup_logging

log = logging.getLogger("wsi_lpd.train")


def method_name(value: str) -> str:
    """``--method``: a name of :data:`wsi_lpd.train.registry.METHODS` (read when used, so the CLI
    starts without importing torch)."""
    from wsi_lpd.train.registry import method_names

    if value not in method_names():
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(method_names())}")
    return value


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
        str | None,
        typer.Option(
            help="A method of wsi_lpd.train.registry (lpd, cam, …); overrides model.method.",
            parser=method_name,
        ),
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
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.train.registry import load_training_config
    from wsi_lpd.train.stage import train_model

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
    train_model(
        cfg,
        out,
        model_config=model_config,
        patches=patches,
        val_patches=val_patches,
        bcss_dir=bcss_dir,
        layout=layout,
        dataset_mpp=dataset_mpp,
        device=device,
        nproc=nproc,
        resume=resume,
        on_valid=setup_logging,
    )
