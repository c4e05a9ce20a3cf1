"""The typed training config: one pydantic model per section, method defaults in one place.

A training YAML has the sections ``model`` (``method``, ``encoder``, ``head``, ``predict`` and,
for HisynSeg, ``decoder`` / ``background``), ``loss`` (prototype methods), ``region_encoder``
(the frozen encoder behind L_sim), ``data``, ``train`` and ``hisynseg`` (HisynSeg only). Every
error is one :class:`~wsi_lpd.errors.ConfigError` line ``file: section.key: problem (got value)``.

Method defaults (:data:`HEAD_DEFAULTS`, :data:`LOSS_DEFAULTS`, :data:`LOSS_FORCED`) live here and
nowhere else: CAM has K = 1 and no prototype losses; PBIP has a fixed bank (no L_div, no warm-up,
min–max normalised L_sim images).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from wsi_lpd.data.augment import Augment
from wsi_lpd.errors import ConfigError
from wsi_lpd.workflow.config import Section, parse_section, read_yaml

log = logging.getLogger(__name__)

PROTOTYPE_METHODS = ("lpd", "cam", "pbip")
METHODS = (*PROTOTYPE_METHODS, "hisynseg")
MIT_VARIANTS = ("mit_tiny", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
StageWeights = Annotated[list[float], Field(min_length=4, max_length=4)]
RGB = Annotated[list[float], Field(min_length=3, max_length=3)]


def _where(source: str | os.PathLike | None) -> str:
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
    variant: Literal[MIT_VARIANTS] = "mit_b1"  # type: ignore[valid-type]
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
    data: Any, source: str | os.PathLike | None = None, section: str = "encoder"
) -> EncoderConfig:
    """The ``encoder`` mapping -> :class:`MitEncoderConfig` or :class:`TimmEncoderConfig`."""
    if isinstance(data, MitEncoderConfig | TimmEncoderConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}{section}: expected a mapping, got {data!r}")
    kind = data.get("type")
    if kind == "mit":
        return parse_section(MitEncoderConfig, data, source, section)
    if kind == "timm":
        return parse_section(TimmEncoderConfig, data, source, section)
    raise ConfigError(f"{_where(source)}{section}.type: expected 'mit' or 'timm' (got {kind!r})")


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


#: per method: K and whether projected prototypes are L2-normalised
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lpd": {"prototypes_per_class": 10, "normalise_prototypes": True},
    "cam": {"prototypes_per_class": 1, "normalise_prototypes": True},
    "pbip": {"prototypes_per_class": 3, "normalise_prototypes": False},
}


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


def parse_model_config(
    method: str,
    data: Mapping[str, Any] | ModelConfig,
    source: str | os.PathLike | None = None,
    section: str = "model",
) -> ModelConfig:
    """Validate a ``model`` mapping (without ``method``) for ``method``; defaults filled in."""
    if isinstance(data, PrototypeModelConfig | HisynSegModelConfig):
        return data
    if method not in METHODS:
        raise ConfigError(
            f"{_where(source)}method: unknown {method!r}; expected one of {', '.join(METHODS)}"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}{section}: must be a mapping")
    rest = {k: v for k, v in data.items() if k != "encoder"}
    if data.get("encoder") is None:
        raise ConfigError(f"{_where(source)}{section}.encoder: missing (the encoder is required)")
    encoder = parse_encoder_config(data["encoder"], source, f"{section}.encoder")
    if method == "hisynseg":
        parsed: ModelConfig = parse_section(HisynSegModelConfig, rest, source, section)
        return parsed.model_copy(update={"encoder": encoder})
    cfg = parse_section(PrototypeModelConfig, rest, source, section)
    given = cfg.head.model_dump(exclude_none=True)
    head = cfg.head.model_copy(update={**HEAD_DEFAULTS[method], **given})
    if method == "cam" and head.prototypes_per_class != 1:
        raise ConfigError(
            f"{_where(source)}{section}.head.prototypes_per_class: method 'cam' needs exactly 1 "
            f"(got {head.prototypes_per_class})"
        )
    return cfg.model_copy(update={"encoder": encoder, "head": head})


# --- loss (prototype methods)


class LossConfig(Section):
    """``loss``: L_cls + λ_div·L_div + λ_sim·L_sim after ``warmup_iters`` (LPDLoss arguments)."""

    stage_weights: StageWeights = Field(default_factory=lambda: [0.0, 0.1, 1.0, 1.0])
    lambda_div: float = Field(0.5, ge=0.0)
    lambda_sim: float = Field(0.1, ge=0.0)
    warmup_iters: int = Field(3000, ge=0)
    div_mode: Literal["intent", "parity"] = "intent"
    #: a number > 0, or "logit_scale" (1/t_4, detached); None: logit_scale (intent), 1 (parity)
    div_temperature: Annotated[float, Field(gt=0.0)] | Literal["logit_scale"] | None = None
    div_use_logit_scale: StrictBool = False
    div_positive_only: StrictBool = True  # intent: only regions of classes in the image label
    div_min_region_px: int = Field(4, ge=1)  # intent: skip smaller stage-4 regions
    bg_score: float = 0.2
    sim_tau: float = Field(0.07, gt=0.0)
    sim_mask_alpha: Probability = 0.5
    sim_minmax_normalise: StrictBool = False
    sim_activation_penalty: float = Field(5e-4, ge=0.0)


#: loss defaults per method (what the YAML may override)
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "lpd": {},
    "cam": {"lambda_div": 0.0, "lambda_sim": 0.0, "warmup_iters": 0},
    "pbip": {"lambda_div": 0.0, "warmup_iters": 0, "sim_minmax_normalise": True},
}
#: what a method keeps whatever the YAML says (CAM: no prototype losses; PBIP: fixed bank)
LOSS_FORCED: dict[str, dict[str, Any]] = {
    "lpd": {},
    "cam": {"lambda_div": 0.0, "lambda_sim": 0.0},
    "pbip": {"lambda_div": 0.0, "warmup_iters": 0, "sim_minmax_normalise": True},
}


def loss_defaults(method: str) -> dict[str, Any]:
    """The full loss section of ``method`` with nothing overridden."""
    if method not in LOSS_DEFAULTS:
        raise ConfigError(f"method: no loss defaults for {method!r}")
    return LossConfig().model_copy(update=LOSS_DEFAULTS[method]).model_dump()


def parse_loss_config(
    method: str, data: Mapping[str, Any] | None, source: str | os.PathLike | None = None
) -> LossConfig:
    """``loss`` section of ``method``: method defaults, the YAML, then the method's fixed values."""
    given = parse_section(LossConfig, data, source, "loss").model_dump(exclude_unset=True)
    merged = {**loss_defaults(method), **given, **LOSS_FORCED[method]}
    return parse_section(LossConfig, merged, source, "loss")


# --- data, train


class NormalisationStats(Section):
    mean: RGB
    std: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=3, max_length=3)]


class DataSection(Section):
    """``data``: input normalisation (``lpd``: BCSS-WSSS statistics, ``imagenet``, or mean/std)."""

    normalisation: Literal["lpd", "imagenet"] | NormalisationStats = "lpd"


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
    workers: int = Field(2, ge=0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # held out when no validation set is given
    val_every: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Iterations between validations (always also at the end); auto: as often "
        "as keeps validation ≤ val_time_fraction of the training time, measured as it runs",
    )
    val_time_fraction: float = Field(
        0.05, gt=0.0, le=1.0, description="Share of training time validation may take (auto)"
    )
    refit: StrictBool = Field(
        False,
        description="Retrain the final model on every labelled patch (training, validation "
        "and gap) for the iterations validation chose",
    )
    val_label_mode: Literal["predicted", "given"] = "predicted"
    select_best_after_iters: int | None = Field(None, ge=0)  # None = the loss warm-up
    log_every: int = Field(10, ge=1)
    #: :class:`wsi_lpd.data.augment.Augment` settings (flips, rotations, ``stain_strength``, …)
    augment: dict[str, float | None] = Field(
        default_factory=lambda: {"hflip_p": 0.5, "vflip_p": 0.5, "rot90_p": 0.5}
    )
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


class TrainingYaml(Section):
    """The top level of a training YAML: its sections (each validated by its own model below)."""

    model: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    region_encoder: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    hisynseg: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """A validated training YAML. ``model_config`` is the plain ``model`` mapping (no ``method``)
    stored in checkpoints; ``source`` is the YAML path (None when built from a mapping)."""

    method: str
    model: ModelConfig
    model_config: dict[str, Any]
    loss: LossConfig | None
    region_encoder: EncoderConfig | None
    data: DataSection
    train: TrainSection
    hisynseg: HisynSegSection | None
    source: str | None = None

    def with_train(self, **overrides: Any) -> TrainingConfig:
        """A copy with ``train`` keys replaced (validated: CLI overrides)."""
        merged = {**self.train.model_dump(exclude_unset=True), **overrides}
        train = parse_section(TrainSection, merged, self.source, "train")
        return TrainingConfig(**{**self.__dict__, "train": train})

    def loss_record(self) -> dict[str, Any]:
        """The loss settings as recorded in checkpoints and run.json."""
        if self.hisynseg is not None:
            return {"w1": self.hisynseg.w1, "w2": self.hisynseg.w2, "w3": self.hisynseg.w3}
        assert self.loss is not None
        return self.loss.model_dump()


def training_config_from_mapping(
    data: Mapping[str, Any], source: str | os.PathLike | None = None, method: str | None = None
) -> TrainingConfig:
    """Validate a whole training YAML mapping; ``method`` overrides ``model.method``."""
    where = _where(source)
    parse_section(TrainingYaml, data, source)
    raw_model = data.get("model")
    if not isinstance(raw_model, Mapping):
        raise ConfigError(f"{where}model: missing or not a mapping (method, encoder, ...)")
    model_config = {k: v for k, v in raw_model.items() if k != "method"}
    method = method or raw_model.get("method", "lpd")
    if method not in METHODS:
        raise ConfigError(
            f"{where}model.method: expected one of {', '.join(METHODS)} (got {method!r})"
        )
    model = parse_model_config(method, model_config, source, "model")
    data_section = parse_section(DataSection, data.get("data"), source, "data")
    train = parse_section(TrainSection, data.get("train"), source, "train")
    if method == "hisynseg":
        for section in ("loss", "region_encoder"):
            if data.get(section):
                raise ConfigError(
                    f"{where}{section}: not used by hisynseg (its loss weights go in hisynseg:)"
                )
        loss, region = None, None
        hisynseg = parse_section(HisynSegSection, data.get("hisynseg"), source, "hisynseg")
    else:
        if data.get("hisynseg"):
            raise ConfigError(f"{where}hisynseg: only used by method hisynseg (method {method})")
        hisynseg = None
        loss = parse_loss_config(method, data.get("loss"), source)
        region = None
        if data.get("region_encoder") is not None:
            region = parse_encoder_config(data["region_encoder"], source, "region_encoder")
        if loss.lambda_sim > 0 and region is None:
            raise ConfigError(f"{where}region_encoder: needed when loss.lambda_sim > 0")
    _warn_untrained_encoder(model, source)
    return TrainingConfig(
        method=method,
        model=model,
        model_config=model_config,
        loss=loss,
        region_encoder=region,
        data=data_section,
        train=train,
        hisynseg=hisynseg,
        source=None if source is None else os.fspath(source),
    )


def load_training_config(path: str | os.PathLike, method: str | None = None) -> TrainingConfig:
    """Read and validate the training YAML at ``path``."""
    return training_config_from_mapping(read_yaml(path), path, method)


def _warn_untrained_encoder(model: ModelConfig, source: str | os.PathLike | None) -> None:
    enc = model.encoder
    if isinstance(enc, MitEncoderConfig) and enc.weights is None and enc.variant != "mit_tiny":
        log.warning(
            "%smodel.encoder.weights is null: %s starts from random weights, far below the "
            "paper; set it to an NVlabs mit_b1.pth or a Hugging Face nvidia/mit-b1 file "
            "(docs/readme/engine.md)",
            _where(source),
            enc.variant,
        )
