"""Ground-truth label masks: a single-page zlib TIFF of class indices, pixel size and classes.

Mask pixel (i, j) covers level-0 px [j·s, (j+1)·s) × [i·s, (i+1)·s), s = mask mpp / slide mpp.
Values index ``ClassList.all`` (foreground 0..C-1, background C).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from wsi_lpd.classes import ClassList
from wsi_lpd.errors import AnnotationError, ConfigError

FORMAT_KEY = "wsi_lpd_label_mask"


@dataclass
class LabelMask:
    """A class-index raster (H×W uint8) at ``mpp`` µm/px with its class list."""

    mask: np.ndarray
    mpp: float
    classes: ClassList


def write_label_mask_into(
    path: str | os.PathLike, mask: np.ndarray, mpp: float, classes: ClassList
) -> Path:
    """Write ``mask`` (H×W uint8 class indices, ``mpp`` µm/px) as a zlib TIFF; returns the path.

    Not atomic (``_into``): the caller passes a temporary path (``wsi_lpd.io.atomic_file``).
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(
            f"{path}: label mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}"
        )
    if not mpp > 0:
        raise ValueError(f"{path}: label mask mpp must be positive, got {mpp}")
    if mask.size and int(mask.max()) >= len(classes.all):
        raise ValueError(
            f"{path}: label mask holds value {int(mask.max())} but only {len(classes.all)} classes"
        )
    description = json.dumps({FORMAT_KEY: 1, "mpp": float(mpp), "classes": classes.to_dict()})
    px_per_cm = 1e4 / float(mpp)
    tifffile.imwrite(
        path,
        np.ascontiguousarray(mask),
        compression="zlib",
        photometric="minisblack",
        resolution=(px_per_cm, px_per_cm),
        resolutionunit="CENTIMETER",
        description=description,
        metadata=None,
    )
    return path


def read_label_mask(path: str | os.PathLike) -> LabelMask:
    """Read a label mask written by :func:`write_label_mask_into`.

    Raises ``AnnotationError`` naming the file when it is missing or not a wsi-lpd label mask.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: label mask not found")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            description = page.description
            mask = page.asarray()
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise AnnotationError(f"{path}: not readable as a TIFF label mask ({exc})") from exc
    try:
        meta = json.loads(description)
    except (json.JSONDecodeError, TypeError):
        meta = None
    if not isinstance(meta, dict) or meta.get(FORMAT_KEY) != 1:
        raise AnnotationError(
            f"{path}: not a wsi-lpd label mask (ImageDescription lacks {FORMAT_KEY})"
        )
    try:
        mpp = float(meta["mpp"])
        classes = ClassList.from_dict(meta["classes"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise AnnotationError(f"{path}: label mask metadata is malformed ({exc})") from exc
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise AnnotationError(
            f"{path}: label mask must be 2-D uint8, found {mask.dtype} {mask.shape}"
        )
    if mask.size and int(mask.max()) >= len(classes.all):
        raise AnnotationError(
            f"{path}: label mask value {int(mask.max())} exceeds its {len(classes.all)} classes"
        )
    return LabelMask(mask=mask, mpp=mpp, classes=classes)
