"""Torch datasets: patch stores (:mod:`wsi_lpd.formats.patch_store`) and BCSS-WSSS / LUAD-HistoSeg
folders.

Every item is a :class:`~wsi_lpd.data.contracts.Batch`: ``image`` (float32 3×H×W normalised),
``labels`` (float32 C, 1 where positive), ``known`` (float32 C, 1 where the label is known:
positive or negative), ``slide`` (int64 slide index) and ``mask`` (int64 H×W class indices,
background = C) only when ground truth is known. Every dataset here is a
:class:`~wsi_lpd.data.contracts.LabelledPatchSet`.
Losses ignore ``labels`` where ``known`` is 0. ``slide`` is -1 where there is no slide (BCSS
folders). Images are RGB in [0, 1] before ``(x - mean) / std``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.data.augment import Augment
from wsi_lpd.data.contracts import Batch
from wsi_lpd.errors import DatasetError
from wsi_lpd.formats.patch_store import POSITIVE, UNKNOWN, PatchStore, open_patch_store

log = logging.getLogger(__name__)

LPD_NORMALISATION: dict[str, tuple[float, float, float]] = {
    "mean": (0.706, 0.478, 0.668),
    "std": (0.198, 0.226, 0.174),
}
"""RGB mean/std of BCSS-WSSS used by LPD (its BGR constants reordered to RGB)."""

LUAD_CLASSES = ClassList.from_names(["TE", "NEC", "LYM", "TAS"])
"""LUAD-HistoSeg classes in file-name label order [TE NEC LYM TAS] + BACK."""

LAYOUT_CLASSES = {"bcss": BCSS_CLASSES, "luad": LUAD_CLASSES}
SPLIT_FOLDERS = {"train": ("train", "training"), "valid": ("valid", "val"), "test": ("test",)}
_LABEL_RE = re.compile(r"\[([01](?:\s*[01])*)\]")


def normalise(image: np.ndarray, normalisation: Mapping[str, Sequence[float]]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → float32 3×H×W tensor ``(x/255 - mean) / std``."""
    mean = torch.tensor(normalisation["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(normalisation["std"], dtype=torch.float32).view(3, 1, 1)
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1), dtype=np.float32)
    return (torch.from_numpy(chw).div_(255.0) - mean) / std


def _worker_reseed(augment: Augment | None) -> None:
    """Give each DataLoader worker (and each epoch's workers) its own augmentation stream.

    Torch's per-worker seed differs per worker and per epoch and follows ``torch.manual_seed``.
    """
    if augment is None:
        return
    info = torch.utils.data.get_worker_info()
    if info is not None:
        augment.reseed(info.seed % 2**32, key=(os.getpid(), info.seed))


def _item(
    image: np.ndarray,
    labels: np.ndarray,
    known: np.ndarray,
    slide: int,
    mask: np.ndarray | None,
    normalisation: Mapping[str, Sequence[float]],
    augment: Augment | None,
) -> Batch:
    if augment is not None:
        image, mask = augment(image, mask)
    item: Batch = {
        "image": normalise(image, normalisation),
        "labels": torch.as_tensor(labels, dtype=torch.float32),
        "known": torch.as_tensor(known, dtype=torch.float32),
        "slide": torch.tensor(slide, dtype=torch.int64),
    }
    if mask is not None:
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    return item


class PatchDataset(Dataset[Batch]):
    """Items of a patch store; zarr is opened lazily in each process (safe with DataLoader workers).

    ``indices`` selects a subset (e.g. a train/validation split). Loaded eagerly for samplers and
    splits, for the selection: ``labels`` (N×C uint8, 1 where positive), ``known`` (N×C uint8),
    ``slide_index`` (N,) int64 (plus ``slide_offset``, so stores concatenated with distinct
    offsets keep distinct slides), ``coords`` (N×2 int64 level-0 px); per slide of the store:
    ``patch_level0_px`` (NaN where unknown).
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        normalisation: Mapping[str, Sequence[float]] = LPD_NORMALISATION,
        augment: Augment | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        slide_offset: int = 0,
    ) -> None:
        self.store_path = Path(store_path)
        store = open_patch_store(self.store_path)
        n = len(store)
        if n == 0:
            raise DatasetError(f"{self.store_path}: the patch store holds no patch")
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise DatasetError(f"{self.store_path}: indices outside 0..{n - 1}")
        self.classes: ClassList = store.classes
        self.mpp = store.mpp
        self.patch_px = store.patch_px
        self.slides = store.slides
        self.has_masks = store.has_masks
        states = store.label_states()[self.indices]
        self.labels = (states == POSITIVE).astype(np.uint8)
        self.known = (states != UNKNOWN).astype(np.uint8)
        self.slide_offset = int(slide_offset)
        self.slide_index = store.slide_indices()[self.indices] + self.slide_offset
        self.coords = store.coords_level0()[self.indices]
        self.patch_level0_px = store.patch_level0_px()
        self.normalisation = normalisation
        self.augment = augment
        self._store: PatchStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def _open(self) -> PatchStore:
        if self._store is None or self._pid != os.getpid():
            self._store = open_patch_store(self.store_path)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def __getitem__(self, i: int) -> Batch:
        store = self._open()
        _worker_reseed(self.augment)
        j = int(self.indices[i])
        image = np.asarray(store.images[j])
        mask = np.asarray(store.masks[j]) if store.masks is not None else None
        return _item(
            image,
            self.labels[i],
            self.known[i],
            int(self.slide_index[i]),
            mask,
            self.normalisation,
            self.augment,
        )


def parse_label_suffix(name: str, num_classes: int) -> np.ndarray:
    """Multi-hot labels from a file name ending in ``[1101]`` or ``[1 1 0 1]`` (BCSS/LUAD)."""
    found = _LABEL_RE.findall(Path(name).stem)
    if not found:
        raise DatasetError(f"{name}: file name carries no [abcd] image-level labels")
    digits = re.sub(r"\s+", "", found[-1])
    if len(digits) != num_classes:
        raise DatasetError(f"{name}: {len(digits)} label digits for {num_classes} classes")
    return np.array([int(d) for d in digits], dtype=np.uint8)


def _split_dir(root: Path, split: str) -> Path:
    if split not in SPLIT_FOLDERS:
        raise DatasetError(f"{root}: unknown split {split!r} (train, valid, test)")
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: no {split} folder (looked for {', '.join(SPLIT_FOLDERS[split])})")


def read_png_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"{path}: not readable as an image ({exc})") from exc


def read_index_mask(path: Path, num_classes: int) -> np.ndarray:
    """A palettised or greyscale PNG of class indices 0..num_classes (background = num_classes)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"{path}: mask must be palettised or greyscale, got {im.mode}")
            mask = np.asarray(im)
    except OSError as exc:
        raise DatasetError(f"{path}: not readable as a mask ({exc})") from exc
    if mask.size and int(mask.max()) > num_classes:
        raise DatasetError(
            f"{path}: mask value {int(mask.max())} outside 0..{num_classes} "
            f"({num_classes} = background)"
        )
    return mask.astype(np.uint8)


class BcssWsssDataset(Dataset[Batch]):
    """BCSS-WSSS / LUAD-HistoSeg folders (Han et al. 2022 layouts).

    ``train``: ``root/train/*.png`` (or ``training/``), labels from the file-name suffix
    ``[1101]`` / ``[1 1 0 1]``, no masks. ``valid``/``test``: ``root/{valid|val|test}/img/*.png``
    with masks of the same name in ``mask/`` (values 0..C-1 tissue, C background); labels = tissue
    classes in the mask (read with the mask, so ``labels`` — N×C uint8 — is eager for ``train``
    only, ``None`` otherwise; ``known`` likewise, all ones: folder labels are fully known).
    ``classes`` defaults to the layout's classes (``bcss``: TUM STR LYM NEC; ``luad``: TE NEC
    LYM TAS).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        classes: ClassList | None = None,
        layout: str = "bcss",
        normalisation: Mapping[str, Sequence[float]] = LPD_NORMALISATION,
        augment: Augment | None = None,
    ) -> None:
        self.root = Path(root)
        if layout not in LAYOUT_CLASSES:
            raise DatasetError(f"{self.root}: unknown layout {layout!r} (bcss, luad)")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder not found")
        self.split = split
        self.classes = classes if classes is not None else LAYOUT_CLASSES[layout]
        self.normalisation = normalisation
        self.augment = augment
        n_fg = self.classes.num_foreground
        folder = _split_dir(self.root, split)
        if split == "train":
            self.images = sorted(folder.glob("*.png"))
            if not self.images:
                raise DatasetError(f"{folder}: no .png images")
            self.masks: list[Path] | None = None
            self.labels: np.ndarray | None = np.stack(
                [parse_label_suffix(p.name, n_fg) for p in self.images]
            )
        else:
            img_dir, mask_dir = folder / "img", folder / "mask"
            for d in (img_dir, mask_dir):
                if not d.is_dir():
                    raise DatasetError(f"{d}: folder not found")
            self.images = sorted(img_dir.glob("*.png"))
            if not self.images:
                raise DatasetError(f"{img_dir}: no .png images")
            self.masks = [mask_dir / p.name for p in self.images]
            missing = [m for m in self.masks if not m.is_file()]
            if missing:
                raise DatasetError(f"{missing[0]}: mask missing ({len(missing)} image(s) lack one)")
            self.labels = None
        self.known = None if self.labels is None else np.ones_like(self.labels)
        self.has_masks = self.masks is not None
        log.info("%s %s: %d images", self.root, split, len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Batch:
        _worker_reseed(self.augment)
        image = read_png_rgb(self.images[i])
        known = np.ones(self.classes.num_foreground, dtype=np.uint8)
        if self.masks is None:
            assert self.labels is not None
            return _item(image, self.labels[i], known, -1, None, self.normalisation, self.augment)
        mask = read_index_mask(self.masks[i], self.classes.num_foreground)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.masks[i]}: mask {mask.shape} does not match image {image.shape[:2]}"
            )
        labels = mask_labels(mask, self.classes.num_foreground)
        return _item(image, labels, known, -1, mask, self.normalisation, self.augment)


def mask_labels(mask: np.ndarray, num_foreground: int) -> np.ndarray:
    """Multi-hot labels of the tissue classes (values < ``num_foreground``) present in a mask."""
    present = np.unique(mask)
    labels = np.zeros(num_foreground, dtype=np.uint8)
    labels[present[present < num_foreground]] = 1
    return labels


class ConcatPatchSets(ConcatDataset[Batch]):
    """Patch stores one after the other, a :class:`LabelledPatchSet` (``labels`` and ``known``
    stacked; ``has_masks`` when every part has masks)."""

    def __init__(self, parts: Sequence[PatchDataset]) -> None:
        super().__init__(parts)
        self.parts = list(parts)
        self.has_masks = all(p.has_masks for p in parts)
        self.labels = np.concatenate([p.labels for p in parts])
        self.known = np.concatenate([p.known for p in parts])
