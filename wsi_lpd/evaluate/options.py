"""Options of the evaluate stage (``evaluate:`` in the workflow YAML, ``wsi-lpd evaluate``)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from wsi_lpd.settings import Section


class EvaluateSection(Section):
    """``evaluate:``: scoring mosaics (``pred`` + ``truth``, mode A) or a model (``model`` + a
    patch store or a BCSS-style folder, mode B)."""

    pred: list[str] = Field(
        default_factory=list, description="Mosaic(s) {slide}.ome.zarr (mode A; repeatable)."
    )
    truth: list[str] = Field(
        default_factory=list,
        description="Label mask TIFF or GeoJSON per --pred (same order; repeatable).",
    )
    model: str | None = Field(None, description="model.pt (mode B).")
    patches: str | None = Field(None, description="Patch store with masks (mode B).")
    bcss_dir: str | None = Field(None, description="BCSS-WSSS / LUAD-HistoSeg folder (mode B).")
    split: Literal["valid", "test"] = Field("test", description="Split scored (mode B).")
    layout: Literal["bcss", "luad"] = Field("bcss", description="Folder layout (mode B).")
    label_mode: Literal["given", "predicted"] = Field(
        "given", description="Image labels: given (from truth) or predicted."
    )
    protocol: Literal["lpd", "wsss-tissue"] = Field("lpd", description="Scoring protocol.")
    batch_size: int = Field(16, ge=1, description="Mode B batch size.")
    device: str = Field("cpu", description="Mode B torch device.")
    workers: int = Field(1, ge=1, description="dask threads over mosaic row bands (mode A).")

    @field_validator("pred", "truth", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | os.PathLike) else value
