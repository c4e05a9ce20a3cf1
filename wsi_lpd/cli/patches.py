"""Build a patch store (pixels + three-state labels) from tiles + QuPath annotations, or a CSV."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wsi_lpd.classes import BCSS_CLASSES, ClassList, ClassMapping
from wsi_lpd.cli._common import setup_logging, write_run_metadata
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_dir
from wsi_lpd.workflow.config import PatchesSection, parse_section, read_yaml

log = logging.getLogger("wsi_lpd.patches")


def run_metadata_path(out: Path) -> Path:
    """``STORE.zarr`` → ``STORE.run.json`` beside it."""
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(f"{stem}.run.json")


def _options(
    config: Path | None, flags: dict[str, Any]
) -> tuple[PatchesSection, ClassList, ClassMapping]:
    """The ``patches:`` section of ``config`` with the given flags on top, the class list and
    the annotation class mapping."""

    data = read_yaml(config) if config is not None else {}
    section = parse_section(PatchesSection, data.get("patches"), config, "patches")
    given = {k: v for k, v in flags.items() if v is not None and v != []}
    if given:
        merged = {**section.model_dump(exclude_unset=True), **given}
        section = parse_section(PatchesSection, merged, "command line", "patches")
    try:
        classes = ClassList.from_dict(data["classes"]) if data.get("classes") else BCSS_CLASSES
        mapping = ClassMapping(classes, section.class_map, section.unknown_classes)
    except ConfigError as exc:
        raise ConfigError(f"{config}: {exc}") from None
    return section, classes, mapping


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
        typer.Option(
            "--truth", help="Ground-truth label mask per tile dir; labels from it, masks stored."
        ),
    ] = None,
    min_class_fraction: Annotated[
        float | None,
        typer.Option(
            help="A class is positive where its annotations cover this fraction of a patch "
            "(default 0.1)."
        ),
    ] = None,
    min_annotated_fraction: Annotated[
        float | None,
        typer.Option(
            help="Negatives only where all annotations cover this fraction of the patch's "
            "tissue; elsewhere unknown (default 0.9)."
        ),
    ] = None,
    labels_csv: Annotated[
        Path | None,
        typer.Option("--labels-csv", help="CSV with slide_id, path, x, y, labels (TUM;STR)."),
    ] = None,
    mpp: Annotated[float | None, typer.Option(help="CSV mode: patch resolution in µm/px.")] = None,
    patch_px: Annotated[int | None, typer.Option(help="CSV mode: patch side in px.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Workflow YAML; reads `patches:` and `classes:`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Cut labelled patches (positive / negative / unknown per class) into a patch store."""
    from wsi_lpd.formats.patch_store import (
        build_patch_store_from_annotations,
        build_patch_store_from_csv,
    )

    started = time.time()
    opts, classes, mapping = _options(
        config,
        {
            "tiles": tiles,
            "annotations": annotations,
            "truth": truth,
            "min_class_fraction": min_class_fraction,
            "min_annotated_fraction": min_annotated_fraction,
            "labels_csv": labels_csv,
            "mpp": mpp,
            "patch_px": patch_px,
        },
    )
    if (opts.labels_csv is None) == (not opts.tiles):
        raise ConfigError("patches: give either --tiles with --annotations, or --labels-csv")
    if opts.labels_csv is not None and (opts.mpp is None or opts.patch_px is None):
        raise ConfigError("patches: --labels-csv needs --mpp and --patch-px")
    if opts.tiles and not opts.annotations:
        raise ConfigError("patches: --tiles needs --annotations (one per tile dir)")
    setup_logging(verbose)  # the options are valid: INFO lines from here on
    out = Path(out)
    with atomic_dir(out) as tmp:
        if opts.labels_csv is not None:
            assert opts.mpp is not None and opts.patch_px is not None
            summary = build_patch_store_from_csv(
                opts.labels_csv, tmp, classes, opts.mpp, opts.patch_px
            )
            inputs: dict[str, Any] = {"labels_csv": str(opts.labels_csv)}
        else:
            assert opts.tiles is not None and opts.annotations is not None
            summary = build_patch_store_from_annotations(
                opts.tiles,
                opts.annotations,
                tmp,
                classes,
                min_class_fraction=opts.min_class_fraction,
                truth_masks=opts.truth or None,
                min_annotated_fraction=opts.min_annotated_fraction,
                class_mapping=mapping,
                qupath_bounds=opts.qupath_bounds,
            )
            inputs = {
                "tiles": [str(p) for p in opts.tiles],
                "annotations": [str(p) for p in opts.annotations],
                "truth": [str(p) for p in opts.truth or []],
            }
    counts = ", ".join(f"{k} {v}" for k, v in summary["per_class"].items())
    log.info("wrote %s: %d patches; positive labels: %s", out, summary["patches"], counts)
    parameters = {
        "out": str(out),
        **opts.model_dump(mode="json", exclude={"tiles", "annotations", "truth", "labels_csv"}),
        "classes": classes.to_dict(),
    }
    write_run_metadata(
        run_metadata_path(out), "patches", parameters, inputs, started, summary=summary
    )
