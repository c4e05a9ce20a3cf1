"""Vectorise a mosaic into QuPath GeoJSON (level-0 px) with measurements, plus an overlay PNG."""

from __future__ import annotations

import logging
import math
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
from wsi_lpd.io import atomic_file

log = logging.getLogger("wsi_lpd.export")

DEFAULTS: dict[str, Any] = {
    "slide": None,
    "min_area_um2": 1000.0,
    "simplify_um": None,
    "object_type": "annotation",
    "per_class": False,
    "subtract_bounds": False,
    "gzip": False,
    "block_px": 2048,
}
OBJECT_TYPES = ("annotation", "detection")


def _validate(options: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown keys and bad values rejected with the key's name."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"export: unknown option(s) {', '.join(unknown)}")
    opts = {**DEFAULTS, **options}
    if opts["object_type"] not in OBJECT_TYPES:
        raise ConfigError(f"export.object_type: expected one of {OBJECT_TYPES}")
    try:
        opts["min_area_um2"] = float(opts["min_area_um2"])
        opts["block_px"] = int(opts["block_px"])
        if opts["simplify_um"] is not None:
            opts["simplify_um"] = float(opts["simplify_um"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"export: numeric option expected ({exc})") from exc
    if opts["min_area_um2"] < 0 or (opts["simplify_um"] or 0) < 0 or opts["block_px"] < 64:
        raise ConfigError("export: min_area_um2 and simplify_um must be ≥ 0, block_px ≥ 64")
    for key in ("per_class", "subtract_bounds", "gzip"):
        opts[key] = bool(opts[key])
    return opts


def _write_metadata(
    out: Path, slide_id: str, parameters: dict, inputs: dict, started: float, **extra: Any
) -> Path:
    """Run metadata as ``{slide_id}.export.json`` (atomic: written aside, then renamed)."""
    final = out / f"{slide_id}.export.json"
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{slide_id}.export-") as tmp:
        written = write_run_metadata(tmp, "export", parameters, inputs, started, **extra)
        os.replace(written, final)
    return final


def _class_summary(results: list) -> dict[str, dict[str, Any]]:
    """Per class: components, vertices, area (µm²), pixel-weighted mean probability (or None)."""
    summary = {}
    for r in results:
        mean = r.class_mean_probability
        summary[r.name] = {
            "components": len(r.components),
            "vertices": r.num_vertices,
            "area_um2": round(r.total_area_um2, 3),
            "mean_probability": None if math.isnan(mean) else round(mean, 4),
        }
    return summary


@one_line_errors
def command(
    mosaic: Annotated[Path, typer.Argument(help="Mosaic {slide}.ome.zarr from `wsi-lpd infer`.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    slide: Annotated[
        Path | None, typer.Option(help="Slide for the overlay (default: the mosaic's slide_path).")
    ] = None,
    min_area_um2: Annotated[
        float | None,
        typer.Option(help="Drop smaller pieces, fill smaller holes in µm² (default 1000)."),
    ] = None,
    simplify_um: Annotated[
        float | None,
        typer.Option(help="Simplification tolerance in µm (default: one mosaic pixel)."),
    ] = None,
    object_type: Annotated[
        str | None, typer.Option(help="QuPath object type: annotation (default) | detection.")
    ] = None,
    per_class: Annotated[
        bool | None,
        typer.Option("--per-class/--per-component", help="One MultiPolygon per class."),
    ] = None,
    subtract_bounds: Annotated[
        bool | None,
        typer.Option(
            "--subtract-bounds/--no-subtract-bounds",
            help="Shift by the OpenSlide bounds origin (QuPath crops MRXS-like slides to it).",
        ),
    ] = None,
    gzip: Annotated[
        bool | None, typer.Option("--gzip/--no-gzip", help="Write {slide}.geojson.gz.")
    ] = None,
    block_px: Annotated[
        int | None, typer.Option(help="Label block side read at a time in px (default 2048).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; reads `export:`.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    started = time.time()
    setup_logging(verbose)
    from wsi_lpd.geojson import write_feature_collection
    from wsi_lpd.mosaic import open_mosaic
    from wsi_lpd.overlay import write_overlay
    from wsi_lpd.vectorize import class_features, vectorize_mosaic

    opts = _validate(
        merge_options(
            load_config_section(config, "export"),
            slide=slide,
            min_area_um2=min_area_um2,
            simplify_um=simplify_um,
            object_type=object_type,
            per_class=per_class,
            subtract_bounds=subtract_bounds,
            gzip=gzip,
            block_px=block_px,
        )
    )
    mos = open_mosaic(mosaic)
    attrs = mos.attrs
    slide_id = str(attrs.get("slide_id") or mosaic.name.removesuffix(".ome.zarr"))
    results = vectorize_mosaic(
        mos,
        min_area_um2=opts["min_area_um2"],
        simplify_um=opts["simplify_um"],
        subtract_bounds=opts["subtract_bounds"],
        block_px=opts["block_px"],
        progress=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    geojson_path = out / f"{slide_id}.geojson{'.gz' if opts['gzip'] else ''}"
    with atomic_file(geojson_path) as tmp:
        n_features = write_feature_collection(
            tmp, class_features(results, opts["object_type"], opts["per_class"])
        )
    bounds = attrs.get("bounds") or (0, 0, 0, 0)
    offset = (float(bounds[0]), float(bounds[1])) if opts["subtract_bounds"] else (0.0, 0.0)
    slide_path = opts["slide"] or attrs.get("slide_path") or None
    overlay_path = out / f"{slide_id}.overlay.png"
    with atomic_file(overlay_path) as tmp:
        write_overlay(
            tmp,
            results,
            level0_size=(int(attrs["level0_width"]), int(attrs["level0_height"])),
            slide_mpp=float(attrs["slide_mpp"]),
            slide_path=slide_path,
            offset_px=offset,
            title=slide_id,
        )
    _write_metadata(
        out,
        slide_id,
        {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
        {
            "mosaic": str(mosaic),
            "slide": str(slide_path) if slide_path else None,
            "labels_shape": list(mos.labels.shape),
            "mpp": attrs.get("mpp"),
        },
        started,
        outputs={"geojson": geojson_path.name, "overlay": overlay_path.name},
        features=n_features,
        vertices=sum(r.num_vertices for r in results),
        classes=_class_summary(results),
    )
    log.info(
        "%s: %d feature(s), %d vertices -> %s",
        slide_id,
        n_features,
        sum(r.num_vertices for r in results),
        geojson_path,
    )
