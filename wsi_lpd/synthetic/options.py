"""Options of the synthetic cohort (``synth:`` in the workflow YAML, ``wsi-lpd synth``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from wsi_lpd.settings import Section, renamed_keys


def _comma_split(items: list[Any]) -> list[Any]:
    """``["pen,blur", "fold"]`` → ``["pen", "blur", "fold"]`` (other items left for validation)."""
    out: list[Any] = []
    for item in items:
        out += (
            [p.strip() for p in item.split(",") if p.strip()] if isinstance(item, str) else [item]
        )
    return out


class SynthSection(Section):
    """``synth:``: synthetic H&E-like slides (sizes in level-0 px, resolutions in µm/px)."""

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {"mpp": "slide_mpp"}

    n_slides: int = Field(1, ge=1, description="Number of slides.")
    width_px: int = Field(4096, ge=1, description="Level-0 width in px.")
    height_px: int = Field(4096, ge=1, description="Level-0 height in px.")
    slide_mpp: float = Field(0.5, gt=0, description="The slides' level-0 µm/px.")
    seed: int = Field(0, ge=0, description="Seed of the first slide; slide i uses seed+i.")
    prefix: str = Field(
        "synth", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", description="File-name prefix."
    )
    aperio: bool = Field(
        True, description="Aperio SVS-style header (--no-aperio: plain tiled TIFF)."
    )
    mask_mpp: float = Field(8.0, gt=0, description="µm/px of the ground-truth label mask.")
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of the slide tiles.")
    texture: Literal["procedural", "real", "flat"] = Field(
        "procedural",
        description="procedural (H&E-like noise), real (real H&E texture from histolytics' "
        "crops; classes TUM/STR/LYM; the test slide uses texture no training slide has) or "
        "flat (pale class colours: fast, for size benchmarks).",
    )
    stain_scale: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="Scale haematoxylin and eosin by H E in HED space (another lab's staining).",
        json_schema_extra={"cli_default": "(none)"},
    )

    tissue_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of the slide that is tissue, as compact sections (e.g. 0.15 for a "
        "sparse full-size slide); default: drawn in 0.5-0.62.",
        json_schema_extra={"cli_default": "(drawn)"},
    )

    artefacts: list[Literal["pen", "blur", "fold", "bubble"]] = Field(
        default_factory=list,
        description="Paint artefacts (pen, blur, fold, bubble; repeat or comma-separate) with "
        "ground truth in {stem}.artefacts.npz.",
        json_schema_extra={"cli_default": "none"},
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        data = renamed_keys(data, "synth", cls.RENAMED_KEYS)
        if isinstance(data, Mapping) and isinstance(data.get("artefacts"), str | list):
            items = data["artefacts"]
            items = [items] if isinstance(items, str) else items
            data = {**data, "artefacts": _comma_split(items)}
        return data

    @model_validator(mode="after")
    def _mask_coarser(self) -> SynthSection:
        if self.mask_mpp < self.slide_mpp:
            raise ValueError(f"mask_mpp ({self.mask_mpp}) must be >= slide_mpp ({self.slide_mpp})")
        return self
