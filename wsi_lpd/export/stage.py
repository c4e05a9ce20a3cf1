"""The export stage: a mosaic's labels as QuPath GeoJSON (level-0 px) plus an overlay PNG.

:func:`export_mosaic` writes ``{slide_id}.geojson`` (or ``.geojson.gz``), ``{slide_id}.overlay.png``
and ``{slide_id}.export.json`` into a folder; its options are one
:class:`~wsi_lpd.export.options.ExportSection`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_lpd.cores import default_workers
from wsi_lpd.export.options import ExportSection
from wsi_lpd.export.vectorize import ClassPolygons, class_features, vectorize_mosaic
from wsi_lpd.formats.geojson import write_feature_collection_into
from wsi_lpd.formats.mosaic import open_mosaic
from wsi_lpd.io import atomic_file
from wsi_lpd.run_metadata import write_run_metadata
from wsi_lpd.slide.artefacts import tile_artefact_features
from wsi_lpd.slide.overlay import write_overlay_into

log = logging.getLogger("wsi_lpd.export")

EXPORT_WORKERS_AT_MOST = 8


def _class_summary(results: list[ClassPolygons]) -> dict[str, dict[str, Any]]:
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


def export_mosaic(
    mosaic: str | os.PathLike,
    opts: ExportSection,
    out: str | os.PathLike,
    *,
    on_valid: Callable[[], None] | None = None,
) -> Path:
    """Vectorise the mosaic ``mosaic`` into the folder ``out``; returns the GeoJSON written.

    ``on_valid`` is called once the mosaic is opened and verified."""
    started = time.time()
    run_date = datetime.now(UTC).isoformat(timespec="seconds")
    mosaic, out = Path(mosaic), Path(out)
    n_workers = opts.workers or default_workers(EXPORT_WORKERS_AT_MOST, beside_main=False)
    mos = open_mosaic(mosaic, verify=opts.verify)
    attrs = mos.attrs
    bounds = attrs.get("bounds") or (0, 0, 0, 0)
    offset = (float(bounds[0]), float(bounds[1])) if opts.subtract_bounds else (0.0, 0.0)
    # the tile stage's artefacts (`Artefact: pen` …), shifted with the bounds like the classes
    artefacts = tile_artefact_features(opts.tiles, offset) if opts.tiles else []
    if on_valid is not None:
        on_valid()
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
    geojson_path = out / f"{slide_id}.geojson{'.gz' if opts.gzip else ''}"
    with atomic_file(geojson_path) as tmp:
        n_features = write_feature_collection_into(
            tmp,
            itertools.chain(class_features(results, opts.object_type, opts.per_class), artefacts),
            properties=provenance(attrs, mosaic, run_date),
        )
    slide_path = opts.slide or attrs.get("slide_path") or None
    overlay_path = out / f"{slide_id}.overlay.png"
    with atomic_file(overlay_path) as tmp:
        write_overlay_into(
            tmp,
            results,
            level0_size=(int(attrs["level0_width"]), int(attrs["level0_height"])),
            slide_mpp=float(attrs["slide_mpp"]),
            slide_path=slide_path,
            offset_px=offset,
            title=slide_id,
        )
    vertices = sum(r.num_vertices for r in results)
    write_run_metadata(
        out / f"{slide_id}.export.json",
        "export",
        parameters={**opts.model_dump(), "workers": n_workers},
        inputs={
            "mosaic": str(mosaic.resolve()),
            "slide": str(slide_path) if slide_path else None,
            "labels_shape": list(mos.labels.shape),
            "mpp": attrs.get("mpp"),
            "model_sha256": attrs.get("model_sha256"),
        },
        started=started,
        outputs={"geojson": geojson_path.name, "overlay": overlay_path.name},
        features=n_features,
        artefact_features=len(artefacts),
        vertices=vertices,
        classes=_class_summary(results),
    )
    log.info("%s: %d feature(s), %d vertices -> %s", slide_id, n_features, vertices, geojson_path)
    return geojson_path
