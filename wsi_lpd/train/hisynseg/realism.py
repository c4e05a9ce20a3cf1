"""HisynSeg's realism filter: a binary real/synthetic classifier and the keep rule.

The discriminator is a timm classifier (ResNet-18, random init, two logits: index 0 = synthetic,
index 1 = real) trained with cross-entropy on real multi-label patches against synthesised ones
(random horizontal/vertical flips, Adam, a held-out fraction for validation, best validation
accuracy kept). A synthesised image is kept when softmax P(real) > ``threshold`` (0.5).

:func:`train_discriminator` is the one optimiser loop outside the training engine
(:mod:`wsi_lpd.train.engine`), on purpose: it fits a 2-class image classifier for a few epochs
over in-memory arrays as one step of HisynSeg's data preparation (inside
``HisynSegMethod.prepare``, before the segmentation run starts), not a segmentation run. It needs
none of the engine's run machinery (patch stores, resumable state, checkpoints with the
``model.pt`` contract, validation mIoU, distributed sampling, AMP), and running it through the
engine would make the engine's step, logging and best-checkpoint logic serve two kinds of model.
Its settings are ``hisynseg.filter`` (:class:`~wsi_lpd.train.training_config.FilterSection`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_lpd.errors import ConfigError, DatasetError
from wsi_lpd.train.training_config import FilterSection

log = logging.getLogger(__name__)

REAL, SYNTHETIC = 1, 0


def build_discriminator(name: str = "resnet18") -> nn.Module:
    """A randomly initialised timm classifier with two outputs (synthetic, real)."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=2)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"hisynseg.filter.model: timm cannot build {name!r} ({exc})") from exc


def to_tensor(images: np.ndarray, normalisation: Mapping[str, Sequence[float]]) -> Tensor:
    """(N, H, W, 3) uint8 -> normalised float32 N×3×H×W."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(normalisation["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def realism_scores(
    model: nn.Module,
    images: np.ndarray,
    normalisation: Mapping[str, Sequence[float]],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """P(real) (N,) float32 = softmax over the model's two logits, index 1."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for a in range(0, len(images), batch_size):
            x = to_tensor(images[a : a + batch_size], normalisation).to(device)
            logits = model(x)
            if logits.ndim != 2 or logits.shape[1] != 2:
                raise ConfigError(
                    f"hisynseg.filter: classifier must return B×2 logits, got {tuple(logits.shape)}"
                )
            out.append(torch.softmax(logits.float(), dim=1)[:, REAL].cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0, np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def filter_realistic(
    model: nn.Module,
    images: np.ndarray,
    normalisation: Mapping[str, Sequence[float]],
    *,
    threshold: float = 0.5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(keep (N,) bool = P(real) > threshold, P(real) (N,) float32)."""
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"hisynseg.filter.threshold: must be in [0, 1), got {threshold}")
    p_real = realism_scores(model, images, normalisation, batch_size=batch_size, device=device)
    return p_real > threshold, p_real


@dataclass
class FilterTraining:
    """How the discriminator training went."""

    epochs: int
    n_real: int
    n_synthetic: int
    train_accuracy: float
    val_accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _accuracy(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    normalisation: Mapping[str, Sequence[float]],
    batch_size: int,
    device: str | torch.device,
) -> float:
    """Fraction of ``images`` whose P(real) > 0.5 agrees with ``targets`` (1 real, 0 synthetic)."""
    p = realism_scores(model, images, normalisation, batch_size=batch_size, device=device)
    return float(np.mean((p > 0.5).astype(np.int64) == targets))


def train_discriminator(
    real: np.ndarray,
    synthetic: np.ndarray,
    normalisation: Mapping[str, Sequence[float]],
    settings: FilterSection,
    *,
    epochs: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[nn.Module, FilterTraining]:
    """Train the real/synthetic classifier; returns it (eval mode, best-validation weights).

    ``real`` and ``synthetic``: (N, H, W, 3) uint8 of the same size; ``settings``: model, lr,
    batch size, validation fraction; ``epochs``: ``epochs_mosaic`` or ``epochs_bezier``.
    """
    lr, batch_size, val_fraction = settings.lr, settings.batch_size, settings.val_fraction
    if len(real) == 0 or len(synthetic) == 0:
        raise DatasetError("hisynseg.filter: needs both real and synthesised images to train")
    if real.shape[1:] != synthetic.shape[1:]:
        raise DatasetError(
            f"hisynseg.filter: real {real.shape[1:]} and synthesised {synthetic.shape[1:]} differ"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = np.concatenate([real, synthetic])
    targets = np.concatenate(
        [np.full(len(real), REAL, np.int64), np.full(len(synthetic), SYNTHETIC, np.int64)]
    )
    order = rng.permutation(len(images))
    n_val = round(len(images) * val_fraction) if len(images) >= 4 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    model = build_discriminator(settings.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_state, best_acc, train_acc = None, -1.0, 0.0
    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(train_idx)
        total, n = 0.0, 0
        for a in range(0, len(perm), batch_size):
            idx = perm[a : a + batch_size]
            if len(idx) < 2 and len(perm) >= 2:
                continue  # BatchNorm needs more than one sample
            x = to_tensor(images[idx], normalisation)
            flip_h = torch.from_numpy(rng.random(len(idx)) < 0.5)
            flip_v = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip_h] = x[flip_h].flip(-1)
            x[flip_v] = x[flip_v].flip(-2)
            y = torch.from_numpy(targets[idx]).to(device)
            loss = F.cross_entropy(model(x.to(device)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        eval_idx = val_idx if n_val else train_idx
        acc = _accuracy(
            model, images[eval_idx], targets[eval_idx], normalisation, batch_size, device
        )
        log.info(
            "realism filter epoch %d/%d: loss %.4f, %s accuracy %.3f",
            epoch + 1,
            epochs,
            total / max(n, 1),
            "validation" if n_val else "training",
            acc,
        )
        if acc > best_acc:
            best_acc = acc
            best_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    train_acc = _accuracy(
        model, images[train_idx], targets[train_idx], normalisation, batch_size, device
    )
    report = FilterTraining(
        epochs=epochs,
        n_real=len(real),
        n_synthetic=len(synthetic),
        train_accuracy=train_acc,
        val_accuracy=best_acc if n_val else None,
    )
    return model, report
