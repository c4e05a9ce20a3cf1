"""Options of the export stage (``export:`` in the workflow YAML, ``wsi-lpd export``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from wsi_lpd.settings import Section


class ExportSection(Section):
    """``export:`` mosaic → QuPath GeoJSON and overlay."""

    slide: str | None = Field(
        None,
        description="Slide for the overlay.",
        json_schema_extra={"cli_default": "the mosaic's slide_path"},
    )
    min_area_um2: float = Field(
        1000.0, ge=0.0, description="Drop smaller pieces, fill smaller holes, in µm²."
    )
    simplify_um: float | None = Field(
        None,
        ge=0.0,
        description="Simplification tolerance in µm.",
        json_schema_extra={"cli_default": "one mosaic pixel"},
    )
    object_type: Literal["annotation", "detection"] = Field(
        "annotation", description="QuPath object type."
    )
    per_class: bool = Field(
        False, description="One MultiPolygon per class (--per-component: one per component)."
    )
    subtract_bounds: bool = Field(
        False,
        description="Shift by the OpenSlide bounds origin (QuPath crops MRXS-like slides to it).",
    )
    gzip: bool = Field(False, description="Write {slide}.geojson.gz.")
    block_px: int = Field(2048, ge=64, description="Label block side read at a time, in px.")
    min_probability: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description="CLASS=VALUE: drop polygons whose mean class probability is lower "
        "(repeatable).",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Processes for block vectorisation (dask).",
        json_schema_extra={"cli_default": "usable cores, ≤ 8"},
    )
    verify: Literal["sizes", "checksums"] = Field(
        "sizes", description="Mosaic integrity check: sizes (stat) or checksums (CRC-32)."
    )
    tiles: str | None = Field(
        None,
        description="Tile folder of `wsi-lpd tile` for this slide: the `Artefact: …` "
        "annotations of its artefacts.geojson are added to the GeoJSON (shifted with the bounds "
        "like the rest); a folder without one (older tile output) adds none.",
    )
