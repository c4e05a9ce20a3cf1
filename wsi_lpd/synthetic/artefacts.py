"""Slide artefacts painted onto synthetic slides, with their masks as ground truth.

A plan (:func:`plan_artefacts`, deterministic in the seed) places pen strokes (arcs of blue,
green, black and red ink), Gaussian-blurred bands (out of focus), folded strips (the tissue a
fold's width away laid over the tissue: optical densities add, so the strip is darker and more
saturated) and air bubbles (thin dark outline, slightly brighter inside) in level-0 px.
:class:`ArtefactRenderer` wraps a :class:`~wsi_lpd.synthetic.slides.SlideRenderer` and paints the
plan onto every block it renders, so the pyramid is still written tile by tile in bounded memory.
Ground truth (:func:`artefact_truth`) is one boolean mask per class at the label mask's µm/px:
pen = the stroke, blur = band ∩ tissue, fold = strip ∩ tissue ∩ shifted tissue (two layers),
bubble = the disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from wsi_lpd.classes import BCSS_CLASSES, ClassList
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_file

log = logging.getLogger(__name__)

ARTEFACT_KINDS = ("pen", "blur", "fold", "bubble")
GLASS_RGB = 240.0  # at or below the synthetic glass (243–247): glass under a flap adds nothing
# transmittance of each ink (fraction of light passed per channel): Beer-Lambert, multiplied in
INKS = {
    "blue": (0.16, 0.32, 0.78),
    "green": (0.12, 0.55, 0.30),
    "black": (0.13, 0.13, 0.15),
    "red": (0.85, 0.12, 0.14),
}


@dataclass(frozen=True)
class PenStroke:
    """An arc of ink: centre (cx, cy), radius, angles a0..a1 (radians), width, all level-0 px."""

    cx: float
    cy: float
    radius: float
    a0: float
    a1: float
    width: float
    ink: str

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Distance (px) of the points ys × xs (level-0 px, broadcast) to the arc."""
        dx, dy = xs - self.cx, ys - self.cy
        angle = np.mod(np.arctan2(dy, dx) - self.a0, 2 * np.pi)
        on_arc = angle <= self.a1 - self.a0
        radial = np.abs(np.hypot(dx, dy) - self.radius)
        ends = [
            np.hypot(
                xs - (self.cx + self.radius * np.cos(a)), ys - (self.cy + self.radius * np.sin(a))
            )
            for a in (self.a0, self.a1)
        ]
        return np.where(on_arc, radial, np.minimum(*ends))


@dataclass(frozen=True)
class Band:
    """Points p with |n·p − offset| ≤ half_width (level-0 px), n = (cos θ, sin θ)."""

    theta: float
    offset: float
    half_width: float

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Signed distance (px) to the band's edge, < 0 inside."""
        along = np.cos(self.theta) * xs + np.sin(self.theta) * ys
        return np.abs(along - self.offset) - self.half_width


@dataclass(frozen=True)
class Bubble:
    """An air bubble: centre, radius and outline width in level-0 px."""

    cx: float
    cy: float
    radius: float
    rim: float


@dataclass
class ArtefactPlan:
    """Where the artefacts are (level-0 px) and how strong: blur σ in level-0 px per band, fold
    shift (dx, dy) in level-0 px per strip."""

    pens: list[PenStroke] = field(default_factory=list)
    blurs: list[tuple[Band, float]] = field(default_factory=list)
    folds: list[tuple[Band, tuple[float, float]]] = field(default_factory=list)
    bubbles: list[Bubble] = field(default_factory=list)


def plan_artefacts(
    layout: Any, seed: int, kinds: Sequence[str] = ARTEFACT_KINDS, blur_sigma_um: float = 3.0
) -> ArtefactPlan:
    """Artefacts for a :class:`~wsi_lpd.synthetic.slides.SlideLayout`, sized to the slide:
    four pen arcs (one per ink), one blurred band (σ = ``blur_sigma_um``), one folded strip and
    two bubbles, each centred on tissue. Deterministic in ``seed``."""
    unknown = set(kinds) - set(ARTEFACT_KINDS)
    if unknown:
        raise ConfigError(f"unknown artefact kind(s) {sorted(unknown)}; use {ARTEFACT_KINDS}")
    rng = np.random.default_rng([seed, 99])
    mpp, w, h = layout.mpp, layout.width_px, layout.height_px
    side = min(w, h)
    coarse_um = 32.0
    labels = layout.label_mask(coarse_um)
    ty, tx = np.nonzero(labels < layout.n_classes)
    if ty.size == 0:
        raise ConfigError("plan_artefacts: the slide has no tissue to paint artefacts on")
    step = coarse_um / mpp

    def on_tissue(inner: float = 0.25) -> tuple[float, float]:
        """A tissue point (level-0 x, y) in the middle (1 − 2·inner) of the slide if possible."""
        x, y = (tx + 0.5) * step, (ty + 0.5) * step
        central = (x > inner * w) & (x < (1 - inner) * w) & (y > inner * h) & (y < (1 - inner) * h)
        pick = np.flatnonzero(central) if central.any() else np.arange(x.size)
        i = int(rng.choice(pick))
        return float(x[i]), float(y[i])

    plan = ArtefactPlan()
    if "pen" in kinds:
        width = float(np.clip(0.04 * side, 60.0 / mpp, 600.0 / mpp))
        for ink in INKS:
            cx, cy = on_tissue(0.2)
            radius = float(rng.uniform(0.12, 0.22) * side)
            a0 = float(rng.uniform(0, 2 * np.pi))
            span = float(rng.uniform(0.6, 1.1) * np.pi)
            plan.pens.append(PenStroke(cx, cy, radius, a0, a0 + span, width, ink))
    if "blur" in kinds:
        cx, cy = on_tissue()
        theta = float(rng.uniform(0, np.pi))
        offset = np.cos(theta) * cx + np.sin(theta) * cy
        plan.blurs.append((Band(theta, offset, 0.08 * side), blur_sigma_um / mpp))
    if "fold" in kinds:
        cx, cy = on_tissue()
        theta = float(rng.uniform(0, np.pi))
        half = 0.035 * side
        offset = np.cos(theta) * cx + np.sin(theta) * cy
        shift = float(rng.uniform(1.5, 3.0) * half) * rng.choice([-1.0, 1.0])
        plan.folds.append(
            (Band(theta, offset, half), (shift * np.cos(theta), shift * np.sin(theta)))
        )
    if "bubble" in kinds:
        for _ in range(2):
            cx, cy = on_tissue(0.15)
            radius = float(rng.uniform(0.05, 0.09) * side)
            plan.bubbles.append(Bubble(cx, cy, radius, max(2.0, 10.0 / mpp)))
    return plan


class ArtefactRenderer:
    """A slide renderer with the artefacts of ``plan`` painted on (same ``layout`` and
    ``render(x0, y0, w, h)`` as :class:`~wsi_lpd.synthetic.slides.SlideRenderer`)."""

    def __init__(self, base: Any, plan: ArtefactPlan) -> None:
        self.base, self.plan, self.layout = base, plan, base.layout

    def _clipped(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Base render of a region that may leave the slide (glass-white outside)."""
        out = np.full((h, w, 3), 244, np.uint8)
        W, H = self.layout.width_px, self.layout.height_px
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
        if xa < xb and ya < yb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self.base.render(xa, ya, xb - xa, yb - ya)
        return out

    def _folded(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Base plus folds: inside a strip the tissue one shift away adds its optical density."""
        rgb = self._clipped(x0, y0, w, h)
        ys, xs = _centres(x0, y0, w, h)
        for band, (dx, dy) in self.plan.folds:
            inside = np.clip(0.5 - band.distance(ys, xs), 0.0, 1.0)  # 1 px anti-aliased edge
            if not inside.any():
                continue
            over = self._clipped(x0 + round(dx), y0 + round(dy), w, h).astype(np.float32)
            over = np.clip(over / GLASS_RGB, 1 / 255, 1.0)  # the flap's transmittance (glass: 1)
            t = np.power(over, inside[..., None])  # transmittances multiply
            rgb = np.clip(rgb * t + 0.5, 0, 255).astype(np.uint8)
        return rgb

    def render(self, x0_px: int, y0_px: int, w_px: int, h_px: int) -> np.ndarray:
        """RGB (h, w, 3) uint8 of the level-0 region with top-left (x0, y0), artefacts painted."""
        x0, y0, w, h = x0_px, y0_px, w_px, h_px
        ys, xs = _centres(x0, y0, w, h)
        blur_hits = [
            (band, sigma) for band, sigma in self.plan.blurs if (band.distance(ys, xs) < 0).any()
        ]
        if blur_hits:
            pad = int(np.ceil(4 * max(s for _, s in blur_hits)))
            big = self._folded(x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)
            rgb = big[pad : pad + h, pad : pad + w].astype(np.float32)
            for band, sigma in blur_hits:
                blurred = ndimage.gaussian_filter(big.astype(np.float32), (sigma, sigma, 0))
                blurred = blurred[pad : pad + h, pad : pad + w]
                weight = np.clip(0.5 - band.distance(ys, xs) / max(1.0, sigma), 0.0, 1.0)
                rgb += (blurred - rgb) * weight[..., None]
        else:
            rgb = self._folded(x0, y0, w, h).astype(np.float32)
        for bubble in self.plan.bubbles:
            r = np.hypot(xs - bubble.cx, ys - bubble.cy)
            if not (r < bubble.radius + bubble.rim).any():
                continue
            inner = np.clip(bubble.radius - bubble.rim - r + 0.5, 0.0, 1.0)[..., None]
            rgb += (255 - rgb) * 0.25 * inner  # refraction: the inside looks washed out
            rim = np.clip(bubble.rim / 2 + 0.5 - np.abs(r - bubble.radius + bubble.rim / 2), 0, 1)
            rgb *= 1 - 0.7 * rim[..., None]  # dark outline (edge of the air-glass boundary)
        for pen in self.plan.pens:
            d = pen.distance(ys, xs)
            cover = np.clip(pen.width / 2 + 0.5 - d, 0.0, 1.0)
            if not cover.any():
                continue
            ink = np.asarray(INKS[pen.ink], np.float32)
            rgb *= np.power(ink, cover[..., None])
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _centres(x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 pixel centres of a block as broadcastable (h, 1) ys and (1, w) xs."""
    return (y0 + np.arange(h) + 0.5)[:, None], (x0 + np.arange(w) + 0.5)[None, :]


def artefact_truth(layout: Any, plan: ArtefactPlan, mask_mpp: float) -> dict[str, np.ndarray]:
    """One boolean mask per kind at ``mask_mpp`` µm/px (pixel (i, j) takes the value at its
    centre, as the label mask): pen stroke, blur band ∩ tissue, fold strip ∩ both layers' tissue,
    bubble disk."""
    s = mask_mpp / layout.mpp
    h, w = int(np.ceil(layout.height_px / s)), int(np.ceil(layout.width_px / s))
    ys, xs = (np.arange(h) + 0.5)[:, None] * s, (np.arange(w) + 0.5)[None, :] * s
    tissue = layout.label_mask(mask_mpp) < layout.n_classes
    out = {k: np.zeros((h, w), bool) for k in ARTEFACT_KINDS}
    for pen in plan.pens:
        out["pen"] |= pen.distance(ys, xs) <= pen.width / 2
    for band, _sigma in plan.blurs:
        out["blur"] |= (band.distance(ys, xs) <= 0) & tissue
    for band, (dx, dy) in plan.folds:
        yu, xu = (
            (np.arange(h) + 0.5) * mask_mpp + dy * layout.mpp,
            (np.arange(w) + 0.5) * mask_mpp + dx * layout.mpp,
        )
        over = layout.labels(yu, xu) < layout.n_classes
        out["fold"] |= (band.distance(ys, xs) <= 0) & tissue & over
    for bubble in plan.bubbles:
        out["bubble"] |= np.hypot(xs - bubble.cx, ys - bubble.cy) <= bubble.radius
    return out


@dataclass
class ArtefactSlide:
    """A synthetic slide with artefacts: the slide and its ground truth (``truth_path``: npz with
    one boolean mask per kind and ``mask_mpp``)."""

    slide: Any
    truth_path: Path
    plan: ArtefactPlan


def write_artefact_slide(
    path: str | os.PathLike,
    *,
    width_px: int,
    height_px: int,
    mpp: float = 0.5,
    seed: int = 0,
    kinds: Sequence[str] = ARTEFACT_KINDS,
    texture: str = "procedural",
    classes: ClassList = BCSS_CLASSES,
    mask_mpp: float = 8.0,
    blur_sigma_um: float = 3.0,
    **options: Any,
) -> ArtefactSlide:
    """A synthetic slide (:func:`~wsi_lpd.synthetic.slides.write_synthetic_slide`, same files)
    with ``kinds`` of artefacts painted on, plus ``{stem}.artefacts.npz`` (ground truth masks at
    ``mask_mpp`` µm/px). ``kinds=()`` gives the clean slide and empty masks. ``options`` go to
    ``write_synthetic_slide``."""
    from wsi_lpd.synthetic.slides import slide_stem, write_synthetic_slide

    made: list[ArtefactRenderer] = []

    def wrap(renderer: Any) -> ArtefactRenderer:
        made.append(
            ArtefactRenderer(renderer, plan_artefacts(renderer.layout, seed, kinds, blur_sigma_um))
        )
        return made[0]

    slide = write_synthetic_slide(
        path,
        width_px=width_px,
        height_px=height_px,
        mpp=mpp,
        seed=seed,
        classes=classes,
        mask_mpp=mask_mpp,
        texture=texture,
        wrap_renderer=wrap,
        **options,
    )
    layout = made[0].layout
    truth = artefact_truth(layout, made[0].plan, mask_mpp)
    tissue = layout.label_mask(mask_mpp) < layout.n_classes
    truth_path = Path(path).with_name(f"{slide_stem(path)}.artefacts.npz")
    with atomic_file(truth_path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, mask_mpp=np.float64(mask_mpp), tissue=tissue, **truth)
    log.info(
        "%s: artefacts %s painted (%s)",
        path,
        ", ".join(kinds) or "none",
        ", ".join(f"{k} {int(v.sum())} px" for k, v in truth.items()),
    )
    return ArtefactSlide(slide, truth_path, made[0].plan)


def read_artefact_truth(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], float]:
    """(masks per kind plus ``tissue``, mask µm/px) from a ``.artefacts.npz`` written by
    :func:`write_artefact_slide`."""
    with np.load(path) as data:
        masks = {k: data[k].astype(bool) for k in (*ARTEFACT_KINDS, "tissue")}
        return masks, float(data["mask_mpp"])


def score_artefacts(
    detected: dict[str, Any],
    truth: dict[str, np.ndarray],
    mask_mpp: float,
    slide_mpp: float,
    tolerance_um: float = 16.0,
) -> dict[str, float]:
    """Per-class IoU of ``detected`` (polygons in level-0 px per class) against ``truth``
    (:func:`read_artefact_truth`; a class absent from both scores NaN), each true pixel counted
    for the first class covering it in the detector's precedence pen > fold > bubble > blur
    (painted artefacts overlap, detected ones do not), and ``clean_removed``:
    the share of clean tissue (tissue farther than ``tolerance_um`` from any true artefact) that
    any detected artefact covers. Masks compared at ``mask_mpp`` pixel centres."""
    from shapely.geometry import MultiPolygon

    from wsi_lpd.slide.geometry import rasterize
    from wsi_lpd.slide.tissue import dilate_disk

    shape = truth["tissue"].shape
    scale = mask_mpp / slide_mpp
    found = {k: rasterize(detected.get(k, MultiPolygon()), shape, scale) for k in ARTEFACT_KINDS}
    scores: dict[str, float] = {}
    taken = np.zeros(shape, bool)
    for k in ("pen", "fold", "bubble", "blur"):
        true_k = truth[k] & ~taken
        taken |= truth[k]
        union = int((found[k] | true_k).sum())
        scores[f"iou_{k}"] = float((found[k] & true_k).sum() / union) if union else float("nan")
    any_true = np.zeros(shape, bool)
    for k in ARTEFACT_KINDS:
        any_true |= truth[k]
    clean = truth["tissue"] & ~dilate_disk(any_true, tolerance_um / mask_mpp)
    any_found = np.zeros(shape, bool)
    for k in ARTEFACT_KINDS:
        any_found |= found[k]
    scores["clean_removed"] = float((any_found & clean).sum() / max(1, int(clean.sum())))
    scores["clean_tissue_px"] = float(clean.sum())
    return scores
