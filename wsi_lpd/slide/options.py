"""Options of tissue detection and of the tile stage (``tile:`` in the workflow YAML).

The tissue-detection defaults live here only: :mod:`wsi_lpd.slide.tissue` takes a
:class:`TissueOptions`, ``wsi-lpd tile`` and ``wsi-lpd infer`` (without ``--tiles``) build one from
the workflow's ``tile:`` section.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from wsi_lpd.settings import Section, renamed_keys


class TissueOptions(Section):
    """Tissue detection on a thumbnail: saturation above Otsu's threshold, closing, opening,
    small objects dropped and small holes filled (sizes in µm, µm²)."""

    tissue_mpp: float = Field(8.0, gt=0, description="Resolution of tissue detection, µm/px.")
    min_object_um2: float = Field(
        20_000.0, ge=0, description="Tissue pieces smaller than this are dropped, µm²."
    )
    min_hole_um2: float = Field(
        10_000.0, ge=0, description="Holes in tissue smaller than this are filled, µm²."
    )
    close_radius_um: float = Field(
        16.0, ge=0, description="Radius of the morphological closing, µm."
    )
    open_radius_um: float = Field(8.0, ge=0, description="Radius of the morphological opening, µm.")
    saturation_floor: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Lowest saturation threshold (fraction of full scale) tissue must exceed.",
    )
    exclude_dark: bool = Field(
        True, description="Pixels darker than 15 % of full scale (pen, dirt) are not tissue."
    )

    def tissue_options(self) -> TissueOptions:
        """Only the tissue-detection fields (as a plain :class:`TissueOptions`)."""
        return TissueOptions(**{k: getattr(self, k) for k in TissueOptions.model_fields})


class TileSection(TissueOptions):
    """``tile:``: tissue detection and the tile grid (``wsi-lpd tile``).

    ``tile_mpp`` is the tiles' µm/px (old key ``mpp``); ``overlap`` a fraction of ``patch_px``
    (old key ``overlap_px`` in px); ``slide_mpp`` overrides the slide's own level-0 µm/px.
    """

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {"mpp": "tile_mpp", "overlap_px": "overlap"}

    tile_mpp: float = Field(1.0, gt=0, description="Tile resolution, µm/px.")
    patch_px: int = Field(224, ge=1, description="Tile side in px at --tile-mpp.")
    overlap: float = Field(
        0.0, ge=0, lt=1, description="Overlap of neighbouring tiles, fraction of the tile."
    )
    min_tissue: float = Field(
        0.5, ge=0, le=1, description="Minimum tissue fraction of a kept tile."
    )
    qc_long_side_px: int = Field(1024, ge=64, description="Long side of the QC image qc.png, px.")
    tissue_geojson: str | None = Field(
        None, description="Use these polygons (any class) instead of detection (GeoJSON)."
    )
    roi: str | None = Field(
        None, description="Region of interest (GeoJSON polygons): tiles only inside it."
    )
    slide_mpp: float | None = Field(
        None,
        gt=0,
        description="Override the slide's level-0 µm/px.",
        json_schema_extra={"cli_default": "from the file"},
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        data = renamed_keys(data, "tile", {"mpp": "tile_mpp"})
        if isinstance(data, Mapping) and "overlap_px" in data:
            data = renamed_keys(data, "tile", {"overlap_px": "overlap"})
            # a value that is not a number is left as given: the field's validation names it
            with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
                data["overlap"] = float(data["overlap"]) / float(data.get("patch_px", 224))
        return data

    @property
    def overlap_px(self) -> int:
        """Overlap of neighbouring tiles in px at ``tile_mpp``."""
        return round(self.overlap * self.patch_px)
