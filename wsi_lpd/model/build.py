"""Build a segmentation model from its method name and ``model_config``.

``model_config`` schema (plain JSON types; stored verbatim in checkpoints)::

    encoder:                      # passed to wsi_lpd.model.encoders.build_encoder (required)
      {type: mit, variant: mit_b1, strides: [4, 2, 2, 1], drop_path: 0.1, weights: PATH | null}
      or {type: timm, name: ..., out_indices: [1, 2, 3, 4], output_stride: 16, weights: ...}
    head:                         # all optional
      prototypes_per_class: int   # K; lpd 10, cam 1 (forced), pbip 3
      prototype_dim: int          # D = 512; must equal the L_sim region-encoder dim
      adapter_ratio: float        # adapter hidden width = D·ratio (0.5)
      logit_scale_init: float     # initial t_s = 1/0.07 ≈ 14.2857
      detach_early_cams: bool     # detach the CAMs of stages 1–3 (true, as the official code)
      normalise_prototypes: bool  # L2-normalise projected prototypes (lpd/cam true, pbip false)
    predict:                      # optional, see wsi_lpd.model.predict.PREDICT_DEFAULTS
      {mask_absent: predicted | none, stage_weights: [0, .3, .3, .4], bg_power: 10.0,
       tta: false, crf: false, label_threshold: 0.5}

Methods: ``lpd``, ``cam`` (K = 1), ``pbip`` (fixed prototype bank buffer). Further methods (e.g.
``hisynseg``) register a builder with :func:`register_model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.model.lpd import LPDModel
from wsi_lpd.model.predict import validate_predict_config

log = logging.getLogger(__name__)

ModelBuilder = Callable[[Mapping[str, Any], ClassList], nn.Module]

HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lpd": {
        "prototypes_per_class": 10,
        "prototype_dim": 512,
        "adapter_ratio": 0.5,
        "logit_scale_init": 1.0 / 0.07,
        "detach_early_cams": True,
        "normalise_prototypes": True,
    },
}
HEAD_DEFAULTS["cam"] = {**HEAD_DEFAULTS["lpd"], "prototypes_per_class": 1}
HEAD_DEFAULTS["pbip"] = {
    **HEAD_DEFAULTS["lpd"],
    "prototypes_per_class": 3,
    "normalise_prototypes": False,
}
_HEAD_TYPES: dict[str, type | tuple[type, ...]] = {
    "prototypes_per_class": int,
    "prototype_dim": int,
    "adapter_ratio": (int, float),
    "logit_scale_init": (int, float),
    "detach_early_cams": bool,
    "normalise_prototypes": bool,
}
MODEL_CONFIG_KEYS = ("encoder", "head", "predict")


def _check_keys(section: Mapping[str, Any], allowed: Any, where: str) -> None:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
        )


def head_config(method: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The validated ``head`` section merged with the method's defaults."""
    head = model_config.get("head") or {}
    _check_keys(head, HEAD_DEFAULTS[method], "model.head")
    merged = {**HEAD_DEFAULTS[method], **head}
    for key, kind in _HEAD_TYPES.items():
        value = merged[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ConfigError(f"model.head.{key}: wrong type {type(value).__name__} ({value!r})")
    if merged["prototypes_per_class"] < 1 or merged["prototype_dim"] < 1:
        raise ConfigError("model.head.prototypes_per_class / prototype_dim: must be >= 1")
    if not 0 < merged["adapter_ratio"] <= 8:
        raise ConfigError(
            f"model.head.adapter_ratio: must be in (0, 8], got {merged['adapter_ratio']}"
        )
    if method == "cam" and merged["prototypes_per_class"] != 1:
        raise ConfigError("model.head.prototypes_per_class: method 'cam' needs exactly 1")
    return merged


def _build_prototype_model(method: str) -> ModelBuilder:
    def build(model_config: Mapping[str, Any], classes: ClassList) -> nn.Module:
        _check_keys(model_config, MODEL_CONFIG_KEYS, "model")
        if "encoder" not in model_config:
            raise ConfigError("model.encoder: missing (the encoder config is required)")
        head = head_config(method, model_config)
        predict = validate_predict_config(model_config.get("predict") or {}, "model.predict")
        from wsi_lpd.model.encoders import build_encoder

        encoder = build_encoder(dict(model_config["encoder"]))
        model = LPDModel(
            encoder,
            classes.num_foreground,
            method=method,
            prototypes_per_class=head["prototypes_per_class"],
            prototype_dim=head["prototype_dim"],
            adapter_ratio=float(head["adapter_ratio"]),
            logit_scale_init=float(head["logit_scale_init"]),
            detach_early_cams=head["detach_early_cams"],
            normalise_prototypes=head["normalise_prototypes"],
            predict_config=predict,
        )
        log.info(
            "built %s model: %d classes × %d prototypes, dim %d",
            method,
            classes.num_foreground,
            head["prototypes_per_class"],
            head["prototype_dim"],
        )
        return model

    return build


MODEL_REGISTRY: dict[str, ModelBuilder] = {
    m: _build_prototype_model(m) for m in ("lpd", "cam", "pbip")
}


def register_model(method: str, builder: ModelBuilder) -> None:
    """Add a method: ``builder(model_config, classes) -> nn.Module`` exposing ``predict``."""
    MODEL_REGISTRY[method] = builder


def _build_hisynseg(model_config: Mapping[str, Any], classes: ClassList) -> nn.Module:
    """HisynSeg (segmentation net + aux CAM head), imported lazily: see wsi_lpd.hisynseg.model."""
    from wsi_lpd.hisynseg.model import build_hisynseg

    return build_hisynseg(model_config, classes)


register_model("hisynseg", _build_hisynseg)


def build_model(method: str, model_config: Mapping[str, Any], classes: ClassList) -> nn.Module:
    """Build the model of ``method`` (``lpd``, ``cam``, ``pbip`` or a registered one)."""
    if method not in MODEL_REGISTRY:
        raise ConfigError(
            f"method: unknown {method!r}; expected one of {', '.join(sorted(MODEL_REGISTRY))}"
        )
    return MODEL_REGISTRY[method](model_config, classes)
