"""Options of the patches stage (``patches:`` in the workflow YAML, ``wsi-lpd patches``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from wsi_lpd.settings import Section


def _one_or_many(value: Any) -> Any:
    """A single path where a list of paths is expected becomes a one-item list."""
    return [value] if isinstance(value, str | os.PathLike) else value


class PatchesSection(Section):
    """``patches:`` — building the patch store (``wsi-lpd patches``); flags override these.

    Inputs: ``tiles`` + ``annotations`` (+ ``truth`` masks), paired by order, or ``labels_csv`` with
    ``mpp`` (µm/px) and ``patch_px``. Labels: ``min_class_fraction`` of the patch area makes a
    class positive; negatives need the annotations to cover ``min_annotated_fraction`` of the
    patch's tissue, otherwise unknown. ``class_map`` maps annotation class names to model classes
    (QuPath's Tumor/Stroma/Immune cells/Necrosis and case-insensitive model names are accepted
    without it; a null value drops that class); ``unknown_classes`` decides the rest: ``ignore``
    (counted in the log) or ``refuse``. ``qupath_bounds``: annotation coordinates are relative to
    a cropped slide's bounds (QuPath's convention) and are shifted to level-0 px.
    """

    tiles: list[Path] | None = Field(
        None, description="Tile dirs (tiles.npz) from `wsi-lpd tile`; repeat per slide."
    )
    annotations: list[Path] | None = Field(
        None, description="QuPath GeoJSON per tile dir (same order)."
    )
    truth: list[Path] | None = Field(
        None,
        description="Ground-truth label mask per tile dir; labels from it, masks stored.",
    )
    labels_csv: Path | None = Field(
        None, description="CSV with slide_id, path, x, y, labels (TUM;STR)."
    )
    mpp: float | None = Field(default=None, gt=0, description="CSV mode: patch resolution, µm/px.")
    patch_px: int | None = Field(default=None, ge=1, description="CSV mode: patch side in px.")
    min_class_fraction: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="A class is positive where its annotations cover this fraction of a patch.",
    )
    min_annotated_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Negatives only where all annotations cover this fraction of the patch's "
        "tissue; elsewhere unknown.",
    )
    class_map: dict[str, str | None] = Field(
        default_factory=dict,
        description="NAME=CLASS: annotation class NAME counts as model class CLASS (NAME= drops "
        "it; repeatable).",
    )
    unknown_classes: Literal["ignore", "refuse"] = Field(
        "ignore", description="Annotation classes outside the class list: ignore or refuse."
    )
    qupath_bounds: bool = Field(
        True,
        description="Annotation coordinates are relative to a cropped slide's bounds (QuPath) "
        "and are shifted to level-0 px.",
    )

    _paths = field_validator("tiles", "annotations", "truth", mode="before")(_one_or_many)
