"""Options of tissue and artefact detection and of the tile stage (``tile:`` in the workflow YAML).

The tissue-detection defaults live here only: :mod:`wsi_lpd.slide.tissue` takes a
:class:`TissueOptions`, ``wsi-lpd tile`` and ``wsi-lpd infer`` (without ``--tiles``) build one from
the workflow's ``tile:`` section; likewise :class:`ArtefactOptions` for
:mod:`wsi_lpd.slide.artefacts`.
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


class ArtefactOptions(Section):
    """Artefacts found on the tissue thumbnail and removed from the tissue
    (:mod:`wsi_lpd.slide.artefacts`): each class switchable; saturation and value are fractions
    of full scale, ratios are to the slide's own tissue statistics."""

    artefact_pen: bool = Field(
        True, description="Detect pen marks (blue, green, black, red ink) and remove them."
    )
    artefact_blur: bool = Field(
        True, description="Detect out-of-focus tissue (sharpness read at blur_mpp), remove it."
    )
    artefact_fold: bool = Field(
        False,
        description="Detect tissue folds / dark debris and remove them (off: dense real tissue "
        "such as epidermis is taken for a fold).",
    )
    artefact_bubble: bool = Field(
        False, description="Detect air bubbles (round regions inside thin dark rims), remove them."
    )
    pen_min_saturation: float = Field(
        0.3, ge=0, le=1, description="Least HSV saturation of coloured ink, fraction of full scale."
    )
    pen_red_min_saturation: float = Field(
        0.65, ge=0, le=1, description="Least HSV saturation of red ink (beyond eosin's)."
    )
    pen_black_max_value: float = Field(
        0.2, ge=0, le=1, description="Black ink: brightest channel at most this, of full scale."
    )
    blur_mpp: float = Field(
        2.0, gt=0, description="Resolution of the sharpness read for blur detection, µm/px."
    )
    blur_sharpness_ratio: float = Field(
        0.6,
        gt=0,
        description="Out of focus below this × the slide's 75th-percentile tissue sharpness.",
    )
    fold_od_ratio: float = Field(
        1.4, gt=0, description="Fold: optical density above this × the slide's tissue median."
    )
    fold_local_ratio: float = Field(
        1.2, gt=0, description="Fold: optical density above this × the surrounding tissue's."
    )
    bubble_rim_ratio: float = Field(
        0.7, gt=0, le=1, description="Bubble rim: darker than this × the local median brightness."
    )
    artefact_min_area_um2: float = Field(20_000.0, ge=0, description="Smallest artefact kept, µm².")
    artefact_margin_um: float = Field(
        8.0, ge=0, description="Artefacts grown by this margin before removal, µm."
    )

    def artefact_options(self) -> ArtefactOptions:
        """Only the artefact fields (as a plain :class:`ArtefactOptions`)."""
        return ArtefactOptions(**{k: getattr(self, k) for k in ArtefactOptions.model_fields})


class _TileGrid(Section):
    """The tile grid's own fields (listed first in ``tile:``)."""

    tile_mpp: float = Field(1.0, gt=0, description="Tile resolution, µm/px.")
    patch_px: int = Field(224, ge=1, description="Tile side in px at --tile-mpp.")
    overlap: float = Field(
        0.0, ge=0, lt=1, description="Overlap of neighbouring tiles, fraction of the tile."
    )
    min_tissue: float = Field(
        0.5, ge=0, le=1, description="Minimum tissue fraction of a kept tile."
    )


class TileSection(ArtefactOptions, TissueOptions, _TileGrid):
    """``tile:``: tissue detection and the tile grid (``wsi-lpd tile``).

    ``tile_mpp`` is the tiles' µm/px (old key ``mpp``); ``overlap`` a fraction of ``patch_px``
    (old key ``overlap_px`` in px); ``slide_mpp`` overrides the slide's own level-0 µm/px.
    Fields: the grid's, then the tissue detection's, the artefacts', the QC image's and the
    inputs'.
    """

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {"mpp": "tile_mpp", "overlap_px": "overlap"}

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
