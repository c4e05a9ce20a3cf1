"""PBIP-style baseline: the LPD network with a fixed prototype bank from the training data."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from wsi_lpd.networks.lpd import pbip_prototype_bank
from wsi_lpd.train.methods.base import TrainContext
from wsi_lpd.train.methods.lpd import LPDMethod, RegionEncoder

log = logging.getLogger(__name__)


class PBIPMethod(LPDMethod):
    """``pbip``: before training, a cosine k-means (K centres per class) of frozen-encoder features
    (a frozen copy of the initial encoder, pooled stage 4 through a fixed random map to D) of
    single-label patches becomes the fixed bank. A class without a single-label patch keeps its
    random unit-norm prototypes (it is reported as untrained and never predicted)."""

    def needs_single_label(self) -> bool:
        return True

    @torch.no_grad()
    def prepare(self, context: TrainContext) -> None:
        s = context.config.train
        model = self.network
        k = model.prototypes_per_class
        single = (context.labels == 1).sum(axis=1) == 1
        rng = np.random.default_rng(s.seed)
        frozen = copy.deepcopy(model.encoder)
        encoder = RegionEncoder(frozen, model.prototype_dim, s.seed).to(context.device)
        current = model.prototypes.detach().cpu()
        features: dict[int, torch.Tensor] = {}
        for c in range(self.classes.num_foreground):
            idx = np.flatnonzero(single & (context.labels[:, c] == 1))
            if idx.size < k:
                log.warning(
                    "pbip: %d single-label patches of class %s (need %d): its prototypes stay "
                    "random",
                    idx.size,
                    self.classes.foreground_names[c],
                    k,
                )
                features[c] = current[c * k : (c + 1) * k]
                continue
            idx = rng.choice(idx, size=min(s.pbip_features_per_class, idx.size), replace=False)
            vecs = [
                encoder(context.train_set[int(i)]["image"][None].to(context.device)).cpu()
                for i in idx
            ]
            features[c] = torch.cat(vecs)
        model.set_prototype_bank(pbip_prototype_bank(features, k, s.seed))
