"""Stain normalisation of a slide at inference (``infer.stain_normalise``).

The slide's source statistics are estimated once, at the model's µm/px, from 64 windows centred on
tissue found in a low-resolution read of the whole slide (at most 2048 px on the long side); the
same per-pixel transform then applies to every window, so overlapping windows see identical
colours (no seams). The reference is the training patches'
statistics stored in model.pt, or those of a reference slide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from wsi_lpd.data.stain import (
    STAIN_METHODS,
    StainTransform,
    check_stain_statistics,
    slide_stain_statistics,
)
from wsi_lpd.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def stain_reference(contract: Mapping[str, Any], source: str = "model.pt") -> dict[str, Any] | None:
    """The checkpoint's training stain statistics, checked; None for checkpoints without them."""
    stats = contract.get("stain_reference")
    if stats is None:
        return None
    try:
        return check_stain_statistics(stats, f"{source}: stain_reference")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


def slide_stain_transform(
    slide: Any,
    method: str,
    contract: Mapping[str, Any],
    *,
    reference_slide: str | os.PathLike | None = None,
    model_source: str = "model.pt",
) -> StainTransform | None:
    """The transform normalising ``slide`` (a SlideLike) with ``method`` (none, reinhard,
    macenko) to the model's training statistics or to ``reference_slide``'s; None for none.

    ``auto`` (the default) is reinhard where there is a reference (a reference slide, or a
    model.pt that stored its training statistics) and none, with a WARNING, for older models."""
    if method == "auto":
        if reference_slide is None and stain_reference(contract, model_source) is None:
            log.warning(
                "%s: no stain statistics (trained before wsi-lpd stored them): slides are not "
                "stain-normalised; retrain, or set infer.stain_reference_slide",
                model_source,
            )
            return None
        method = "reinhard"
    if method not in STAIN_METHODS:
        raise ConfigError(
            f"stain_normalise: expected one of {', '.join(STAIN_METHODS)}, got {method!r}"
        )
    if method == "none":
        return None
    if reference_slide is not None:
        from wsi_lpd.slide.reader import open_slide

        reference = slide_stain_statistics(open_slide(reference_slide), float(contract["mpp"]))
        where = str(reference_slide)
    else:
        reference = stain_reference(contract, model_source)
        where = f"{model_source} (training patches)"
        if reference is None:
            raise CheckpointError(
                f"{model_source}: no stain statistics (trained before wsi-lpd stored them); "
                f"stain_normalise {method} needs a reference slide (infer.stain_reference_slide) "
                "— or set stain_normalise to none, or retrain"
            )
    source = slide_stain_statistics(slide, float(contract["mpp"]))
    name = str(getattr(slide, "path", "slide"))
    if method == "macenko" and (source["macenko"] is None or reference["macenko"] is None):
        which = name if source["macenko"] is None else where
        raise ConfigError(
            f"{which}: cannot estimate H and E stain vectors for macenko (too little stained "
            "tissue); use stain_normalise reinhard or none"
        )
    log.info(
        "%s: stain %s to %s (slide tissue LAB mean %s)",
        name,
        method,
        where,
        ", ".join(f"{v:.1f}" for v in source["reinhard"]["mean"]),
    )
    return StainTransform(method, source, reference)
