"""The method interface of the one training engine (:func:`wsi_lpd.train.engine.train`).

A :class:`Method` owns a model and knows how to compute the losses of one step; the engine owns
everything else (data loading, optimiser, AMP, schedule, logging, validation, checkpoints,
resume, distributed training). Lifecycle per run::

    method = make_method(config, classes, device)     # builds the model
    method.prepare(context)                           # data-dependent setup (PBIP bank, synthesis)
    loop: method.losses(batches, iteration) -> {"total": ..., ...}
    method.next_round(context, best_checkpoint)       # HisynSeg round 2, else None
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from wsi_lpd.classes import ClassList
from wsi_lpd.data.contracts import Batch, LabelledPatchSet
from wsi_lpd.networks.base import SegmentationNetwork
from wsi_lpd.networks.build import build_model
from wsi_lpd.train.training_config import TrainingConfig, TrainingConfigBase

log = logging.getLogger(__name__)


@dataclass
class TrainContext:
    """What a method may read besides its config.

    ``labels``: (N, C) int8 three-state training labels (1 positive, 0 negative, −1 unknown);
    ``work_dir``: the run's resumable state folder (method artefacts such as stores go there);
    ``is_main``: this process writes files; ``barrier``: waits for every process.
    """

    config: TrainingConfig
    classes: ClassList
    train_set: LabelledPatchSet
    labels: np.ndarray
    mpp: float
    patch_px: int
    normalisation: Mapping[str, Any]
    device: torch.device
    work_dir: Path
    resuming: bool = False
    is_main: bool = True
    barrier: Callable[[], None] = field(default=lambda: None)


C = TypeVar("C", bound=TrainingConfigBase)


class Method(ABC, Generic[C]):
    """One training method: its model, its per-step losses, its prediction.

    Subclasses set ``name`` and ``loss_keys`` (logged columns, ``"total"`` first); the base
    builds ``self.model``. The engine owns the optimiser and synchronises gradients across
    processes after :meth:`losses`' backward pass.
    """

    name: str = ""
    loss_keys: tuple[str, ...] = ("total",)
    curve_keys: tuple[str, ...] = ("total",)  # drawn bold in curves.png
    round: int = 1
    rounds: int = 1

    def __init__(self, config: C, classes: ClassList) -> None:
        self.config = config
        self.classes = classes
        self.model: SegmentationNetwork = build_model(config.method, config.model, classes)
        #: (N,) draw weights of the training patches (``train.class_balance: sampler``)
        self.sample_weights: np.ndarray | None = None

    def to(self, device: torch.device) -> Method[C]:
        """Move the model (and any frozen helper) to ``device``."""
        self.model.to(device)
        return self

    def prepare(self, context: TrainContext) -> None:
        """Data-dependent setup before the first step (default: none)."""

    def datasets(self, context: TrainContext) -> dict[str, LabelledPatchSet]:
        """The sets one step draws a batch from each (default: the training set as ``train``)."""
        return {"train": context.train_set}

    @abstractmethod
    def losses(self, batches: Mapping[str, Batch], iteration: int) -> dict[str, Tensor]:
        """Scalar loss terms of one step; ``"total"`` is back-propagated. ``batches`` maps each
        name of :meth:`datasets` to a batch (``image``, ``labels``, ``known``, … on the device)."""

    def predict(self, images: Tensor, image_labels: Tensor | None = None) -> Tensor:
        """Class probabilities [B, C+1, H, W] (validation and inference)."""
        return self.model.predict(images, image_labels=image_labels)

    @abstractmethod
    def label_logits(self, images: Tensor) -> Tensor:
        """Image-level class logits [B, C] (label F1 / mAP validation without masks)."""

    def best_after(self) -> int:
        """First iteration at which a validation score may select the best checkpoint."""
        s = self.config.train.select_best_after_iters
        return 0 if s is None else s

    def set_pos_weight(self, pos_weight: Tensor) -> bool:
        """Weigh the positive term of L_cls per class [C]; False when the method has no L_cls
        (``train.class_balance: pos_weight`` is then refused)."""
        return False

    def needs_single_label(self) -> bool:
        """Whether a class needs single-label patches to be learnt (PBIP bank, synthesis)."""
        return False

    def record(self) -> dict[str, Any]:
        """Extra fields for the checkpoint's ``training`` record."""
        return {"round": self.round}

    def next_round(self, context: TrainContext, best: Path | None) -> Method[C] | None:
        """The method of the next training round (run by the same loop), or None when done.
        ``best``: the best checkpoint so far (None without validation)."""
        return None
