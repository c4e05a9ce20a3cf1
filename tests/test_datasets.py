"""Datasets (patch store, BCSS-WSSS / LUAD-HistoSeg folders) and augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.data.augment import Augment
from wsi_lpd.data.datasets import (
    LPD_NORMALISATION,
    LUAD_CLASSES,
    BcssWsssDataset,
    PatchDataset,
    parse_label_suffix,
)
from wsi_lpd.errors import DatasetError
from wsi_lpd.formats.patch_store import PatchStoreWriter, open_patch_store

PX = 16


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((PX, PX, 3), rgb, dtype=np.uint8)).save(path)


def _mask_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * 753)
    im.save(path)


@pytest.fixture()
def bcss_root(tmp_path: Path) -> Path:
    root = tmp_path / "BCSS-WSSS"
    _png(root / "train" / "TCGA-A1-x100-y200-[1101].png", (200, 100, 150))
    _png(root / "train" / "TCGA-A2-x300-y200-[0010].png", (10, 20, 30))
    for split in ("valid", "test"):
        mask = np.full((PX, PX), 4, dtype=np.uint8)
        mask[:4] = 0
        mask[4:8] = 2
        _png(root / split / "img" / "p1.png", (120, 60, 90))
        _mask_png(root / split / "mask" / "p1.png", mask)
    return root


def test_label_suffix_formats() -> None:
    np.testing.assert_array_equal(parse_label_suffix("a-x1-[1101].png", 4), [1, 1, 0, 1])
    np.testing.assert_array_equal(parse_label_suffix("b [0 1 1 0].png", 4), [0, 1, 1, 0])
    with pytest.raises(DatasetError, match="no \\[abcd\\]"):
        parse_label_suffix("plain.png", 4)
    with pytest.raises(DatasetError, match="3 label digits"):
        parse_label_suffix("c-[110].png", 4)


def test_bcss_train_split(bcss_root: Path) -> None:
    ds = BcssWsssDataset(bcss_root, "train")
    assert len(ds) == 2 and ds.classes == BCSS_CLASSES and not ds.has_masks
    item = ds[0]
    assert set(item) == {"image", "labels", "known", "slide"}
    torch.testing.assert_close(item["known"], torch.ones(4))
    assert int(item["slide"]) == -1
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, PX, PX)
    torch.testing.assert_close(item["labels"], torch.tensor([1.0, 1.0, 0.0, 1.0]))
    mean, std = LPD_NORMALISATION["mean"], LPD_NORMALISATION["std"]
    expected = (200 / 255 - mean[0]) / std[0]
    assert float(item["image"][0, 3, 3]) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0, 1], [0, 0, 1, 0]])


def test_bcss_test_split_labels_from_mask(bcss_root: Path) -> None:
    ds = BcssWsssDataset(bcss_root, "test")
    item = ds[0]
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (PX, PX)
    assert int(item["mask"][0, 0]) == 0 and int(item["mask"][-1, -1]) == 4
    torch.testing.assert_close(item["labels"], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert len(BcssWsssDataset(bcss_root, "valid")) == 1


def test_luad_layout_and_wsss_tissue_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "LUAD-HistoSeg"
    _png(root / "training" / "img1-[1 0 0 1].png", (1, 2, 3))
    _png(root / "val" / "img" / "v.png", (1, 2, 3))
    _mask_png(root / "val" / "mask" / "v.png", np.full((PX, PX), 3, dtype=np.uint8))
    ds = BcssWsssDataset(root, "train", layout="luad")
    assert ds.classes == LUAD_CLASSES
    torch.testing.assert_close(ds[0]["labels"], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(
        BcssWsssDataset(root, "valid", layout="luad")[0]["labels"], torch.tensor([0.0, 0, 0, 1])
    )


def test_bcss_errors(tmp_path: Path, bcss_root: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        BcssWsssDataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no train folder"):
        BcssWsssDataset(tmp_path)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no \.png images"):
        BcssWsssDataset(tmp_path / "empty")
    _png(bcss_root / "train" / "unlabelled.png", (0, 0, 0))
    with pytest.raises(DatasetError, match=r"unlabelled\.png: file name carries no"):
        BcssWsssDataset(bcss_root, "train")
    bad = np.full((PX, PX), 7, dtype=np.uint8)
    _mask_png(bcss_root / "test" / "mask" / "p1.png", bad)
    with pytest.raises(DatasetError, match=r"p1\.png: mask value 7"):
        BcssWsssDataset(bcss_root, "test")[0]
    (bcss_root / "valid" / "mask" / "p1.png").unlink()
    with pytest.raises(DatasetError, match="mask missing"):
        BcssWsssDataset(bcss_root, "valid")


def _write_store(path: Path, n: int, with_masks: bool = True) -> None:
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, BCSS_CLASSES, 1.0, PX, with_masks=with_masks, chunk_patches=8) as w:
        s0, s1 = w.add_slide("s0"), w.add_slide("s1")
        for i in range(n):
            image = np.full((PX, PX, 3), i, dtype=np.uint8)
            mask = rng.integers(0, 5, size=(PX, PX), dtype=np.uint8) if with_masks else None
            labels = np.array([i % 2, 1, 0, -1 if i > 10 else 0], dtype=np.int8)
            w.append(image, labels, (10 * i, 20 * i), s0 if i < n // 2 else s1, mask)


def test_patch_store_roundtrip_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr"
    _write_store(path, 19)  # two full shards and a partial one
    store = open_patch_store(path)
    assert len(store) == 19 and store.has_masks and store.slides == ["s0", "s1"]
    assert store.images.shards == (8, PX, PX, 3)
    np.testing.assert_array_equal(store.coords[18], [180, 360])
    assert int(store.slide_index[8]) == 0 and int(store.slide_index[9]) == 1

    ds = PatchDataset(path, indices=[3, 18], slide_offset=5)
    assert len(ds) == 2
    item = ds[1]
    assert set(item) == {"image", "labels", "known", "slide", "mask"}
    torch.testing.assert_close(item["labels"], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(item["known"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert item["slide"].dtype == torch.int64 and int(item["slide"]) == 6
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(ds.known, [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(ds.coords, [[30, 60], [180, 360]])
    expected = (18 / 255 - LPD_NORMALISATION["mean"][1]) / LPD_NORMALISATION["std"][1]
    assert float(item["image"][1, 0, 0]) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(item["mask"].numpy(), store.masks[18])
    np.testing.assert_array_equal(ds.slide_index, [5, 6])

    loader = torch.utils.data.DataLoader(
        PatchDataset(path, augment=Augment(seed=1)), batch_size=4, num_workers=1
    )
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 19
    assert batches[0]["mask"].dtype == torch.int64


def test_patch_store_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="patch store not found"):
        open_patch_store(tmp_path / "nope.zarr")
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["format"] = "something"
    with pytest.raises(DatasetError, match="not a patch store"):
        open_patch_store(tmp_path / "other.zarr")
    _write_store(tmp_path / "s.zarr", 3, with_masks=False)
    assert "mask" not in PatchDataset(tmp_path / "s.zarr")[0]
    with pytest.raises(DatasetError, match="indices outside"):
        PatchDataset(tmp_path / "s.zarr", indices=[5])
    PatchStoreWriter(tmp_path / "empty.zarr", BCSS_CLASSES, 1.0, PX).close()
    with pytest.raises(DatasetError, match=r"empty\.zarr: the patch store holds no patch"):
        PatchDataset(tmp_path / "empty.zarr")


def test_augment_keeps_image_and_mask_aligned() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    mask = (image[..., 0] // 50).astype(np.uint8)  # a function of the pixel
    aug = Augment(seed=7)
    shapes, outcomes = set(), set()
    for _ in range(40):
        img2, mask2 = aug(image, mask)
        assert mask2 is not None
        np.testing.assert_array_equal(mask2, img2[..., 0] // 50)
        shapes.add(img2.shape)
        outcomes.add(img2.tobytes())
    assert shapes == {(12, 20, 3), (20, 12, 3)}  # rotations by 90° happened
    assert len(outcomes) >= 6  # most of the 8 flip/rotation combinations occur
    a, b = Augment(seed=5), Augment(seed=5)
    np.testing.assert_array_equal(a(image)[0], b(image)[0])


def test_colour_and_stain_jitter_change_colours_only() -> None:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 120, 180  # pinkish H&E-like
    mask = np.eye(16, dtype=np.uint8)
    aug = Augment(
        hflip_p=0, vflip_p=0, rot90_p=0, hed_jitter=0.05, hed_shift=0.005, color_jitter=0.1, seed=2
    )
    out, out_mask = aug(image, mask)
    np.testing.assert_array_equal(out_mask, mask)
    diff = np.abs(out.astype(int) - image.astype(int))
    assert 0 < diff.mean() < 60
    plain = Augment(hflip_p=0, vflip_p=0, rot90_p=0)(image)[0]
    np.testing.assert_array_equal(plain, image)
    with pytest.raises(ValueError, match=r"augment\.hflip_p: .*less than or equal to 1"):
        Augment(hflip_p=2.0)


def test_dataloader_workers_get_distinct_augmentation_streams(tmp_path: Path) -> None:
    path = tmp_path / "grad.zarr"
    image = np.zeros((PX, PX, 3), dtype=np.uint8)
    image[..., 0] = np.arange(PX * PX).reshape(PX, PX)  # every dihedral transform looks different
    with PatchStoreWriter(path, BCSS_CLASSES, 1.0, PX) as w:
        s = w.add_slide("s")
        for i in range(16):
            w.append(image, np.zeros(4), (i, 0), s)
    torch.manual_seed(0)
    ds = PatchDataset(path, normalisation={"mean": [0, 0, 0], "std": [1, 1, 1]}, augment=Augment())
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    corners = [tuple(np.rint(b["image"][0, 0, 0, :2].numpy() * 255)) for b in loader]
    assert len(corners) == 16
    assert corners[0::2] != corners[1::2]  # worker 0 and worker 1 draw different transforms
