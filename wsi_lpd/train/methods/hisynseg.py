"""HisynSeg in the one engine: each step draws a synthetic and a real batch.

Round 1: L_syn (BCE + Dice on synthesised images with masks) + L_real (BCE + L1 consistency on real
patches). Round 2 (``hisynseg.round2``): a fresh model trained by the same loop on synthetic +
real patches pseudo-masked by the round-1 model (best validation weights when any), BCE + Dice on
both. ``prepare`` builds (or, when resuming, reuses) ``synthetic.zarr`` / ``synthesis.json``; the
pseudo-masked store is ``round2.zarr``; all three are kept in the output folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wsi_lpd.classes import ClassList
from wsi_lpd.data.augment import Augment
from wsi_lpd.data.contracts import Batch, LabelledPatchSet
from wsi_lpd.data.datasets import PatchDataset
from wsi_lpd.errors import CheckpointError
from wsi_lpd.io import write_json
from wsi_lpd.networks.checkpoint import read_checkpoint
from wsi_lpd.networks.hisynseg import HisynSegModel, HisynSegOutput
from wsi_lpd.train.hisynseg.losses import real_losses, synthetic_losses
from wsi_lpd.train.hisynseg.stores import (
    build_pseudo_store,
    build_synthetic_store,
    cached,
    raw_image_source,
    real_multilabel,
)
from wsi_lpd.train.hisynseg.synthesis import SingleLabelPool
from wsi_lpd.train.methods.base import Method, TrainContext
from wsi_lpd.train.training_config import HisynSegTrainingConfig

log = logging.getLogger(__name__)

SYNTHETIC, PSEUDO, STATS = "synthetic.zarr", "round2.zarr", "synthesis.json"


class HisynSegMethod(Method[HisynSegTrainingConfig]):
    """``hisynseg``: synthesis → realism filter → segmentation with consistency (→ round 2)."""

    name = "hisynseg"
    loss_keys = (
        "total",
        "synthetic",
        "real",
        "bce_syn",
        "dice_syn",
        "bce_real",
        "consistency",
        "dice_real",
    )
    curve_keys = ("synthetic", "real")

    def __init__(self, config: HisynSegTrainingConfig, classes: ClassList, round: int = 1) -> None:
        super().__init__(config, classes)
        assert isinstance(self.model, HisynSegModel)
        self.network: HisynSegModel = self.model
        self.settings = config.hisynseg
        self.round = round
        self.rounds = 2 if self.settings.round2 else 1
        self.stats: dict[str, Any] = {}

    def needs_single_label(self) -> bool:
        return True

    def _augment(self, offset: int) -> Augment:
        s = self.config.train
        return Augment.from_dict(s.augment, seed=s.seed + offset)

    def prepare(self, context: TrainContext) -> None:
        """Synthesise and filter (rank 0; reused when resuming), then open the stores."""
        self.model.predict_config = {
            **self.model.predict_config,
            "normalisation": dict(context.normalisation),
        }
        work = context.work_dir
        if context.is_main and not (
            context.resuming and (work / SYNTHETIC).exists() and (work / STATS).exists()
        ):
            s, h = context.config.train, self.settings
            get_raw = raw_image_source(context.train_set, context.normalisation)
            labels = (context.labels == 1).astype(np.uint8)
            pool = SingleLabelPool(
                labels, cached(get_raw, context.patch_px, h.pool_cache_mb), context.patch_px
            )
            log.info(
                "hisynseg: %d single-label patches (classes %s) for synthesis",
                len(pool),
                [self.classes.foreground_names[c] for c in pool.classes_present],
            )
            real = real_multilabel(get_raw, labels, h.filter.n_train, context.patch_px, s.seed)
            stats = build_synthetic_store(
                work / SYNTHETIC,
                pool,
                real,
                self.classes,
                h,
                mpp=context.mpp,
                normalisation=context.normalisation,
                device=context.device,
                seed=s.seed,
            )
            write_json(work / STATS, stats)
        context.barrier()
        self.stats = json.loads((work / STATS).read_text())

    def datasets(self, context: TrainContext) -> dict[str, LabelledPatchSet]:
        work, norm = context.work_dir, context.normalisation
        syn = PatchDataset(work / SYNTHETIC, norm, self._augment(1))
        if self.round == 1:
            return {"synthetic": syn, "real": context.train_set}
        return {"synthetic": syn, "real": PatchDataset(work / PSEUDO, norm, self._augment(2))}

    def losses(self, batches: Mapping[str, Batch], iteration: int) -> dict[str, Tensor]:
        h, bg = self.settings, self.classes.background_index
        syn, real = batches["synthetic"], batches["real"]
        out_syn, out_real = self.model(syn["image"]), self.model(real["image"])
        ls = synthetic_losses(out_syn, syn["labels"], syn["mask"], h.w1, h.w2, bg)
        if self.round == 1:
            lr = real_losses(out_real, real["labels"], h.w1, h.w3)
            parts = {"bce_real": lr["bce"], "consistency": lr["consistency"]}
        else:
            lr = synthetic_losses(out_real, real["labels"], real["mask"], h.w1, h.w2, bg)
            parts = {"bce_real": lr["bce"], "dice_real": lr["dice"]}
        return {
            "total": ls["loss"] + lr["loss"],
            "synthetic": ls["loss"],
            "real": lr["loss"],
            "bce_syn": ls["bce"],
            "dice_syn": ls["dice"],
            **parts,
        }

    def label_logits(self, images: Tensor) -> Tensor:
        output: HisynSegOutput = self.network(images)
        return output.logits

    def record(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "hisynseg": self.settings.model_dump(),
            "synthesis": dict(self.stats),
        }

    def next_round(self, context: TrainContext, best: Path | None) -> HisynSegMethod | None:
        """Round 2: pseudo-mask the real patches (rank 0; reused when resuming), fresh model."""
        if self.round >= self.rounds:
            return None
        pseudo = context.work_dir / PSEUDO
        if context.is_main and not (context.resuming and pseudo.exists()):
            if best is not None:
                self.model.load_state_dict(read_checkpoint(best)["state_dict"])
                log.info("round 2: pseudo masks from the best round-1 model (%s)", best)
            labels = (context.labels == 1).astype(np.uint8)
            build_pseudo_store(
                pseudo,
                self.network,
                raw_image_source(context.train_set, context.normalisation),
                labels,
                self.classes,
                mpp=context.mpp,
                patch_px=context.patch_px,
                normalisation=context.normalisation,
                device=context.device,
                batch_size=context.config.train.batch_size,
            )
        context.barrier()
        if not pseudo.exists():
            raise CheckpointError(f"{pseudo}: missing; cannot run round 2 without it")
        torch.manual_seed(context.config.train.seed)
        nxt = HisynSegMethod(self.config, self.classes, round=self.round + 1)
        nxt.stats = self.stats
        nxt.model.predict_config = dict(self.model.predict_config)
        nxt.to(context.device)
        return nxt
