"""Overlap blending: window weights and row-band accumulators of weighted probabilities.

Each window's probabilities are multiplied by a weight map (Gaussian σ = window·``sigma_frac`` or
a cosine/Hann window, both with a small positive floor) and summed; the result is divided by the
sum of the weights (never by a count), so a constant prediction stays exactly constant across
window borders. Accumulators live on the compute device, one per output row band of ``band_px``
rows; a band is finalised once no pending window can touch it, so memory is bounded by the bands
in flight.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

#: window blends (``infer.blend``, validated by :class:`wsi_lpd.workflow.config.InferSection`)
Blend = Literal["gaussian", "cosine"]
WEIGHT_FLOOR = 1e-3


def window_weights(
    size_px: int, blend: Blend = "gaussian", sigma_frac: float = 1 / 8, floor: float = WEIGHT_FLOOR
) -> np.ndarray:
    """Separable ``(size_px, size_px)`` float32 weight map, peak 1, every value ≥ ``floor``
    (``sigma_frac`` > 0: the Gaussian's sigma as a fraction of the window)."""
    if size_px < 1:
        raise ValueError(f"window_weights: window size must be ≥ 1 px, got {size_px}")
    t = np.arange(size_px, dtype=np.float64) + 0.5
    if blend == "gaussian":
        sigma = sigma_frac * size_px
        g = np.exp(-((t - size_px / 2) ** 2) / (2 * sigma**2))
    else:
        g = np.sin(math.pi * t / size_px) ** 2
    w = np.outer(g, g)
    w /= w.max()
    return np.maximum(w, floor).astype(np.float32)


def argmax_channels(probs: Tensor) -> Tensor:
    """uint8 index of the largest of ``(C, h, w)`` along C (first wins ties, like ``argmax``).

    A loop over the few channels of element-wise ops; ~6× faster than ``argmax(0)`` on CPU.
    """
    best = probs[0].clone()
    index = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        index.masked_fill_(better, c)
        torch.maximum(best, probs[c], out=best)
    return index


class BandAccumulator:
    """Weighted sums ``(C, band, X)`` and weight sums ``(band, X)`` for the output row bands.

    ``height_px``/``width_px`` are the mosaic size in output px; band ``b`` covers rows
    ``[b·band_px, min((b+1)·band_px, height_px))``. Bands are allocated when first touched.
    """

    def __init__(
        self,
        num_channels: int,
        height_px: int,
        width_px: int,
        band_px: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_channels = num_channels
        self.height_px = height_px
        self.width_px = width_px
        self.band_px = band_px
        self.device = torch.device(device)
        self.num_bands = -(-height_px // band_px)
        self._bands: dict[int, tuple[Tensor, Tensor]] = {}
        self._free: list[tuple[Tensor, Tensor]] = []  # released buffers, reused (no churn)
        self._owners: dict[int, tuple[Tensor, Tensor]] = {}

    def band_rows(self, b: int) -> tuple[int, int]:
        """Output rows ``[y0, y1)`` of band ``b``."""
        return b * self.band_px, min((b + 1) * self.band_px, self.height_px)

    def _band(self, b: int) -> tuple[Tensor, Tensor]:
        if b not in self._bands:
            if self._free:
                acc, wsum = self._free.pop()
                acc.zero_()
                wsum.zero_()
            else:
                shape = (self.band_px, self.width_px)
                acc = torch.zeros(
                    (self.num_channels, *shape), dtype=torch.float32, device=self.device
                )
                wsum = torch.zeros(shape, dtype=torch.float32, device=self.device)
            y0, y1 = self.band_rows(b)
            self._bands[b] = (acc[:, : y1 - y0], wsum[: y1 - y0])
            self._owners[b] = (acc, wsum)
        return self._bands[b]

    def add(self, probs: Tensor, weights: Tensor, y0_px: int, x0_px: int) -> None:
        """Add one window: ``probs`` ``(C, h, w)`` float at output px ``(y0_px, x0_px)``."""
        _, h, w = probs.shape
        xa, xb = max(x0_px, 0), min(x0_px + w, self.width_px)
        ya, yb = max(y0_px, 0), min(y0_px + h, self.height_px)
        if xa >= xb or ya >= yb:
            return
        for b in range(ya // self.band_px, (yb - 1) // self.band_px + 1):
            by0, by1 = self.band_rows(b)
            ra, rb = max(ya, by0), min(yb, by1)
            acc, wsum = self._band(b)
            wt = weights[ra - y0_px : rb - y0_px, xa - x0_px : xb - x0_px]
            pr = probs[:, ra - y0_px : rb - y0_px, xa - x0_px : xb - x0_px]
            acc[:, ra - by0 : rb - by0, xa:xb].addcmul_(pr, wt)
            wsum[ra - by0 : rb - by0, xa:xb].add_(wt)

    def finalise(self, b: int, inside: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Release band ``b``: uint8 probabilities ``(C, h, X)`` and uint8 labels ``(h, X)``.

        Pixels no window covered, and pixels where ``inside`` (bool ``(h, X)``) is False, become
        background: probability 255 in the last channel, label ``C - 1`` (the background index).
        """
        y0, y1 = self.band_rows(b)
        bg = self.num_channels - 1
        if b in self._bands:
            probs, wsum = self._bands.pop(b)
            valid = wsum > 0
            probs.div_(wsum.clamp_min_(torch.finfo(torch.float32).tiny))
            if inside is not None:
                valid &= inside.to(self.device)
            probs.mul_(valid)
            probs[bg].masked_fill_(~valid, 1.0)
            labels = argmax_channels(probs)
            probs_u8 = probs.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            self._free.append(self._owners.pop(b))
            return probs_u8.cpu().numpy(), labels.cpu().numpy()
        probs_np = np.zeros((self.num_channels, y1 - y0, self.width_px), np.uint8)
        probs_np[bg] = 255
        return probs_np, np.full((y1 - y0, self.width_px), bg, np.uint8)
