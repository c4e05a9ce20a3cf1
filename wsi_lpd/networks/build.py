"""Build a segmentation network from its method name and ``model`` config.

:data:`MODEL_BUILDERS` is the networks' own table: method name → :class:`ModelSpec` (the
``model`` section's pydantic model, the method's head defaults and the builder). Inference uses it
to rebuild a network from a checkpoint (which records ``method`` and the plain ``model`` mapping)
without importing :mod:`wsi_lpd.train`. The training side's one method registry
(:data:`wsi_lpd.train.registry.METHODS`) points at these entries, so the set of trainable methods
is defined there and a test checks that each has a builder here. Test doubles add a builder taking
the raw mapping with :func:`register_model`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from torch import nn

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.base import SegmentationNetwork
from wsi_lpd.networks.encoders import build_encoder
from wsi_lpd.networks.hisynseg import build_hisynseg
from wsi_lpd.networks.lpd import HeadVariant, LPDModel
from wsi_lpd.networks.model_config import (
    HisynSegModelConfig,
    ModelConfig,
    PrototypeModelConfig,
    parse_encoder_config,
    where,
)
from wsi_lpd.settings import parse_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to validate and build the network of one method.

    ``config``: the ``model`` section's model; ``head_defaults``: ``model.head`` values filled in
    where the YAML leaves them out; ``head_fixed``: values the method requires (CAM: K = 1);
    ``build``: (validated config, classes) → network; ``raw``: the builder takes the raw mapping
    (test doubles registered with :func:`register_model`).
    """

    config: type[PrototypeModelConfig] | type[HisynSegModelConfig]
    build: Callable[[Any, ClassList], nn.Module]
    head_defaults: Mapping[str, Any] = field(default_factory=dict)
    head_fixed: Mapping[str, Any] = field(default_factory=dict)
    raw: bool = False


def _prototype_builder(
    method: HeadVariant,
) -> Callable[[PrototypeModelConfig, ClassList], SegmentationNetwork]:
    def build(config: PrototypeModelConfig, classes: ClassList) -> SegmentationNetwork:
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


#: method → network spec (K and whether projected prototypes are L2-normalised per method)
MODEL_BUILDERS: dict[str, ModelSpec] = {
    "lpd": ModelSpec(
        PrototypeModelConfig,
        _prototype_builder("lpd"),
        head_defaults={"prototypes_per_class": 10, "normalise_prototypes": True},
    ),
    "cam": ModelSpec(
        PrototypeModelConfig,
        _prototype_builder("cam"),
        head_defaults={"prototypes_per_class": 1, "normalise_prototypes": True},
        head_fixed={"prototypes_per_class": 1},
    ),
    "pbip": ModelSpec(
        PrototypeModelConfig,
        _prototype_builder("pbip"),
        head_defaults={"prototypes_per_class": 3, "normalise_prototypes": False},
    ),
    "hisynseg": ModelSpec(HisynSegModelConfig, build_hisynseg),
}


def register_model(
    method: str, builder: Callable[[Mapping[str, Any], ClassList], nn.Module]
) -> None:
    """Add a method whose builder takes the raw ``model`` mapping; the model exposes ``predict``."""
    MODEL_BUILDERS[method] = ModelSpec(PrototypeModelConfig, builder, raw=True)


def _spec(method: str, source: str | os.PathLike[str] | None = None) -> ModelSpec:
    if method not in MODEL_BUILDERS:
        raise ConfigError(
            f"{where(source)}method: unknown {method!r}; expected one of "
            f"{', '.join(MODEL_BUILDERS)}"
        )
    return MODEL_BUILDERS[method]


def parse_model_config(
    method: str,
    data: Mapping[str, Any] | ModelConfig,
    source: str | os.PathLike[str] | None = None,
    section: str = "model",
) -> ModelConfig:
    """Validate a ``model`` mapping (without ``method``) for ``method``; defaults filled in."""
    if isinstance(data, PrototypeModelConfig | HisynSegModelConfig):
        return data
    spec = _spec(method, source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where(source)}{section}: must be a mapping")
    rest = {k: v for k, v in data.items() if k != "encoder"}
    if data.get("encoder") is None:
        raise ConfigError(f"{where(source)}{section}.encoder: missing (the encoder is required)")
    encoder = parse_encoder_config(data["encoder"], source, f"{section}.encoder")
    cfg = parse_section(spec.config, rest, source, section)
    if not isinstance(cfg, PrototypeModelConfig):
        return cfg.model_copy(update={"encoder": encoder})
    given = cfg.head.model_dump(exclude_none=True)
    head = cfg.head.model_copy(update={**spec.head_defaults, **given})
    for key, value in spec.head_fixed.items():
        if getattr(head, key) != value:
            raise ConfigError(
                f"{where(source)}{section}.head.{key}: method {method!r} needs exactly {value} "
                f"(got {getattr(head, key)})"
            )
    return cfg.model_copy(update={"encoder": encoder, "head": head})


def build_model(
    method: str, model_config: Mapping[str, Any] | ModelConfig, classes: ClassList
) -> SegmentationNetwork:
    """Build the network of ``method`` (a key of :data:`MODEL_BUILDERS`)."""
    spec = _spec(method)
    if spec.raw:  # a registered test double: it offers ``predict`` without the base class
        return cast(SegmentationNetwork, spec.build(model_config, classes))
    model = spec.build(parse_model_config(method, model_config), classes)
    assert isinstance(model, SegmentationNetwork)
    return model
