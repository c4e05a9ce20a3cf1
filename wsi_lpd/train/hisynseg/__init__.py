"""HisynSeg (Fang et al., IEEE TMI 2025) as a second training method on the same patch stores.

Image-mixing synthesis (:mod:`.synthesis`: Mosaic, Bézier), a realism filter (:mod:`.realism`),
a segmentation network with an auxiliary CAM head (:mod:`.model`, method ``hisynseg`` in
:func:`wsi_lpd.networks.build.build_model`), its losses (:mod:`.losses`) and the synthetic /
pseudo-masked patch stores (:mod:`.stores`). It trains in the one engine
(:mod:`wsi_lpd.train.engine`) through :class:`wsi_lpd.train.methods.hisynseg.HisynSegMethod`
(``wsi-lpd train --method hisynseg``). The checkpoint follows the shared ``model.pt`` contract,
so ``wsi-lpd infer`` and ``export`` use it unchanged.
"""
