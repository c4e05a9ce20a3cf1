"""Training methods behind one interface (:class:`~wsi_lpd.train.methods.base.Method`).

``lpd`` and ``cam`` (:class:`~wsi_lpd.train.methods.lpd.LPDMethod`), ``pbip``
(:class:`~wsi_lpd.train.methods.pbip.PBIPMethod`) and ``hisynseg``
(:class:`~wsi_lpd.train.methods.hisynseg.HisynSegMethod`) all train in
:func:`wsi_lpd.train.engine.train`; the name → class table is
:data:`wsi_lpd.train.registry.METHODS`.
"""

from __future__ import annotations

from wsi_lpd.train.methods.base import Method, TrainContext
from wsi_lpd.train.methods.hisynseg import HisynSegMethod
from wsi_lpd.train.methods.lpd import LPDMethod, RegionEncoder
from wsi_lpd.train.methods.pbip import PBIPMethod

__all__ = [
    "HisynSegMethod",
    "LPDMethod",
    "Method",
    "PBIPMethod",
    "RegionEncoder",
    "TrainContext",
]
