"""The ``model`` section of a training YAML (and of a checkpoint): encoder, head, predict, …

These models belong to :mod:`wsi_lpd.networks` because inference rebuilds a network from the
``model`` mapping stored in a checkpoint without importing the training package. The training
config (:mod:`wsi_lpd.train.training_config`) embeds them. Per-method defaults of the head (K, …)
live with the builders in :mod:`wsi_lpd.networks.build`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator

from wsi_lpd.errors import ConfigError
from wsi_lpd.settings import Section, parse_section

MitVariant = Literal["mit_tiny", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
StageWeights = Annotated[list[float], Field(min_length=4, max_length=4)]


def where(source: str | os.PathLike[str] | None) -> str:
    """``"file: "`` (or nothing) in front of a config error."""
    return f"{source}: " if source is not None else ""


class _Weights(Section):
    @field_validator("weights", mode="before", check_fields=False)
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


# --- model.encoder / region_encoder


class MitEncoderConfig(_Weights):
    """Our Mix Transformer (SegFormer MiT); ``weights``: NVlabs ``mit_b1.pth`` or HF ``mit-b1``."""

    type: Literal["mit"]
    variant: MitVariant = "mit_b1"
    strides: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=4, max_length=4)] = (
        Field(default_factory=lambda: [4, 2, 2, 1])
    )
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    weights: str | None = None


class TimmEncoderConfig(_Weights):
    """A timm ``features_only`` backbone with four ``out_indices``."""

    type: Literal["timm"]
    name: str = Field(min_length=1)
    out_indices: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)] = (
        Field(default_factory=lambda: [1, 2, 3, 4])
    )
    output_stride: Literal[8, 16, 32] | None = None
    weights: str | None = None
    key_mapping: Literal["by_name", "by_order"] = "by_name"
    pretrained: StrictBool = False
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)


EncoderConfig = MitEncoderConfig | TimmEncoderConfig


def parse_encoder_config(
    data: Any, source: str | os.PathLike[str] | None = None, section: str = "encoder"
) -> EncoderConfig:
    """The ``encoder`` mapping -> :class:`MitEncoderConfig` or :class:`TimmEncoderConfig`."""
    if isinstance(data, MitEncoderConfig | TimmEncoderConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where(source)}{section}: expected a mapping, got {data!r}")
    kind = data.get("type")
    if kind == "mit":
        return parse_section(MitEncoderConfig, data, source, section)
    if kind == "timm":
        return parse_section(TimmEncoderConfig, data, source, section)
    raise ConfigError(f"{where(source)}{section}.type: expected 'mit' or 'timm' (got {kind!r})")


# --- model.head / model.predict (prototype methods)


class PredictConfig(Section):
    """``model.predict`` of the prototype methods (see :mod:`wsi_lpd.networks.predict`)."""

    mask_absent: Literal["predicted", "none"] = "predicted"
    stage_weights: StageWeights = Field(default_factory=lambda: [0.0, 0.3, 0.3, 0.4])
    bg_power: float = Field(10.0, ge=0.0)
    tta: StrictBool = False
    crf: StrictBool = False
    label_threshold: Probability = 0.5


class PrototypeHeadConfig(Section):
    """``model.head``: K prototypes of dimension D per class; None = the method's default."""

    prototypes_per_class: int | None = Field(None, ge=1)
    prototype_dim: int = Field(512, ge=1)
    adapter_ratio: float = Field(0.5, gt=0.0, le=8.0)
    logit_scale_init: float = Field(1.0 / 0.07, gt=0.0)
    detach_early_cams: StrictBool = True
    normalise_prototypes: StrictBool | None = None


class PrototypeModelConfig(Section):
    """``model`` of ``lpd``, ``cam`` and ``pbip`` (head defaults filled in per method)."""

    encoder: EncoderConfig | None = None
    head: PrototypeHeadConfig = PrototypeHeadConfig()
    predict: PredictConfig = PredictConfig()


# --- model (hisynseg)


class DecoderConfig(Section):
    channels: int = Field(128, ge=1)


class HisynSegHeadConfig(Section):
    dropout: float = Field(0.5, ge=0.0, le=0.99)


class BackgroundConfig(Section):
    """The tissue rule behind HisynSeg's background channel (:mod:`wsi_lpd.networks.hisynseg`)."""

    rule: Literal["saturation", "none"] = "saturation"
    saturation_threshold: Probability = 0.05
    dark_value: Probability = 0.15
    smooth_px: int = Field(5, ge=1)
    softness: float = Field(0.01, ge=1e-6, le=1.0)

    @field_validator("smooth_px")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


class HisynSegPredictConfig(Section):
    mask_absent: Literal["predicted", "none"] = "predicted"
    label_threshold: Probability = 0.5
    tta: StrictBool = False
    crf: StrictBool = False


class HisynSegModelConfig(Section):
    """``model`` of ``hisynseg``: encoder + FPN decoder + aux CAM head, background rule."""

    encoder: EncoderConfig | None = None
    decoder: DecoderConfig = DecoderConfig()
    head: HisynSegHeadConfig = HisynSegHeadConfig()
    background: BackgroundConfig = BackgroundConfig()
    predict: HisynSegPredictConfig = HisynSegPredictConfig()


ModelConfig = PrototypeModelConfig | HisynSegModelConfig
