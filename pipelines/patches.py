"""Build a patch store (pixels + multi-hot labels) from tiles + QuPath annotations, or a CSV."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines._common import (
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_dir

log = logging.getLogger("wsi_lpd.patches")

CONFIG_KEYS = (
    "tiles",
    "annotations",
    "truth",
    "min_class_fraction",
    "labels_csv",
    "mpp",
    "patch_px",
)


def _as_list(value: Any, key: str) -> list[Path] | None:
    if value is None or value == []:
        return None
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, list | tuple):
        return [Path(v) for v in value]
    raise ConfigError(f"patches.{key}: expected a path or a list of paths")


def run_metadata_path(out: Path) -> Path:
    """``STORE.zarr`` → ``STORE.run.json`` beside it."""
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(f"{stem}.run.json")


@one_line_errors
def command(
    out: Annotated[Path, typer.Option("--out", help="Patch store to write (STORE.zarr).")],
    tiles: Annotated[
        list[Path] | None,
        typer.Option(
            "--tiles", help="Tile dirs (tiles.npz) from `wsi-lpd tile`; repeat per slide."
        ),
    ] = None,
    annotations: Annotated[
        list[Path] | None,
        typer.Option("--annotations", help="QuPath GeoJSON per tile dir (same order)."),
    ] = None,
    truth: Annotated[
        list[Path] | None,
        typer.Option("--truth", help="Ground-truth label mask per tile dir; stores patch masks."),
    ] = None,
    min_class_fraction: Annotated[
        float | None,
        typer.Option(
            help="Class present when its annotations cover this fraction of a patch (default 0.1)."
        ),
    ] = None,
    labels_csv: Annotated[
        Path | None,
        typer.Option("--labels-csv", help="CSV with slide_id, path, x, y, labels (TUM;STR)."),
    ] = None,
    mpp: Annotated[float | None, typer.Option(help="CSV mode: patch resolution in µm/px.")] = None,
    patch_px: Annotated[int | None, typer.Option(help="CSV mode: patch side in px.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config; reads `patches:` and `classes:`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from wsi_lpd.classes import BCSS_CLASSES, ClassList
    from wsi_lpd.patch_store import build_patch_store_from_annotations, build_patch_store_from_csv

    setup_logging(verbose)
    started = time.time()
    section = load_config_section(config, "patches", CONFIG_KEYS)
    opts = merge_options(
        section,
        tiles=tiles or None,
        annotations=annotations or None,
        truth=truth or None,
        min_class_fraction=min_class_fraction,
        labels_csv=labels_csv,
        mpp=mpp,
        patch_px=patch_px,
    )
    class_section = load_config_section(config, "classes")
    classes = ClassList.from_dict(class_section) if class_section else BCSS_CLASSES
    tile_dirs = _as_list(opts.get("tiles"), "tiles")
    annotation_paths = _as_list(opts.get("annotations"), "annotations")
    truth_paths = _as_list(opts.get("truth"), "truth")
    csv_path = opts.get("labels_csv")
    fraction = float(opts.get("min_class_fraction", 0.1))

    if (csv_path is None) == (tile_dirs is None):
        raise ConfigError("patches: give either --tiles with --annotations, or --labels-csv")
    out = Path(out)
    with atomic_dir(out) as tmp:
        if csv_path is not None:
            if opts.get("mpp") is None or opts.get("patch_px") is None:
                raise ConfigError("patches: --labels-csv needs --mpp and --patch-px")
            summary = build_patch_store_from_csv(
                csv_path, tmp, classes, float(opts["mpp"]), int(opts["patch_px"])
            )
            inputs: dict[str, Any] = {"labels_csv": str(csv_path)}
        else:
            if annotation_paths is None:
                raise ConfigError("patches: --tiles needs --annotations (one per tile dir)")
            summary = build_patch_store_from_annotations(
                tile_dirs,
                annotation_paths,
                tmp,
                classes,
                min_class_fraction=fraction,
                truth_masks=truth_paths,
            )
            inputs = {
                "tiles": [str(p) for p in tile_dirs or []],
                "annotations": [str(p) for p in annotation_paths],
                "truth": [str(p) for p in truth_paths or []],
            }
    counts = ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())
    log.info("wrote %s: %d patches; label counts: %s", out, summary["patches"], counts)
    if summary["patches"] == 0:
        log.warning("%s: no patch was annotated; the store is empty", out)
    parameters = {
        "out": str(out),
        "min_class_fraction": fraction,
        "classes": classes.to_dict(),
        **{k: opts.get(k) for k in ("mpp", "patch_px") if opts.get(k) is not None},
    }
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.run-") as tmp_dir:
        written = write_run_metadata(
            tmp_dir, "patches", parameters, inputs, started, summary=summary
        )
        os.replace(written, run_metadata_path(out))
