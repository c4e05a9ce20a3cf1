"""The typed training config: one pydantic model per section, one model per kind of method.

A training YAML has the sections ``model`` (``method``, ``encoder``, ``head``, ``predict`` and,
for HisynSeg, ``decoder`` / ``background``: :mod:`wsi_lpd.networks.model_config`), ``loss``
(prototype methods), ``region_encoder`` (the frozen encoder behind L_sim), ``data``, ``train`` and
``hisynseg`` (HisynSeg only). The whole file is a :data:`TrainingConfig`:
:class:`PrototypeTrainingConfig` (``lpd``, ``cam``, ``pbip``) or :class:`HisynSegTrainingConfig`,
chosen by ``model.method`` through the method registry (:mod:`wsi_lpd.train.registry`, which also
holds each method's loss defaults and reads YAML files with
:func:`~wsi_lpd.train.registry.load_training_config`). Rules across sections are model validators;
every error is one :class:`~wsi_lpd.errors.ConfigError` line ``file: section.key: problem``.
Library code receives these models and trusts them (no re-checks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from wsi_lpd.data.augment import Augment
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.build import parse_model_config
from wsi_lpd.networks.model_config import (
    EncoderConfig,
    HisynSegModelConfig,
    MitEncoderConfig,
    ModelConfig,
    Probability,
    PrototypeModelConfig,
    StageWeights,
    parse_encoder_config,
    where,
)
from wsi_lpd.settings import Section, describe_validation_error, parse_section

log = logging.getLogger(__name__)

RGB = Annotated[list[float], Field(min_length=3, max_length=3)]


# --- loss (prototype methods)


def _temperature(value: Any) -> Any:
    """``loss.div_temperature``: a number > 0, ``"logit_scale"`` or None (one error line)."""
    if value is None or value == "logit_scale":
        return value
    try:
        number = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise ValueError("expected a number > 0 or 'logit_scale'")
    return number


class LossConfig(Section):
    """``loss``: L_cls + λ_div·L_div + λ_sim·L_sim after ``warmup_iters`` (LPDLoss arguments)."""

    stage_weights: StageWeights = Field(default_factory=lambda: [0.0, 0.1, 1.0, 1.0])
    lambda_div: float = Field(0.5, ge=0.0)
    lambda_sim: float = Field(0.1, ge=0.0)
    warmup_iters: int = Field(3000, ge=0)
    div_mode: Literal["intent", "parity"] = "intent"
    #: a number > 0, or "logit_scale" (1/t_4, detached); None: logit_scale (intent), 1 (parity)
    div_temperature: Annotated[
        float | Literal["logit_scale"] | None, BeforeValidator(_temperature)
    ] = None
    div_use_logit_scale: StrictBool = False
    div_positive_only: StrictBool = True  # intent: only regions of classes in the image label
    div_min_region_px: int = Field(4, ge=1)  # intent: skip smaller stage-4 regions
    bg_score: float = 0.2
    sim_tau: float = Field(0.07, gt=0.0)
    sim_mask_alpha: Probability = 0.5
    sim_minmax_normalise: StrictBool = False
    sim_activation_penalty: float = Field(5e-4, ge=0.0)


@dataclass(frozen=True)
class LossDefaults:
    """A method's ``loss`` defaults (``defaults``: what the YAML may override; ``forced``: what
    the method keeps whatever the YAML says, e.g. CAM has no prototype losses)."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    forced: Mapping[str, Any] = field(default_factory=dict)

    def full(self) -> dict[str, Any]:
        """The whole ``loss`` section with nothing overridden."""
        return LossConfig().model_copy(update=dict(self.defaults)).model_dump()

    def parse(self, data: Any, source: str | os.PathLike[str] | None = None) -> LossConfig:
        """``loss`` section: method defaults, the YAML, then the method's fixed values."""
        given = parse_section(LossConfig, data, source, "loss").model_dump(exclude_unset=True)
        merged = {**self.full(), **given, **self.forced}
        return parse_section(LossConfig, merged, source, "loss")


# --- data, train


class NormalisationStats(Section):
    mean: RGB
    std: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=3, max_length=3)]


class DataSection(Section):
    """``data``: input normalisation (``lpd``: BCSS-WSSS statistics, ``imagenet``, or mean/std)."""

    normalisation: Literal["lpd", "imagenet"] | NormalisationStats = "lpd"


DEFAULT_AUGMENT: dict[str, float | None] = {"hflip_p": 0.5, "vflip_p": 0.5, "rot90_p": 0.5}


class TrainSection(Section):
    """``train``: optimiser, schedule, batches, validation, sampling (paper defaults)."""

    batch_size: int = Field(10, ge=1)  # per process
    epochs: int = Field(8, ge=1)
    max_iters: int | None = Field(None, ge=1)  # stop after this many iterations; None = epochs
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    poly_power: float = Field(1.0, ge=0.0)
    seed: int = 42
    amp: StrictBool = True  # CUDA only
    #: CUDA only: model and images in channels-last (NHWC) memory format (same results)
    channels_last: StrictBool = Field(
        False, description="CUDA only: model and image batches in channels-last memory format."
    )
    workers: int = Field(2, ge=0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # held out when no validation set is given
    val_label_mode: Literal["predicted", "given"] = "predicted"
    select_best_after_iters: int | None = Field(None, ge=0)  # None = the loss warm-up
    log_every: int = Field(10, ge=1)
    #: :class:`wsi_lpd.data.augment.Augment` settings (flips, rotations, ``stain_strength``, …)
    augment: dict[str, float | None] = Field(default_factory=lambda: dict(DEFAULT_AUGMENT))
    class_balance: Literal["none", "sampler", "pos_weight"] = "none"
    pbip_features_per_class: int = Field(512, ge=1)  # single-label patches encoded for the bank

    @field_validator("augment")
    @classmethod
    def _augment(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        try:
            Augment.from_dict(value)
        except ValueError as exc:  # ConfigError names augment.<key>
            raise ValueError(str(exc)) from None
        return value


# --- hisynseg


class FilterSection(Section):
    """``hisynseg.filter``: the realism discriminator (official: 3 / 5 epochs, Adam 1e-3, 256)."""

    enabled: StrictBool = True
    model: str = "resnet18"
    epochs_mosaic: int = Field(3, ge=1)
    epochs_bezier: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(256, ge=1)
    threshold: float = Field(0.5, ge=0.0, lt=1.0)  # keep images with P(real) > threshold
    n_train: int = Field(5000, ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_candidates_factor: float = Field(4.0, ge=1.0)


class HisynSegSection(Section):
    """``hisynseg``: synthesis, filter, loss weights, round 2 (paper defaults)."""

    n_mosaic: int = Field(7200, ge=0)
    n_bezier: int = Field(7200, ge=0)
    mosaic_anchor_range: tuple[float, float] = (0.2, 0.8)
    mosaic_transform_p: Probability = 0.8
    mosaic_shift: float = Field(0.0625, ge=0.0)
    mosaic_scale: float = Field(0.2, ge=0.0, lt=1.0)
    mosaic_rotate_deg: float = Field(45.0, ge=0.0)
    bezier_points: int = Field(5, ge=3)
    bezier_rad: float = Field(0.2, gt=0.0)
    bezier_edgy: float = Field(0.05, ge=0.0)
    synth_chunk: int = Field(256, ge=1)
    pool_cache_mb: int = Field(1024, ge=0)
    w1: float = Field(1.0, ge=0.0)  # BCE on image labels (both batches)
    w2: float = Field(1.0, ge=0.0)  # Dice on synthetic masks
    w3: float = Field(1.0, ge=0.0)  # L1 consistency on real images
    round2: StrictBool = False
    filter: FilterSection = FilterSection()

    @model_validator(mode="after")
    def _check(self) -> HisynSegSection:
        if self.n_mosaic + self.n_bezier == 0:
            raise ValueError("n_mosaic and n_bezier are both 0")
        low, high = self.mosaic_anchor_range
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"mosaic_anchor_range: need 0 < low <= high < 1, got {low, high}")
        return self


# --- the whole file


class RuleError(ValueError):
    """A rule across sections broken; ``key`` is the dotted key the error line names."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


T = TypeVar("T", bound="TrainingConfigBase")


class TrainingConfigBase(Section):
    """What every method's training config has. ``model_mapping`` is the plain ``model``
    mapping (no ``method``) stored in checkpoints; ``source`` the YAML path (None: a mapping).
    Frozen: :meth:`with_train` returns a validated copy."""

    model_config = ConfigDict(**Section.model_config, frozen=True)

    method: str
    model: ModelConfig
    model_mapping: dict[str, Any]
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    source: str | None = None

    @classmethod
    def from_mapping(
        cls: type[T],
        method: str,
        data: Mapping[str, Any],
        loss: LossDefaults,
        source: str | os.PathLike[str] | None = None,
    ) -> T:
        """Validate a whole YAML mapping (whose ``model.method`` is ``method``)."""
        for key in ("method", "model_mapping", "source"):
            if key in data:
                raise ConfigError(f"{where(source)}{key}: not a section of a training YAML")
        raw_model = data["model"]
        model_mapping = {k: v for k, v in raw_model.items() if k != "method"}
        sections = {k: v for k, v in data.items() if v is not None}
        sections.update(
            method=method,
            model=parse_model_config(method, model_mapping, source, "model"),
            model_mapping=model_mapping,
            source=None if source is None else os.fspath(source),
        )
        sections.update(cls._parsed_sections(data, loss, source))
        try:
            config = cls.model_validate(sections)
        except ValidationError as exc:
            cause = exc.errors()[0].get("ctx", {}).get("error")
            if isinstance(cause, RuleError):
                raise ConfigError(f"{where(source)}{cause.key}: {cause}") from None
            raise ConfigError(describe_validation_error(exc, source, "")) from None
        _warn_untrained_encoder(config.model, source)
        return config

    @classmethod
    def _parsed_sections(
        cls, data: Mapping[str, Any], loss: LossDefaults, source: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        """Sections parsed before the whole (method defaults merged in)."""
        return {}

    def with_train(self: T, **overrides: Any) -> T:
        """A copy with ``train`` keys replaced (validated: CLI overrides)."""
        merged = {**self.train.model_dump(exclude_unset=True), **overrides}
        train = parse_section(TrainSection, merged, self.source, "train")
        return self.model_copy(update={"train": train})

    def loss_record(self) -> dict[str, Any]:
        """The loss settings as recorded in checkpoints and run.json."""
        raise NotImplementedError


class PrototypeTrainingConfig(TrainingConfigBase):
    """``lpd``, ``cam``, ``pbip``: a prototype head, ``loss`` and (for L_sim) ``region_encoder``."""

    model: PrototypeModelConfig
    loss: LossConfig = LossConfig()
    region_encoder: EncoderConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_hisynseg(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "hisynseg" in data:
            if data["hisynseg"]:
                raise RuleError(
                    "hisynseg", f"only used by method hisynseg (method {data.get('method')})"
                )
            data = {k: v for k, v in data.items() if k != "hisynseg"}
        return data

    @model_validator(mode="after")
    def _region_encoder_for_sim(self) -> PrototypeTrainingConfig:
        if self.loss.lambda_sim > 0 and self.region_encoder is None:
            raise RuleError("region_encoder", "needed when loss.lambda_sim > 0")
        return self

    @classmethod
    def _parsed_sections(
        cls, data: Mapping[str, Any], loss: LossDefaults, source: str | os.PathLike[str] | None
    ) -> dict[str, Any]:
        parsed: dict[str, Any] = {"loss": loss.parse(data.get("loss"), source)}
        if data.get("region_encoder") is not None:
            parsed["region_encoder"] = parse_encoder_config(
                data["region_encoder"], source, "region_encoder"
            )
        return parsed

    def loss_record(self) -> dict[str, Any]:
        return self.loss.model_dump()


class HisynSegTrainingConfig(TrainingConfigBase):
    """``hisynseg``: encoder + FPN decoder; synthesis, filter and loss weights in ``hisynseg``."""

    model: HisynSegModelConfig
    hisynseg: HisynSegSection = HisynSegSection()

    @model_validator(mode="before")
    @classmethod
    def _no_prototype_sections(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for section in ("loss", "region_encoder"):
                if data.get(section):
                    raise RuleError(
                        section, "not used by hisynseg (its loss weights go in hisynseg:)"
                    )
            data = {k: v for k, v in data.items() if k not in ("loss", "region_encoder")}
        return data

    def loss_record(self) -> dict[str, Any]:
        s = self.hisynseg
        return {"w1": s.w1, "w2": s.w2, "w3": s.w3}


#: a validated training YAML (which one: ``method``, through :mod:`wsi_lpd.train.registry`)
TrainingConfig = PrototypeTrainingConfig | HisynSegTrainingConfig


def _warn_untrained_encoder(model: ModelConfig, source: str | os.PathLike[str] | None) -> None:
    enc = model.encoder
    if isinstance(enc, MitEncoderConfig) and enc.weights is None and enc.variant != "mit_tiny":
        log.warning(
            "%smodel.encoder.weights is null: %s starts from random weights, far below the "
            "paper; set it to an NVlabs mit_b1.pth or a Hugging Face nvidia/mit-b1 file "
            "(docs/readme/engine.md)",
            where(source),
            enc.variant,
        )
