"""Train LPD (or a baseline) on patch-level labels; writes model.pt, train_log.csv, curves.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines._common import (
    load_config_section,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)

NORMALISATIONS = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}


def _normalisation(value: Any) -> dict[str, Any]:
    from wsi_lpd.datasets import LPD_NORMALISATION
    from wsi_lpd.errors import ConfigError

    if value in (None, "lpd"):
        return dict(LPD_NORMALISATION)
    if isinstance(value, str) and value in NORMALISATIONS:
        return NORMALISATIONS[value]
    if isinstance(value, dict) and {"mean", "std"} <= set(value):
        return value
    raise ConfigError(f"data.normalisation: expected lpd, imagenet or {{mean, std}}, got {value!r}")


@one_line_errors
def command(
    config: Annotated[
        Path, typer.Option(help="Training config YAML (sections model, loss, train).")
    ],
    out: Annotated[Path, typer.Option(help="Output directory for model.pt and logs.")],
    patches: Annotated[
        list[Path] | None, typer.Option(help="Patch store(s) from `wsi-lpd patches`.")
    ] = None,
    val_patches: Annotated[
        Path | None, typer.Option(help="Patch store with masks for validation.")
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
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Train a model from patch-level labels."""
    setup_logging(verbose)
    import logging

    import numpy as np
    import yaml
    from torch.utils.data import ConcatDataset
    from tqdm import tqdm

    from wsi_lpd.augment import Augment
    from wsi_lpd.datasets import BcssWsssDataset, PatchDataset
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.training import TrainConfig, train

    log = logging.getLogger("wsi_lpd.train")
    started = time.time()
    if not config.is_file():
        raise ConfigError(f"{config}: training config not found")
    raw = yaml.safe_load(config.read_text()) or {}
    data_cfg = load_config_section(config, "data")
    train_raw = dict(raw.get("train") or {})
    for key, value in (
        ("epochs", epochs),
        ("max_iters", max_iters),
        ("batch_size", batch_size),
        ("workers", workers),
        ("seed", seed),
    ):
        if value is not None:
            train_raw[key] = value
    chosen = method or (raw.get("model") or {}).get("method", "lpd")
    run_training: Any = train
    if chosen == "hisynseg":  # its own trainer, same inputs and outputs
        from wsi_lpd.hisynseg.training import HisynSegConfig, train_hisynseg

        cfg: Any = HisynSegConfig.from_mapping({**raw, "train": train_raw}, method=chosen)
        run_training = train_hisynseg
    else:
        cfg = TrainConfig.from_mapping({**raw, "train": train_raw}, method=method)
    s = cfg.train
    norm = _normalisation(data_cfg.get("normalisation"))
    augment = Augment(seed=s.seed, **s.augment)

    if bool(patches) == bool(bcss_dir):
        raise ConfigError("train: give either --patches STORE… or --bcss-dir DIR")
    if patches:
        sets = [PatchDataset(p, norm, augment) for p in patches]
        ref = sets[0]
        for other, path in zip(sets[1:], patches[1:], strict=True):
            if (
                other.classes != ref.classes
                or other.patch_px != ref.patch_px
                or not np.isclose(other.mpp, ref.mpp)
            ):
                raise ConfigError(f"{path}: classes, mpp or patch size differ from {patches[0]}")
        classes, mpp, patch_px = ref.classes, ref.mpp, ref.patch_px
        val_set = PatchDataset(val_patches, norm) if val_patches else None
        if val_set is None and ref.has_masks and len(sets) == 1 and s.val_fraction > 0:
            rng = np.random.default_rng(s.seed)
            order = rng.permutation(len(ref))
            n_val = max(1, round(len(ref) * s.val_fraction))
            sets = [PatchDataset(patches[0], norm, augment, indices=np.sort(order[n_val:]))]
            val_set = PatchDataset(patches[0], norm, indices=np.sort(order[:n_val]))
            log.info("holding out %d of %d patches (with masks) for validation", n_val, len(ref))
        train_set = sets[0] if len(sets) == 1 else ConcatDataset(sets)
        if len(sets) > 1:
            train_set.labels = np.concatenate([d.labels for d in sets])  # type: ignore[attr-defined]
    else:
        if dataset_mpp is None:
            raise ConfigError(
                "train: --dataset-mpp is needed with --bcss-dir (µm/px of the patches)"
            )
        train_set = BcssWsssDataset(
            bcss_dir, "train", layout=layout, normalisation=norm, augment=augment
        )
        val_set = BcssWsssDataset(bcss_dir, "valid", layout=layout, normalisation=norm)
        classes, mpp = train_set.classes, dataset_mpp
        patch_px = int(train_set[0]["image"].shape[-1])

    log.info(
        "training %s on %d patches (%s), %.2f µm/px, %d px",
        cfg.method,
        len(train_set),
        ", ".join(classes.foreground_names),
        mpp,
        patch_px,
    )
    # Every file in OUT is written atomically; last.pt (each epoch) makes --resume possible.
    out.mkdir(parents=True, exist_ok=True)
    if resume and not (out / "last.pt").exists():
        raise ConfigError(f"{out}: --resume given but there is no last.pt to resume from")
    bar = tqdm(desc=f"train {cfg.method}", unit="it", dynamic_ncols=True)

    def report(done: int, total: int, row: dict[str, float]) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=f"{row['total']:.3f}", img_s=f"{row['images_per_s']:.1f}")
        bar.refresh()

    result = run_training(
        cfg,
        train_set,
        val_set,
        classes,
        mpp=mpp,
        patch_px=patch_px,
        normalisation=norm,
        out_dir=out,
        device=device,
        resume=resume,
        progress=report,
    )
    bar.close()
    write_run_metadata(
        out,
        "train",
        parameters={
            "method": cfg.method,
            "config": str(config),
            "device": device,
            "train": {k: v for k, v in vars(s).items()},
            "loss": cfg.loss,
        },
        inputs={
            "patches": [str(p) for p in patches or []],
            "bcss_dir": str(bcss_dir or ""),
            "n_train": len(train_set),
            "n_val": len(val_set) if val_set else 0,
        },
        started=started,
        iterations=result.iterations,
        best_val_mIoU=result.best_miou,
        images_per_s=round(result.images_per_s, 2),
    )
    log.info("wrote %s (best validation mIoU %s)", out / "model.pt", result.best_miou)
