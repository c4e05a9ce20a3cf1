"""HisynSeg image-mixing synthesis: Mosaic transformation and Bézier-mask mixing.

Both draw from *single-label* patches (rows of the patch labels with exactly one positive): every
pixel of such a patch is taken to belong to its class, so a composite of pieces of them comes with
an exact pixel mask (class indices 0..C-1, no background).

- **Mosaic** (:func:`mosaic_image`): four "gridded" images (2×2 grids of half-size random crops of
  random single-label patches); a random anchor (h, w) = ⌊(H, W)·U(a, b)⌋ made even splits the
  output into four quadrants; quadrant k is cut (random crop) from gridded image k after a random
  flip and a shift–scale–rotate (each with probability ``transform_p``; reflect-101 borders).
  Images are resampled bilinearly, masks with nearest neighbour under the same transform.
- **Bézier** (:func:`bezier_image`): two distinct classes drawn uniformly, one single-label patch
  of each; a random closed blob (cubic Bézier segments through ``points`` random points sorted
  counter-clockwise, smoothed tangents set by ``edgy``, control arms ``rad``·segment length) is
  rasterised to a binary mask m; image = m·FG + (1 − m)·BG, mask = m·c_FG + (1 − m)·c_BG.

Every synthesised item ``i`` uses its own generator ``default_rng((seed, kind, stream, i))``, so
a set is deterministic by seed whatever the chunking. Pixels stay uint8 RGB; normalisation is
applied afterwards by the datasets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsi_lpd.data.datasets import mask_labels
from wsi_lpd.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

KINDS = ("mosaic", "bezier")
_KIND_IDS = {"mosaic": 1, "bezier": 2}


@dataclass(frozen=True)
class MosaicParams:
    """Mosaic settings (official values): anchor fraction range, per-quadrant transforms
    (``hisynseg.mosaic_*``, validated by ``HisynSegSection``)."""

    anchor_range: tuple[float, float] = (0.2, 0.8)
    transform_p: float = 0.8  # probability of the flip and, separately, of shift-scale-rotate
    shift: float = 0.0625  # max shift, fraction of the side
    scale: float = 0.2  # scale factor in [1 - scale, 1 + scale]
    rotate_deg: float = 45.0  # rotation in [-rotate_deg, rotate_deg]


@dataclass(frozen=True)
class BezierParams:
    """Bézier-blob settings: number of random points (≥ 3), control-arm ratio (> 0), tangent
    smoothing (≥ 0) (``hisynseg.bezier_*``, validated by ``HisynSegSection``)."""

    points: int = 5
    rad: float = 0.2
    edgy: float = 0.05


@dataclass
class SyntheticBatch:
    """Synthesised images ``(N, H, W, 3)`` uint8, masks ``(N, H, W)`` uint8 (class indices) and
    labels ``(N, C)`` uint8 (classes present in each mask)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


class SingleLabelPool:
    """Single-label source patches by class, read through ``get_image(i) -> (h, w, 3) uint8``.

    ``labels``: (N, C) multi-hot of the whole dataset; only rows with one positive are used. Images
    whose size differs from ``size_px`` are resized (bilinear) on read.
    """

    def __init__(
        self, labels: np.ndarray, get_image: Callable[[int], np.ndarray], size_px: int
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise DatasetError(f"training labels: expected (N, C), got shape {labels.shape}")
        self.num_classes = int(labels.shape[1])
        single = labels.sum(axis=1) == 1
        self.indices = np.flatnonzero(single)
        self.index_class = labels[self.indices].argmax(axis=1).astype(np.int64)
        self.by_class = {
            c: self.indices[self.index_class == c]
            for c in range(self.num_classes)
            if np.any(self.index_class == c)
        }
        self.get_image = get_image
        self.size_px = int(size_px)

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def classes_present(self) -> list[int]:
        """Classes with at least one single-label patch."""
        return sorted(self.by_class)

    def image(self, i: int) -> np.ndarray:
        """The dataset image ``i`` as (size_px, size_px, 3) uint8."""
        img = np.asarray(self.get_image(int(i)))
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DatasetError(f"patch {i}: expected (h, w, 3) uint8, got {img.dtype} {img.shape}")
        if img.shape[:2] != (self.size_px, self.size_px):
            img = np.asarray(
                Image.fromarray(img).resize((self.size_px, self.size_px), Image.Resampling.BILINEAR)
            )
        return img

    def random_patch(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A uniformly drawn single-label patch and its class."""
        k = int(rng.integers(len(self.indices)))
        return self.image(int(self.indices[k])), int(self.index_class[k])

    def patch_of_class(self, rng: np.random.Generator, c: int) -> np.ndarray:
        """A uniformly drawn single-label patch of class ``c``."""
        pool = self.by_class[c]
        return self.image(int(pool[int(rng.integers(len(pool)))]))


def _random_crop(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random (h, w) crop; reflect-pads first when the source is smaller (PadIfNeeded)."""
    ph, pw = max(0, h - image.shape[0]), max(0, w - image.shape[1])
    if ph or pw:
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, (*pads, (0, 0)), mode="reflect")
        mask = np.pad(mask, pads, mode="reflect")
    y = int(rng.integers(image.shape[0] - h + 1))
    x = int(rng.integers(image.shape[1] - w + 1))
    return image[y : y + h, x : x + w], mask[y : y + h, x : x + w]


def gridded_image(
    pool: SingleLabelPool, rng: np.random.Generator, size_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """A 2×2 grid of half-size random crops of random single-label patches -> (image, mask)."""
    image = np.empty((size_px, size_px, 3), np.uint8)
    mask = np.empty((size_px, size_px), np.uint8)
    half = size_px // 2
    spans = ((0, half), (half, size_px))
    for y0, y1 in spans:
        for x0, x1 in spans:
            src, c = pool.random_patch(rng)
            crop, _ = _random_crop(rng, src, np.zeros(src.shape[:2], np.uint8), y1 - y0, x1 - x0)
            image[y0:y1, x0:x1] = crop
            mask[y0:y1, x0:x1] = c
    return image, mask


def _flip(image: np.ndarray, mask: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip like OpenCV: 0 vertical, 1 horizontal, -1 both."""
    axes = {0: (0,), 1: (1,), -1: (0, 1)}[code]
    return np.flip(image, axes), np.flip(mask, axes)


def shift_scale_rotate(
    image: np.ndarray,
    mask: np.ndarray,
    angle_deg: float,
    scale: float,
    dx: float,
    dy: float,
    window: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle_deg`` (counter-clockwise), scale about the centre, shift by (dx, dy)·size.

    Output pixel p samples the input at R(−θ)(p − c − t)/s + c (reflect-101 borders); bilinear
    for the image, nearest for the mask, so the mask stays the class of the pixel's source.
    ``window`` = (y0, x0, height, width) computes only that region of the output (a crop).
    """
    h, w = mask.shape
    y0, x0, oh, ow = window if window is not None else (0, 0, h, w)
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    cy, cx = h / 2.0 - 0.5, w / 2.0 - 0.5
    yy, xx = np.mgrid[y0 : y0 + oh, x0 : x0 + ow].astype(np.float64)
    u = xx - cx - dx * w
    v = yy - cy - dy * h
    # image axes have y down, so a counter-clockwise rotation on screen is R(-θ) in (x, y)
    src_x = (cos * u - sin * v) / scale + cx
    src_y = (sin * u + cos * v) / scale + cy
    coords = np.stack([src_y, src_x])
    out = np.empty((oh, ow, image.shape[2]), np.uint8)
    for ch in range(image.shape[2]):
        val = ndimage.map_coordinates(
            image[..., ch].astype(np.float32), coords, order=1, mode="mirror"
        )
        out[..., ch] = np.clip(np.rint(val), 0, 255).astype(np.uint8)
    out_mask = ndimage.map_coordinates(mask, coords, order=0, mode="mirror").astype(mask.dtype)
    return out, out_mask


def _transformed_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    params: MosaicParams,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip, shift-scale-rotate (each with ``transform_p``), then a random (height, width) crop;
    only the cropped window is resampled."""
    if rng.random() < params.transform_p:
        image, mask = _flip(image, mask, int(rng.integers(-1, 2)))
    if rng.random() < params.transform_p and height <= mask.shape[0] and width <= mask.shape[1]:
        angle = float(rng.uniform(-params.rotate_deg, params.rotate_deg))
        scale = 1.0 + float(rng.uniform(-params.scale, params.scale))
        dx, dy = (float(v) for v in rng.uniform(-params.shift, params.shift, 2))
        y0 = int(rng.integers(mask.shape[0] - height + 1))
        x0 = int(rng.integers(mask.shape[1] - width + 1))
        return shift_scale_rotate(image, mask, angle, scale, dx, dy, (y0, x0, height, width))
    return _random_crop(rng, image, mask, height, width)


def _even_anchor(rng: np.random.Generator, extent: int, lo: float, hi: float) -> int:
    a = int(extent * rng.uniform(lo, hi))
    a -= a % 2
    return min(max(a, 1), extent - 1)


def mosaic_anchor(
    rng: np.random.Generator, size_px: int, params: MosaicParams = MosaicParams()
) -> tuple[int, int]:
    """The quadrant anchor (h, w) = ⌊size·U(a, b)⌋ made even: the first draws of a mosaic."""
    lo, hi = params.anchor_range
    return _even_anchor(rng, size_px, lo, hi), _even_anchor(rng, size_px, lo, hi)


def mosaic_image(
    pool: SingleLabelPool,
    rng: np.random.Generator,
    size_px: int,
    params: MosaicParams = MosaicParams(),
) -> tuple[np.ndarray, np.ndarray]:
    """One Mosaic image ``(size, size, 3)`` uint8 and its mask ``(size, size)`` uint8."""
    h, w = mosaic_anchor(rng, size_px, params)
    image = np.empty((size_px, size_px, 3), np.uint8)
    mask = np.empty((size_px, size_px), np.uint8)
    quadrants = (
        (slice(0, h), slice(0, w)),
        (slice(0, h), slice(w, size_px)),
        (slice(h, size_px), slice(0, w)),
        (slice(h, size_px), slice(w, size_px)),
    )
    for ys, xs in quadrants:
        src_img, src_mask = gridded_image(pool, rng, size_px)
        qh, qw = ys.stop - ys.start, xs.stop - xs.start
        image[ys, xs], mask[ys, xs] = _transformed_crop(rng, src_img, src_mask, params, qh, qw)
    return image, mask


def _ccw_sort(points: np.ndarray) -> np.ndarray:
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    return points[np.argsort(angles)]


def random_blob_points(
    rng: np.random.Generator, n: int, min_distance: float | None = None, tries: int = 200
) -> np.ndarray:
    """``n`` points in the unit square, sorted counter-clockwise, re-drawn (up to ``tries`` times)
    until consecutive points (closing pair included) are at least ``min_distance`` (0.7/n) apart."""
    min_distance = 0.7 / n if min_distance is None else min_distance
    pts = _ccw_sort(rng.random((n, 2)))
    for _ in range(tries - 1):
        gaps = np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1)
        if gaps.min() >= min_distance:
            break
        pts = _ccw_sort(rng.random((n, 2)))
    return pts


def _cubic(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, k: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, k)[:, None]
    points: np.ndarray = (
        (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    )
    return points


def bezier_curve(points: np.ndarray, rad: float, edgy: float, samples: int = 64) -> np.ndarray:
    """Closed curve ``(M, 2)`` through ``points`` (ccw-sorted) made of cubic Bézier segments.

    The tangent angle at each point blends the directions of its incoming and outgoing chords
    with weight p = atan(edgy)/π + 0.5 (edgy 0 → the bisector, smooth); the control points sit at
    ``rad``·|chord| along the tangent (forward at the start, backward at the end of a segment).
    """
    closed = np.vstack([points, points[:1]])
    chords = np.diff(closed, axis=0)
    out_angle = np.arctan2(chords[:, 1], chords[:, 0])
    in_angle = np.roll(out_angle, 1)
    p = math.atan(edgy) / math.pi + 0.5
    # blend on the circle: take the short way round between the two directions
    delta = np.angle(np.exp(1j * (out_angle - in_angle)))
    tangent = in_angle + p * delta
    tangent = np.append(tangent, tangent[0])
    segments = []
    for i in range(len(points)):
        a, b = closed[i], closed[i + 1]
        r = rad * float(np.linalg.norm(b - a))
        c1 = a + r * np.array([math.cos(tangent[i]), math.sin(tangent[i])])
        c2 = b - r * np.array([math.cos(tangent[i + 1]), math.sin(tangent[i + 1])])
        segments.append(_cubic(a, c1, c2, b, samples)[:-1])
    return np.vstack(segments)


def bezier_mask(
    rng: np.random.Generator,
    size_px: int,
    params: BezierParams = BezierParams(),
) -> np.ndarray:
    """Binary ``(size, size)`` bool mask of a random closed Bézier blob."""
    pts = random_blob_points(rng, params.points)
    curve = bezier_curve(pts, params.rad, params.edgy, samples=max(16, size_px // 2)) * size_px
    canvas = Image.new("L", (size_px, size_px), 0)
    ImageDraw.Draw(canvas).polygon([tuple(map(float, q)) for q in curve], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def bezier_image(
    pool: SingleLabelPool,
    rng: np.random.Generator,
    size_px: int,
    params: BezierParams = BezierParams(),
) -> tuple[np.ndarray, np.ndarray]:
    """Two single-label patches of distinct classes mixed through a Bézier blob -> (image, mask)."""
    classes = pool.classes_present
    if len(classes) < 2:
        raise DatasetError(
            f"hisynseg: Bézier mixing needs single-label patches of >= 2 classes, found {classes}"
        )
    c_bg, c_fg = (int(c) for c in rng.choice(classes, size=2, replace=False))
    background = pool.patch_of_class(rng, c_bg)
    foreground = pool.patch_of_class(rng, c_fg)
    m = bezier_mask(rng, size_px, params)
    image = np.where(m[..., None], foreground, background).astype(np.uint8)
    mask = np.where(m, c_fg, c_bg).astype(np.uint8)
    return image, mask


def item_rng(seed: int, kind: str, stream: int, index: int) -> np.random.Generator:
    """The generator of synthesised item ``index`` of ``kind`` in ``stream`` (deterministic)."""
    return np.random.default_rng((int(seed), _KIND_IDS[kind], int(stream), int(index)))


def synthesise(
    kind: str,
    pool: SingleLabelPool,
    indices: Iterable[int],
    *,
    seed: int,
    stream: int = 0,
    mosaic: MosaicParams = MosaicParams(),
    bezier: BezierParams = BezierParams(),
) -> SyntheticBatch:
    """Synthesise items ``indices`` of ``kind`` (``mosaic`` | ``bezier``) at ``pool.size_px``."""
    if kind not in KINDS:
        raise ConfigError(f"hisynseg: unknown synthesis kind {kind!r}; expected {KINDS}")
    if len(pool) == 0:
        raise DatasetError(
            "hisynseg: synthesis needs single-label patches; the training set has none"
        )
    size = pool.size_px
    images, masks = [], []
    for i in indices:
        rng = item_rng(seed, kind, stream, i)
        if kind == "mosaic":
            img, m = mosaic_image(pool, rng, size, mosaic)
        else:
            img, m = bezier_image(pool, rng, size, bezier)
        images.append(img)
        masks.append(m)
    n_cls = pool.num_classes
    if not images:
        return SyntheticBatch(
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, size, size), np.uint8),
            np.zeros((0, n_cls), np.uint8),
        )
    mask_arr = np.stack(masks)
    labels = np.stack([mask_labels(m, n_cls) for m in mask_arr])
    return SyntheticBatch(np.stack(images), mask_arr, labels)


def chunks(start: int, stop: int, size: int) -> Sequence[range]:
    """``range(start, stop)`` cut into consecutive ranges of at most ``size``."""
    return [range(a, min(a + size, stop)) for a in range(start, stop, max(1, size))]
