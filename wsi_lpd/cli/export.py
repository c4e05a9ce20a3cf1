"""Vectorise a mosaic into QuPath GeoJSON (level-0 px) with measurements, plus an overlay PNG."""

from __future__ import annotations

import itertools
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from wsi_lpd.cli._common import (
    package_versions,
    section_with_flags,
    setup_logging,
)
from wsi_lpd.errors import ConfigError

log = logging.getLogger("wsi_lpd.export")


def _parse_min_probability(items: list[str] | None) -> dict[str, float] | None:
    """``["TUM=0.5", "STR=0.3"]`` → ``{"TUM": 0.5, "STR": 0.3}`` (None when not given)."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--min-probability: expected CLASS=VALUE (e.g. TUM=0.5), got {item!r}"
            ) from None
    return out


def _options(config: Path | None, **flags: Any) -> Any:
    """Config section ``export`` (typed, defaults on the model) overridden by the given flags."""
    from wsi_lpd.workflow.config import ExportSection

    return section_with_flags(ExportSection, config, "export", **flags)


def default_workers() -> int:
    """Processes for the block work by default: the usable cores, at most 8."""
    import os

    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _class_summary(results: list) -> dict[str, dict[str, Any]]:
    """Per class: components, vertices, area (µm²), pixel-weighted mean class probability and
    margin to the runner-up (None when unknown), components dropped by min_probability."""
    summary = {}
    for r in results:
        mean, margin = r.class_mean_probability, r.class_mean_margin
        summary[r.name] = {
            "components": len(r.components),
            "vertices": r.num_vertices,
            "area_um2": round(r.total_area_um2, 3),
            "mean_probability": None if math.isnan(mean) else round(mean, 4),
            "mean_margin": None if math.isnan(margin) else round(margin, 4),
            "dropped_low_probability": r.dropped_low_probability,
        }
    return summary


def provenance(attrs: dict[str, Any], mosaic: Path, run_date: str) -> dict[str, Any]:
    """FeatureCollection ``properties`` (QuPath ignores them): where the polygons come from."""
    from wsi_lpd import __version__

    return {
        "wsi_lpd": {
            "version": __version__,
            "model_sha256": attrs.get("model_sha256") or None,
            "mosaic": str(mosaic.resolve()),
            "slide_id": attrs.get("slide_id"),
            "slide_path": attrs.get("slide_path") or None,
            "mpp": attrs.get("mpp"),
            "slide_mpp": attrs.get("slide_mpp"),
            "classes": [c["name"] for c in attrs["classes"]["foreground"]]
            if isinstance(attrs.get("classes"), dict) and "foreground" in attrs["classes"]
            else None,
            "run_date": run_date,
            "coordinates": "level-0 px",
        }
    }


def command(
    mosaic: Annotated[Path, typer.Argument(help="Mosaic {slide}.ome.zarr from `wsi-lpd infer`.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    slide: Annotated[
        Path | None, typer.Option(help="Slide for the overlay [the mosaic's slide_path].")
    ] = None,
    min_area_um2: Annotated[
        float | None,
        typer.Option(help="Drop smaller pieces, fill smaller holes, in µm² [1000]."),
    ] = None,
    simplify_um: Annotated[
        float | None,
        typer.Option(help="Simplification tolerance in µm [one mosaic pixel]."),
    ] = None,
    object_type: Annotated[
        str | None, typer.Option(help="QuPath object type: annotation | detection [annotation].")
    ] = None,
    per_class: Annotated[
        bool | None,
        typer.Option("--per-class/--per-component", help="One MultiPolygon per class [off]."),
    ] = None,
    subtract_bounds: Annotated[
        bool | None,
        typer.Option(
            "--subtract-bounds/--no-subtract-bounds",
            help="Shift by the OpenSlide bounds origin (QuPath crops MRXS-like slides to it).",
        ),
    ] = None,
    gzip: Annotated[
        bool | None, typer.Option("--gzip/--no-gzip", help="Write {slide}.geojson.gz [off].")
    ] = None,
    block_px: Annotated[
        int | None, typer.Option(help="Label block side read at a time, in px [2048].")
    ] = None,
    min_probability: Annotated[
        list[str] | None,
        typer.Option(
            help="CLASS=VALUE: drop polygons whose mean class probability is lower (repeatable)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes for block vectorisation (dask) [usable cores, ≤ 8]."),
    ] = None,
    verify: Annotated[
        str | None,
        typer.Option(help="Mosaic integrity check: sizes (stat) or checksums (CRC-32) [sizes]."),
    ] = None,
    tiles: Annotated[
        Path | None,
        typer.Option(help="Tile folder of `wsi-lpd tile`: adds its artefacts.geojson features."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Workflow YAML (section `export`).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Vectorise a mosaic into QuPath GeoJSON with per-polygon confidence, plus an overlay PNG."""
    started = time.time()
    run_date = datetime.now(UTC).isoformat(timespec="seconds")
    from wsi_lpd.export.vectorize import class_features, vectorize_mosaic
    from wsi_lpd.formats.geojson import write_feature_collection
    from wsi_lpd.formats.mosaic import open_mosaic
    from wsi_lpd.io import atomic_file, write_json
    from wsi_lpd.slide.overlay import write_overlay

    opts = _options(
        config,
        slide=str(slide) if slide is not None else None,
        min_area_um2=min_area_um2,
        simplify_um=simplify_um,
        object_type=object_type,
        per_class=per_class,
        subtract_bounds=subtract_bounds,
        gzip=gzip,
        block_px=block_px,
        min_probability=_parse_min_probability(min_probability),
        workers=workers,
        verify=verify,
        tiles=str(tiles) if tiles else None,
    )
    n_workers = opts.workers or default_workers()
    mos = open_mosaic(mosaic, verify=opts.verify)
    setup_logging(verbose)  # the inputs are valid: progress and INFO lines from here on
    attrs = mos.attrs
    slide_id = str(attrs.get("slide_id") or mosaic.name.removesuffix(".ome.zarr"))
    results = vectorize_mosaic(
        mos,
        min_area_um2=opts.min_area_um2,
        simplify_um=opts.simplify_um,
        subtract_bounds=opts.subtract_bounds,
        block_px=opts.block_px,
        progress=True,
        min_probability=opts.min_probability,
        workers=n_workers,
    )
    out.mkdir(parents=True, exist_ok=True)
    bounds = attrs.get("bounds") or (0, 0, 0, 0)
    offset = (float(bounds[0]), float(bounds[1])) if opts.subtract_bounds else (0.0, 0.0)
    artefacts = []
    if opts.tiles:
        from wsi_lpd.slide.artefacts import tile_artefact_features

        artefacts = tile_artefact_features(opts.tiles, offset)
    geojson_path = out / f"{slide_id}.geojson{'.gz' if opts.gzip else ''}"
    with atomic_file(geojson_path) as tmp:
        n_features = write_feature_collection(
            tmp,
            itertools.chain(class_features(results, opts.object_type, opts.per_class), artefacts),
            properties=provenance(attrs, mosaic, run_date),
        )
    slide_path = opts.slide or attrs.get("slide_path") or None
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
    vertices = sum(r.num_vertices for r in results)
    write_json(
        out / f"{slide_id}.export.json",
        {
            "stage": "export",
            "versions": package_versions(),
            "parameters": {**opts.model_dump(), "workers": n_workers},
            "inputs": {
                "mosaic": str(mosaic.resolve()),
                "slide": str(slide_path) if slide_path else None,
                "labels_shape": list(mos.labels.shape),
                "mpp": attrs.get("mpp"),
                "model_sha256": attrs.get("model_sha256"),
            },
            "wall_time_s": round(time.time() - started, 3),
            "finished_at": run_date,
            "outputs": {"geojson": geojson_path.name, "overlay": overlay_path.name},
            "features": n_features,
            "artefact_features": len(artefacts),
            "vertices": vertices,
            "classes": _class_summary(results),
        },
    )
    log.info("%s: %d feature(s), %d vertices -> %s", slide_id, n_features, vertices, geojson_path)
