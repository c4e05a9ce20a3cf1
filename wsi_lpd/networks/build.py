"""Build a segmentation model from its method name and ``model`` config.

The config (a plain mapping as stored in checkpoints, or an already validated
:data:`wsi_lpd.train.training_config.ModelConfig`) is validated by
:func:`wsi_lpd.train.training_config.parse_model_config`: ``encoder`` (required), ``head``,
``predict`` for
``lpd`` / ``cam`` (K = 1) / ``pbip`` (fixed prototype bank buffer); ``encoder``, ``decoder``,
``head``, ``background``, ``predict`` for ``hisynseg``. Further methods (e.g. test doubles)
register a builder with :func:`register_model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.encoders import build_encoder
from wsi_lpd.networks.hisynseg import build_hisynseg
from wsi_lpd.networks.lpd import LPDModel
from wsi_lpd.train.training_config import (
    PROTOTYPE_METHODS,
    HisynSegModelConfig,
    ModelConfig,
    PrototypeModelConfig,
    parse_model_config,
)

log = logging.getLogger(__name__)

ModelBuilder = Callable[[Any, ClassList], nn.Module]


def _build_prototype_model(method: str) -> ModelBuilder:
    def build(config: PrototypeModelConfig, classes: ClassList) -> nn.Module:
        head = config.head
        assert head.prototypes_per_class is not None and config.encoder is not None
        model = LPDModel(
            build_encoder(config.encoder),
            classes.num_foreground,
            method=method,
            prototypes_per_class=head.prototypes_per_class,
            prototype_dim=head.prototype_dim,
            adapter_ratio=head.adapter_ratio,
            logit_scale_init=head.logit_scale_init,
            detach_early_cams=head.detach_early_cams,
            normalise_prototypes=head.normalise_prototypes,
            predict_config=config.predict.model_dump(),
        )
        log.info(
            "built %s model: %d classes × %d prototypes, dim %d",
            method,
            classes.num_foreground,
            head.prototypes_per_class,
            head.prototype_dim,
        )
        return model

    return build


def _build_hisynseg(config: HisynSegModelConfig, classes: ClassList) -> nn.Module:
    return build_hisynseg(config, classes)


MODEL_REGISTRY: dict[str, ModelBuilder] = {m: _build_prototype_model(m) for m in PROTOTYPE_METHODS}
MODEL_REGISTRY["hisynseg"] = _build_hisynseg


def register_model(
    method: str, builder: Callable[[Mapping[str, Any], ClassList], nn.Module]
) -> None:
    """Add a method whose builder takes the raw ``model`` mapping; the model exposes ``predict``."""
    MODEL_REGISTRY[method] = builder
    _RAW_CONFIG.add(method)


_RAW_CONFIG: set[str] = set()


def build_model(
    method: str, model_config: Mapping[str, Any] | ModelConfig, classes: ClassList
) -> nn.Module:
    """Build the model of ``method`` (``lpd``, ``cam``, ``pbip``, ``hisynseg`` or registered)."""
    if method not in MODEL_REGISTRY:
        raise ConfigError(
            f"method: unknown {method!r}; expected one of {', '.join(sorted(MODEL_REGISTRY))}"
        )
    if method in _RAW_CONFIG:
        return MODEL_REGISTRY[method](model_config, classes)
    return MODEL_REGISTRY[method](parse_model_config(method, model_config), classes)
