"""Score mosaics, or a model on patches / BCSS-WSSS, against ground truth: IoU, Dice, FwIoU."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines._common import (
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_file

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("wsi_lpd.evaluate")

CONFIG_KEYS = (
    "pred",
    "truth",
    "model",
    "patches",
    "bcss_dir",
    "split",
    "layout",
    "label_mode",
    "protocol",
    "batch_size",
    "device",
)
MASK_SUFFIXES = (".tif", ".tiff")
GEOJSON_SUFFIXES = (".geojson", ".json", ".gz")


def _paths(value: Any, key: str) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    if isinstance(value, list | tuple):
        return [Path(v) for v in value]
    raise ConfigError(f"evaluate.{key}: expected a path or a list of paths")


def _evaluate_mosaics(preds: list[Path], truths: list[Path]) -> tuple[Any, dict[str, np.ndarray]]:
    """Mode A: one confusion matrix per (mosaic, truth) pair, keyed by slide id."""
    from wsi_lpd.errors import AnnotationError
    from wsi_lpd.metrics import (
        class_lookup,
        mosaic_confusion_vs_annotations,
        mosaic_confusion_vs_mask,
    )
    from wsi_lpd.mosaic import open_mosaic
    from wsi_lpd.patch_store import class_geometries

    if len(preds) != len(truths):
        raise ConfigError(
            f"evaluate: {len(preds)} --pred mosaic(s) but {len(truths)} --truth file(s); "
            "they pair up by order"
        )
    classes = None
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
        name = truth_path.name.lower()
        if name.endswith(MASK_SUFFIXES):
            from wsi_lpd.labelmask import read_label_mask

            truth = read_label_mask(truth_path)
            n_truth = len(truth.classes.all)
            if truth.mask.size and int(truth.mask.max()) >= n_truth:
                raise AnnotationError(
                    f"{truth_path}: mask value {int(truth.mask.max())} outside its "
                    f"{n_truth} classes"
                )
            lut = class_lookup(truth.classes.names, classes.names, str(truth_path))
            slide_mpp = float(mosaic.attrs["slide_mpp"])
            cm = mosaic_confusion_vs_mask(
                mosaic.labels,
                mosaic.level0_per_px,
                lut[truth.mask],
                truth.mpp / slide_mpp,
                n,
                classes.background_index,
            )
        elif name.endswith(GEOJSON_SUFFIXES):
            geoms = class_geometries(truth_path, classes)
            cm = mosaic_confusion_vs_annotations(mosaic.labels, mosaic.level0_per_px, geoms, n)
        else:
            raise ConfigError(f"{truth_path}: --truth must be a label mask TIFF or a GeoJSON file")
        key = mosaic.slide_id
        if key in per_slide:
            per_slide[key] = per_slide[key] + cm
        else:
            per_slide[key] = cm
        log.info("%s vs %s: %d px evaluated", pred_path, truth_path, int(cm.sum()))
    return classes, per_slide


def _evaluate_model(opts: dict[str, Any]) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
    """Mode B: the model on a patch store with masks or a BCSS-WSSS split."""
    from wsi_lpd.classes import ClassList
    from wsi_lpd.datasets import BcssWsssDataset, PatchDataset
    from wsi_lpd.errors import CheckpointError, DatasetError
    from wsi_lpd.metrics import model_confusion
    from wsi_lpd.model.checkpoint import load_model

    model_path = Path(opts["model"])
    device = str(opts.get("device", "cpu"))
    model, contract = load_model(model_path, device)
    classes = ClassList.from_dict(contract["classes"])
    normalisation = contract["normalisation"]
    groups = None
    group_names: list[str] = []
    if opts.get("patches") is not None:
        store = Path(opts["patches"])
        dataset: Any = PatchDataset(store, normalisation=normalisation)
        if dataset.classes.names != classes.names:
            raise CheckpointError(
                f"{model_path}: classes {classes.names} differ from {store}'s "
                f"{dataset.classes.names}"
            )
        if not dataset.has_masks:
            raise DatasetError(f"{store}: the patch store has no ground-truth masks")
        if not math.isclose(dataset.mpp, float(contract["mpp"]), rel_tol=0.05):
            log.warning(
                "%s: patches at %.3g µm/px, the model was trained at %.3g µm/px",
                store,
                dataset.mpp,
                float(contract["mpp"]),
            )
        groups, group_names = dataset.slide_index, dataset.slides
    else:
        split = str(opts.get("split", "test"))
        if split == "train":
            raise ConfigError("evaluate.split: the train split has no masks; use valid or test")
        dataset = BcssWsssDataset(
            opts["bcss_dir"],
            split=split,
            classes=classes,
            layout=str(opts.get("layout", "bcss")),
            normalisation=normalisation,
        )
    pooled, per_group = model_confusion(
        model,
        dataset,
        len(classes.all),
        label_mode=str(opts.get("label_mode", "given")),
        batch_size=int(opts.get("batch_size", 16)),
        device=device,
        groups=groups,
    )
    per_slide = {group_names[g]: cm for g, cm in sorted(per_group.items())}
    return classes, pooled, per_slide


@one_line_errors
def command(
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and metrics.md.")],
    pred: Annotated[
        list[Path] | None, typer.Option("--pred", help="Mosaic(s) {slide}.ome.zarr (mode A).")
    ] = None,
    truth: Annotated[
        list[Path] | None,
        typer.Option("--truth", help="Label mask TIFF or GeoJSON per --pred (same order)."),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", help="model.pt (mode B).")] = None,
    patches: Annotated[
        Path | None, typer.Option("--patches", help="Patch store with masks (mode B).")
    ] = None,
    bcss_dir: Annotated[
        Path | None, typer.Option("--bcss-dir", help="BCSS-WSSS / LUAD-HistoSeg folder (mode B).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="valid | test (default test).")] = None,
    layout: Annotated[str | None, typer.Option(help="Layout: bcss | luad (default bcss).")] = None,
    label_mode: Annotated[
        str | None,
        typer.Option(help="Image labels: given (from truth) | predicted (default given)."),
    ] = None,
    protocol: Annotated[str | None, typer.Option(help="lpd | wsss-tissue (default lpd).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Mode B batch size (default 16).")] = None,
    device: Annotated[str | None, typer.Option(help="Mode B torch device (default cpu).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; reads `evaluate:`.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    import numpy as np

    from wsi_lpd.metrics import PROTOCOLS, format_table, segmentation_scores

    setup_logging(verbose)
    started = time.time()
    section = load_config_section(config, "evaluate", CONFIG_KEYS)
    opts = merge_options(
        section,
        pred=pred or None,
        truth=truth or None,
        model=model,
        patches=patches,
        bcss_dir=bcss_dir,
        split=split,
        layout=layout,
        label_mode=label_mode,
        protocol=protocol,
        batch_size=batch_size,
        device=device,
    )
    proto = str(opts.get("protocol", "lpd"))
    if proto not in PROTOCOLS:
        raise ConfigError(f"evaluate.protocol: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if opts.get("label_mode", "given") not in ("given", "predicted"):
        raise ConfigError(f"evaluate.label_mode: {opts['label_mode']!r} is not given or predicted")
    preds = _paths(opts.get("pred"), "pred")
    mode_b = opts.get("model") is not None
    if mode_b == bool(preds):
        raise ConfigError("evaluate: give either --pred with --truth, or --model")
    if mode_b and (opts.get("patches") is None) == (opts.get("bcss_dir") is None):
        raise ConfigError("evaluate: --model needs exactly one of --patches or --bcss-dir")

    if mode_b:
        classes, pooled, per_slide = _evaluate_model(opts)
        inputs: dict[str, Any] = {
            k: str(opts[k]) for k in ("model", "patches", "bcss_dir") if opts.get(k) is not None
        }
    else:
        truths = _paths(opts.get("truth"), "truth")
        classes, per_slide = _evaluate_mosaics(preds, truths)
        pooled = sum(per_slide.values())
        inputs = {"pred": [str(p) for p in preds], "truth": [str(p) for p in truths]}

    names = classes.names
    pooled_scores = segmentation_scores(pooled, proto, names)
    slide_scores = {k: segmentation_scores(cm, proto, names) for k, cm in per_slide.items()}
    result = {
        "protocol": proto,
        "mode": "model" if mode_b else "mosaic",
        "label_mode": opts.get("label_mode", "given") if mode_b else None,
        "classes": classes.to_dict(),
        "pooled": {**pooled_scores, "confusion_matrix": np.asarray(pooled).tolist()},
        "per_slide": {
            k: {**s, "confusion_matrix": per_slide[k].tolist()} for k, s in slide_scores.items()
        },
    }
    table = format_table(pooled_scores, title="pooled")
    markdown = "# wsi-lpd evaluate\n\n" + table
    for k, s in slide_scores.items():
        markdown += "\n" + format_table(s, title=k)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_file(out / "metrics.md") as tmp:
        tmp.write_text(markdown)
    parameters = {k: opts.get(k) for k in CONFIG_KEYS if k not in inputs and opts.get(k)}
    parameters["protocol"] = proto
    write_run_metadata(out, "evaluate", parameters, inputs, started)
    typer.echo(table)
