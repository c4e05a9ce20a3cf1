"""Training methods behind one interface (:class:`~wsi_lpd.train.methods.base.Method`).

``lpd`` and ``cam`` (:class:`~wsi_lpd.train.methods.lpd.LPDMethod`), ``pbip``
(:class:`~wsi_lpd.train.methods.pbip.PBIPMethod`) and ``hisynseg``
(:class:`~wsi_lpd.train.methods.hisynseg.HisynSegMethod`) all train in
:func:`wsi_lpd.train.engine.train`.
"""

from __future__ import annotations

from wsi_lpd.classes import ClassList
from wsi_lpd.train.methods.base import Method, TrainContext
from wsi_lpd.train.methods.hisynseg import HisynSegMethod
from wsi_lpd.train.methods.lpd import LPDMethod, RegionEncoder
from wsi_lpd.train.methods.pbip import PBIPMethod
from wsi_lpd.train.training_config import TrainingConfig

METHOD_CLASSES: dict[str, type[Method]] = {
    "lpd": LPDMethod,
    "cam": LPDMethod,
    "pbip": PBIPMethod,
    "hisynseg": HisynSegMethod,
}


def make_method(config: TrainingConfig, classes: ClassList) -> Method:
    """The :class:`Method` of ``config.method`` with its model built (on the CPU)."""
    return METHOD_CLASSES[config.method](config, classes)


__all__ = [
    "METHOD_CLASSES",
    "HisynSegMethod",
    "LPDMethod",
    "Method",
    "PBIPMethod",
    "RegionEncoder",
    "TrainContext",
    "make_method",
]
