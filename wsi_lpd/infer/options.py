"""Options of whole-slide inference (``infer:`` in the workflow YAML, ``wsi-lpd infer``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wsi_lpd.settings import Section


class InferSection(Section):
    """``infer:`` whole-slide inference into an OME-Zarr mosaic."""

    device: str = Field("auto", description="Torch device: auto, cpu or cuda[:N].")
    batch_size: int = Field(16, ge=1, description="Windows per forward pass.")
    workers: int | None = Field(
        None,
        ge=0,
        description="Slide-reading worker processes.",
        json_schema_extra={"cli_default": "one per spare core, at most 4"},
    )
    prefetch: int = Field(4, ge=1, description="Batches queued per reading worker.")
    overlap: float = Field(
        0.25, ge=0.0, lt=1.0, description="Window overlap, fraction of the window in [0, 1)."
    )
    blend: Literal["gaussian", "cosine"] = Field("gaussian", description="Overlap weights.")
    sigma_frac: float = Field(
        0.125, gt=0.0, description="Gaussian weights: sigma as a fraction of the window."
    )
    output_mpp: float | None = Field(
        None,
        gt=0.0,
        description="Mosaic µm/px.",
        json_schema_extra={"cli_default": "the model's output resolution"},
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="Mixed precision on CUDA (auto: bf16 where supported, else fp16)."
    )
    tissue_mpp: float | None = Field(
        None,
        gt=0.0,
        description="µm/px of the tissue detection used when no tile directory is given.",
        json_schema_extra={"cli_default": "tile.tissue_mpp"},
    )
    slide_mpp: float | None = Field(
        None,
        gt=0.0,
        description="Override the slide's level-0 µm/px.",
        json_schema_extra={"cli_default": "from the file"},
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="JPEG decoding: cpu (slide reader), gpu (JPEG tiles decoded on the compute "
        "device), auto (gpu on CUDA for JPEG-tiled TIFF/SVS).",
    )
    stain_normalise: Literal["auto", "none", "reinhard", "macenko"] = Field(
        "auto",
        description="Stain normalisation of each slide before the model: its colour statistics "
        "(one low-resolution read) mapped onto the training patches' (stored in model.pt) or the "
        "reference slide's; one transform for every window (bench/results/stain.md). auto: "
        "reinhard when there is a reference, none (with a warning) for older models.",
    )
    stain_reference_slide: str | None = Field(
        None,
        description="Slide whose stain statistics replace the training patches' as the reference "
        "(needed for models trained before model.pt stored them).",
    )
