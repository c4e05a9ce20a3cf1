"""The ``model.pt`` contract: save, load (``weights_only=True``), checksum.

A plain dict (docs/contracts.md)::

    format: "wsi-lpd-model/1"; method; classes (ClassList.to_dict()); mpp; patch_px;
    normalisation: {"mean": [r, g, b], "std": [r, g, b]}; model_config; predict;
    state_dict; training; untrained_classes (names, optional); augmentation (optional);
    stain_reference (optional: the training patches' stain statistics,
    ``wsi_lpd.data.stain.stain_statistics``; absent in checkpoints written before it existed)

Only plain types (dict, list, str, int, float, bool, None) and tensors are stored, so the file loads
with ``torch.load(..., weights_only=True)``. Rebuilding never loads pretrained encoder weights (the
state dict carries them): the encoder config's ``weights`` is set to ``None`` (and
``pretrained`` to ``False``) on load.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.io import atomic_file
from wsi_lpd.networks.build import MODEL_BUILDERS, build_model

log = logging.getLogger(__name__)

FORMAT = "wsi-lpd-model/1"
REQUIRED_KEYS = (
    "format",
    "method",
    "classes",
    "mpp",
    "patch_px",
    "normalisation",
    "model_config",
    "predict",
    "state_dict",
    "training",
)


def _plain(value: Any, where: str) -> Any:
    """Deep copy of ``value`` restricted to JSON-like types (tuples -> lists, paths -> str)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _plain(value.item(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint")


def _rgb_triplet(values: Any, where: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected three numbers ({exc})") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{where}: expected three finite numbers, got {values!r}")
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    method: str,
    classes: ClassList | Mapping[str, Any],
    mpp: float,
    patch_px: int,
    normalisation: Mapping[str, Any],
    model_config: Mapping[str, Any],
    predict_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    untrained_classes: list[str] | None = None,
    augmentation: Mapping[str, Any] | None = None,
    stain_reference: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.pt`` atomically (:func:`wsi_lpd.io.atomic_file`); ``predict_config`` None →
    the model's.

    ``classes``: a ClassList or its ``to_dict()`` form. ``untrained_classes``: foreground class
    names the training data could not teach (never predicted); ``augmentation``: the training
    augmentation. Raises ConfigError on non-plain values.
    """
    path = Path(path)
    if not isinstance(classes, ClassList):
        classes = ClassList.from_dict(classes)
    if method not in MODEL_BUILDERS:
        raise ConfigError(f"method: unknown {method!r}")
    if not (isinstance(mpp, int | float) and mpp > 0) or not (
        isinstance(patch_px, int) and patch_px > 0
    ):
        raise ConfigError(f"checkpoint: mpp ({mpp!r}) and patch_px ({patch_px!r}) must be > 0")
    if predict_config is None:
        predict_config = getattr(model, "predict_config", {})
    predict = {k: v for k, v in predict_config.items() if k != "normalisation"}
    payload = {
        "format": FORMAT,
        "method": method,
        "classes": classes.to_dict(),
        "mpp": float(mpp),
        "patch_px": int(patch_px),
        "normalisation": {
            "mean": _rgb_triplet(normalisation.get("mean"), "normalisation.mean"),
            "std": _rgb_triplet(normalisation.get("std"), "normalisation.std"),
        },
        "model_config": _plain(model_config, "model_config"),
        "predict": _plain(predict, "predict"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": _plain(training or {}, "training"),
        "untrained_classes": _plain(list(untrained_classes or []), "untrained_classes"),
        "augmentation": _plain(dict(augmentation or {}), "augmentation"),
    }
    if stain_reference is not None:
        payload["stain_reference"] = _plain(stain_reference, "stain_reference")
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    os.chmod(path, 0o644)
    log.info("saved %s checkpoint %s", method, path)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check the raw checkpoint dict (``weights_only=True``); CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # objects beyond tensors and plain containers
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects that could run code when "
            "loaded (only weights-only checkpoints are read; re-save it with wsi-lpd train)"
        ) from exc
    except Exception as exc:  # truncated zip, foreign files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or wrong file: {type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a wsi-lpd model (format {found!r}, expected {FORMAT!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}")
    if ckpt["method"] not in MODEL_BUILDERS:
        raise CheckpointError(f"{path}: unknown method {ckpt['method']!r}")
    return ckpt


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    expected_classes: ClassList | None = None,
    expected_method: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint -> (model in eval mode on ``device``, contract dict).

    The contract is the checkpoint dict without ``state_dict``. ``expected_classes`` /
    ``expected_method`` (optional) must match the checkpoint's. Raises CheckpointError.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    method = ckpt["method"]
    if expected_method is not None and method != expected_method:
        raise CheckpointError(f"{path}: method {method!r}, expected {expected_method!r}")
    try:
        classes = ClassList.from_dict(ckpt["classes"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: bad classes entry ({exc})") from exc
    if expected_classes is not None and classes != expected_classes:
        raise CheckpointError(
            f"{path}: classes {classes.names} differ from the expected {expected_classes.names}"
        )
    model_config = copy.deepcopy(ckpt["model_config"])
    encoder_cfg = model_config.get("encoder") if isinstance(model_config, dict) else None
    if isinstance(encoder_cfg, dict):
        encoder_cfg["weights"] = None  # the state dict carries the weights
        if "pretrained" in encoder_cfg:
            encoder_cfg["pretrained"] = False  # never download on rebuild
    if isinstance(model_config, dict):
        model_config["predict"] = dict(ckpt["predict"] or {})
    untrained = list(ckpt.get("untrained_classes") or [])
    unknown = sorted(set(untrained) - set(classes.foreground_names))
    if unknown:
        raise CheckpointError(f"{path}: untrained_classes {unknown} are not among its classes")
    try:
        model = build_model(method, model_config, classes)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model ({exc})") from exc
    _load_state(model, ckpt["state_dict"], path)
    if hasattr(model, "predict_config"):
        model.predict_config = {**model.predict_config, "normalisation": ckpt["normalisation"]}
    model.untrained_classes = [classes.foreground_names.index(n) for n in untrained]
    if untrained:
        log.warning("%s: classes %s were not trained and are never predicted", path, untrained)
    model.to(device).eval()
    contract = {k: v for k, v in ckpt.items() if k != "state_dict"}
    log.info("loaded %s model from %s (%s)", method, path, ", ".join(classes.foreground_names))
    return model, contract


def _load_state(model: nn.Module, state: Any, path: Path) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: state_dict is {type(state).__name__}, not a mapping")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in own.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"{path}: weight {key!r} has shape {shape}, the architecture needs "
                f"{tuple(tensor.shape)}"
            )
    model.load_state_dict(dict(state), strict=True)


def checkpoint_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
