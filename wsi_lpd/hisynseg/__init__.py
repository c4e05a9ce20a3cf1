"""HisynSeg (Fang et al., IEEE TMI 2025) as a second training method on the same patch stores.

Image-mixing synthesis (:mod:`.synthesis`: Mosaic, Bézier), a realism filter (:mod:`.realism`),
a segmentation network with an auxiliary CAM head (:mod:`.model`, method ``hisynseg`` in
:func:`wsi_lpd.model.build.build_model`) and its trainer (:mod:`.training`,
``wsi-lpd train --method hisynseg``). The checkpoint follows the shared ``model.pt`` contract, so
``wsi-lpd infer`` and ``export`` use it unchanged.
"""

from wsi_lpd.hisynseg.model import HisynSegModel, HisynSegOutput, build_hisynseg
from wsi_lpd.hisynseg.realism import filter_realistic, realism_scores, train_discriminator
from wsi_lpd.hisynseg.synthesis import (
    BezierParams,
    MosaicParams,
    SingleLabelPool,
    SyntheticBatch,
    bezier_image,
    bezier_mask,
    mosaic_image,
    synthesise,
)
from wsi_lpd.hisynseg.training import (
    FilterSettings,
    HisynSegConfig,
    HisynSegSettings,
    consistency_loss,
    dice_loss,
    train_hisynseg,
)

__all__ = [
    "BezierParams",
    "FilterSettings",
    "HisynSegConfig",
    "HisynSegModel",
    "HisynSegOutput",
    "HisynSegSettings",
    "MosaicParams",
    "SingleLabelPool",
    "SyntheticBatch",
    "bezier_image",
    "bezier_mask",
    "build_hisynseg",
    "consistency_loss",
    "dice_loss",
    "filter_realistic",
    "mosaic_image",
    "realism_scores",
    "synthesise",
    "train_discriminator",
    "train_hisynseg",
]
