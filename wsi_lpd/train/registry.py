"""The one method registry: name → training method, config model, loss defaults, network.

:data:`METHODS` is the list of trainable methods. Everything that offers or checks a method name
reads it: the training config's allowed ``model.method`` values
(:func:`training_config_from_mapping`), the CLI's ``wsi-lpd train --method`` choices, the engine
(:func:`make_method`) and the network builder (each entry's ``model`` is its
:data:`wsi_lpd.networks.build.MODEL_BUILDERS` entry). Adding a method is one entry here (plus its
network in ``MODEL_BUILDERS`` when it needs its own builder; a test checks that every entry has
one).

Why two tables: inference rebuilds a network from a checkpoint (method name + ``model`` mapping)
and must not import the training package, so :mod:`wsi_lpd.networks.build` owns the name →
network table; training-only parts (method class, ``loss`` defaults, which sections the YAML has)
live here, above both. Import order: networks ← train.training_config ← train.methods ← this
module ← engine / CLI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.build import MODEL_BUILDERS, ModelSpec
from wsi_lpd.networks.model_config import where
from wsi_lpd.settings import read_yaml
from wsi_lpd.train.methods.base import Method
from wsi_lpd.train.methods.hisynseg import HisynSegMethod
from wsi_lpd.train.methods.lpd import LPDMethod
from wsi_lpd.train.methods.pbip import PBIPMethod
from wsi_lpd.train.training_config import (
    HisynSegTrainingConfig,
    LossDefaults,
    PrototypeTrainingConfig,
    TrainingConfig,
)


@dataclass(frozen=True)
class MethodSpec:
    """One trainable method: its :class:`Method`, the model of its whole training YAML, its
    ``loss`` defaults and its network (see the module docstring)."""

    method: type[Method[Any]]
    config: type[PrototypeTrainingConfig] | type[HisynSegTrainingConfig]
    loss: LossDefaults
    model: ModelSpec


METHODS: dict[str, MethodSpec] = {
    # the paper: learnable prototypes, L_cls + λ_div·L_div + λ_sim·L_sim
    "lpd": MethodSpec(LPDMethod, PrototypeTrainingConfig, LossDefaults(), MODEL_BUILDERS["lpd"]),
    # a plain CAM classifier: K = 1, L_cls only
    "cam": MethodSpec(
        LPDMethod,
        PrototypeTrainingConfig,
        LossDefaults(
            defaults={"lambda_div": 0.0, "lambda_sim": 0.0, "warmup_iters": 0},
            forced={"lambda_div": 0.0, "lambda_sim": 0.0},
        ),
        MODEL_BUILDERS["cam"],
    ),
    # a fixed prototype bank: no L_div, no warm-up, min–max normalised L_sim images
    "pbip": MethodSpec(
        PBIPMethod,
        PrototypeTrainingConfig,
        LossDefaults(
            defaults={"lambda_div": 0.0, "warmup_iters": 0, "sim_minmax_normalise": True},
            forced={"lambda_div": 0.0, "warmup_iters": 0, "sim_minmax_normalise": True},
        ),
        MODEL_BUILDERS["pbip"],
    ),
    # synthesis + realism filter + segmentation network (its loss weights are in ``hisynseg``)
    "hisynseg": MethodSpec(
        HisynSegMethod, HisynSegTrainingConfig, LossDefaults(), MODEL_BUILDERS["hisynseg"]
    ),
}


def method_names() -> tuple[str, ...]:
    """The registered method names, in registry order."""
    return tuple(METHODS)


def loss_defaults(method: str) -> dict[str, Any]:
    """The full ``loss`` section of a prototype ``method`` with nothing overridden."""
    if method not in METHODS or METHODS[method].config is not PrototypeTrainingConfig:
        raise ConfigError(f"method: no loss section for {method!r}")
    return METHODS[method].loss.full()


def training_config_from_mapping(
    data: Mapping[str, Any], source: str | os.PathLike[str] | None = None, method: str | None = None
) -> TrainingConfig:
    """Validate a whole training YAML mapping; ``method`` overrides ``model.method``."""
    raw_model = data.get("model")
    if not isinstance(raw_model, Mapping):
        raise ConfigError(f"{where(source)}model: missing or not a mapping (method, encoder, ...)")
    name = method or raw_model.get("method", "lpd")
    if name not in METHODS:
        raise ConfigError(
            f"{where(source)}model.method: expected one of {', '.join(METHODS)} (got {name!r})"
        )
    spec = METHODS[name]
    return spec.config.from_mapping(name, data, spec.loss, source)


def load_training_config(path: str | os.PathLike[str], method: str | None = None) -> TrainingConfig:
    """Read and validate the training YAML at ``path``."""
    return training_config_from_mapping(read_yaml(path), path, method)


def make_method(config: TrainingConfig, classes: ClassList) -> Method[Any]:
    """The :class:`Method` of ``config.method`` with its model built (on the CPU)."""
    return METHODS[config.method].method(config, classes)
