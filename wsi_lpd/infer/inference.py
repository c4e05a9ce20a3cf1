"""Whole-slide inference: overlapping windows at the model's mpp, blended into an OME-Zarr mosaic.

Geometry. The mosaic has ``ceil(level-0 size / s)`` px, s = ``output_mpp / slide.mpp`` level-0 px
per mosaic px. Windows are ``patch_px`` model px (``window_px = patch_px·model_mpp/output_mpp``
mosaic px), placed on the integer mosaic grid with stride ``window_px·(1 − overlap)`` spread so the
first window starts at 0 and the last ends at the mosaic edge (nnU-Net style), and kept where they
intersect the tissue (level-0 MultiPolygon; ``None`` = the slide's bounds). Window (ox, oy) reads
level-0 ``(round(ox·s), round(oy·s))``.

Flow. A torch ``DataLoader`` (``workers`` processes, default one per spare core up to 4, each
re-opening its own slide handle, ``prefetch`` batches each) reads windows in row order while the
device runs ``model.predict``. With ``decode="gpu"`` (or ``auto`` on CUDA) and a JPEG-tiled TIFF/SVS
level, workers only read the compressed tile bytes and the tiles are decoded on the device
(``wsi_lpd.slide.jpeg_tiles``). Probabilities are upsampled (bilinear) to ``window_px`` and blended
into
row-band accumulators on the device (see ``blending.py``) by a blending thread, so blending overlaps
the next forward pass. A band is finalised — divided by its weight sum, masked to tissue, quantised
to uint8, argmax → labels — and written once no pending window can reach it, in a writer thread.
No per-batch device synchronisation happens unless ``timing`` is asked for. Memory is bounded by the
bands in flight (≈ ``(C+2)·4 B·(band_px + window_px)·mosaic width``) plus the prefetch queue.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import resource
import time
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import shapely
import torch
from shapely.affinity import translate
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from torch.utils.data import DataLoader, Dataset, get_worker_info

from wsi_lpd.classes import ClassList
from wsi_lpd.cores import default_workers, usable_cores
from wsi_lpd.device import resolve_device
from wsi_lpd.errors import CheckpointError, ConfigError, NoTissueWarning
from wsi_lpd.formats.mosaic import CHUNK_PX, MosaicWriter
from wsi_lpd.infer.blending import BandAccumulator, window_weights
from wsi_lpd.infer.options import InferSection
from wsi_lpd.slide.geometry import rasterize
from wsi_lpd.slide.jpeg_tiles import (
    JpegTileLevel,
    assemble_windows,
    decode_tiles,
    jpeg_level_for,
    window_rect,
)
from wsi_lpd.slide.reader import default_slide_id

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.10
DECODES = ("auto", "cpu", "gpu")
BLEND_QUEUE = 2  # batches waiting for the blending thread


READING_WORKERS_AT_MOST = 4


def default_reading_workers() -> int:
    """Reading processes by default: one per core beyond the first (the forward pass runs in the
    main process), at most :data:`READING_WORKERS_AT_MOST` (0 on one core)."""
    return default_workers(READING_WORKERS_AT_MOST, beside_main=True)


class SlideLike(Protocol):
    """What inference needs of a slide (``wsi_lpd.slide.reader.Slide`` fits; must be picklable)."""

    path: Path
    mpp: float
    dimensions: tuple[int, int]
    bounds: tuple[int, int, int, int]

    def read_region(
        self, location: tuple[int, int], size: tuple[int, int], mpp: float
    ) -> np.ndarray: ...


@dataclass
class InferenceResult:
    """What one slide's inference did: sizes, counts, timings (s), memory (MiB)."""

    mosaic_path: Path
    slide_id: str
    mosaic_height_px: int
    mosaic_width_px: int
    output_mpp: float
    window_px: int
    windows_total: int
    windows: int
    bands: int
    wall_s: float
    forward_s: float
    loader_wait_s: float
    blend_wait_s: float
    write_wait_s: float
    windows_per_s: float
    peak_rss_mib: float
    cuda_peak_mib: float | None
    device: str
    decode: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mosaic_path"] = str(self.mosaic_path)
        return d


def check_contract(
    contract: Mapping[str, Any],
    slide_mpp: float,
    expected_classes: ClassList | None = None,
    source: str = "model",
    expected_source: str = "expected",
) -> ClassList:
    """Refuse a model that does not fit: classes differ (names or order) from
    ``expected_classes`` (read from ``expected_source``), or its mpp is finer than the slide's
    level 0 by more than 10 %. Returns the model's classes."""
    try:
        classes = ClassList.from_dict(contract["classes"])
        model_mpp = float(contract["mpp"])
        patch_px = int(contract["patch_px"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{source}: contract lacks classes/mpp/patch_px ({exc})") from exc
    if expected_classes is not None and classes.names != expected_classes.names:
        raise CheckpointError(
            f"{source}: model classes {', '.join(classes.names)} differ from "
            f"{expected_source} classes {', '.join(expected_classes.names)} (names and order must "
            "match)"
        )
    if model_mpp <= 0 or patch_px < 1:
        raise CheckpointError(f"{source}: invalid mpp {model_mpp} or patch_px {patch_px}")
    if model_mpp < slide_mpp * (1 - MPP_TOLERANCE):
        raise CheckpointError(
            f"{source}: model works at {model_mpp:g} µm/px, finer than the slide's level 0 "
            f"({slide_mpp:g} µm/px); give the slide's true --slide-mpp or use another model"
        )
    return classes


def window_starts(extent_px: int, window_px: int, stride_px: float) -> np.ndarray:
    """Integer window starts covering ``[0, extent_px)``: first at 0, last ending at the edge."""
    if extent_px <= window_px:
        return np.zeros(1, dtype=np.int64)
    n = math.ceil((extent_px - window_px) / stride_px) + 1
    return np.round(np.linspace(0, extent_px - window_px, n)).astype(np.int64)


def region_of_interest(slide: SlideLike, tissue: BaseGeometry | None) -> BaseGeometry:
    """Tissue geometry in level-0 px, or the slide's bounds rectangle when ``tissue`` is None."""
    if tissue is None:
        x, y, w, h = slide.bounds
        return box(x, y, x + w, y + h)
    return tissue


def plan_windows(
    roi: BaseGeometry,
    mosaic_hw: tuple[int, int],
    window_px: int,
    overlap: float,
    level0_per_px: float,
) -> tuple[np.ndarray, int]:
    """Window origins ``(N, 2)`` int64 (oy, ox) in mosaic px, sorted by row, kept where they touch
    ``roi``; also the number before filtering."""
    stride = max(window_px * (1.0 - overlap), 1.0)
    ys = window_starts(mosaic_hw[0], window_px, stride)
    xs = window_starts(mosaic_hw[1], window_px, stride)
    oy, ox = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    total = len(oy)
    if roi.is_empty:
        return np.zeros((0, 2), np.int64), total
    s = level0_per_px
    boxes = shapely.box(ox * s, oy * s, (ox + window_px) * s, (oy + window_px) * s)
    shapely.prepare(roi)
    keep = shapely.intersects(roi, boxes)
    return np.stack([oy[keep], ox[keep]], axis=1), total


def rasterize_band(
    roi: BaseGeometry, y0_px: int, height_px: int, width_px: int, level0_per_px: float
) -> np.ndarray:
    """Bool ``(height_px, width_px)`` mask of mosaic rows ``[y0_px, y0_px + height_px)``: pixel
    centres inside ``roi`` (level-0 px); the same pixels as a whole-mosaic raster would set."""
    if roi.is_empty:
        return np.zeros((height_px, width_px), bool)
    s = level0_per_px
    return rasterize(translate(roi, 0.0, -y0_px * s), (height_px, width_px), s)


class WindowBatchDataset(Dataset):
    """Batches of windows read at the model mpp: ``(uint8 tensor B×3×P×P, window indices)``.

    Item b holds windows ``[b·batch_size, (b+1)·batch_size)``. Consecutive windows of one row
    that overlap or touch and lie a whole number of output px apart (level-0 x offsets that are
    exact multiples of the level-0 px per output px) are cut from one strip read: each level-0
    pixel is read, decoded and resampled once per strip instead of once per window, and one read
    call serves the whole run. For the area (BOX) resampling at an integer scale the pixels equal
    per-window reads exactly. With ``num_workers > 0`` each worker re-opens the slide (pickle
    round trip) on start, so no file handle is shared between processes.
    """

    def __init__(
        self,
        slide: SlideLike,
        locations_level0: np.ndarray,
        patch_px: int,
        model_mpp: float,
        batch_size: int,
    ) -> None:
        self.slide = slide
        self.locations = np.asarray(locations_level0, dtype=np.int64)
        self.patch_px = patch_px
        self.model_mpp = model_mpp
        self.batch_size = batch_size
        self.level0_per_px = model_mpp / slide.mpp

    def __len__(self) -> int:
        return -(-len(self.locations) // self.batch_size)

    def _joins(self, a: np.ndarray, b: np.ndarray) -> int | None:
        """Output-px offset of window ``b`` from window ``a`` when one strip can serve both."""
        if a[1] != b[1] or b[0] <= a[0]:
            return None
        d = round((b[0] - a[0]) / self.level0_per_px)
        if d > self.patch_px or abs(d * self.level0_per_px - (b[0] - a[0])) > 1e-6:
            return None
        return d

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo = i * self.batch_size
        loc = self.locations[lo : lo + self.batch_size]
        p = self.patch_px
        out = np.empty((len(loc), 3, p, p), dtype=np.uint8)
        start = 0
        while start < len(loc):
            offsets = [0]
            end = start + 1
            while end < len(loc):
                step = self._joins(loc[end - 1], loc[end])
                if step is None:
                    break
                offsets.append(offsets[-1] + step)
                end += 1
            x, y = (int(v) for v in loc[start])
            size = (offsets[-1] + p, p)
            strip = self.slide.read_region((x, y), size, self.model_mpp)
            if strip.shape != (p, size[0], 3):
                raise ValueError(
                    f"{self.slide.path}: read_region returned {strip.shape} at ({x}, {y})"
                )
            chw = strip.transpose(2, 0, 1)
            for k, d in enumerate(offsets, start):
                out[k] = chw[:, :, d : d + p]
            start = end
        return torch.from_numpy(out), torch.arange(lo, lo + len(loc))


class JpegWindowDataset(Dataset):
    """Windows as compressed JPEG tiles: ``(tiles {(ty, tx): bytes}, level rectangle, index)``;
    decoding and assembly happen on the compute device
    (:func:`wsi_lpd.slide.jpeg_tiles.decode_tiles`)."""

    def __init__(
        self, tiles: JpegTileLevel, locations_level0: np.ndarray, patch_px: int, scale: float
    ) -> None:
        self.tiles, self.locations, self.patch_px, self.scale = (
            tiles,
            locations_level0,
            patch_px,
            scale,
        )

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, i: int) -> tuple[dict, tuple[int, int, int, int], int]:
        x, y = (float(v) for v in self.locations[i])
        rect = window_rect(self.tiles, x, y, self.patch_px, self.scale)
        data = {t: self.tiles.tile_bytes(*t) for t in self.tiles.tiles_for(*rect)}
        return data, rect, i


def _collate_jpeg(items: list) -> tuple[dict, list, torch.Tensor]:
    tiles: dict = {}
    for data, _, _ in items:
        tiles.update(data)
    return tiles, [rect for _, rect, _ in items], torch.tensor([i for _, _, i in items])


def _reopen_slide(_worker_id: int) -> None:
    info = get_worker_info()
    if info is not None:
        ds = info.dataset
        ds.slide = pickle.loads(pickle.dumps(ds.slide))  # type: ignore[attr-defined]


def _autocast_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp in ("off", "none", "no", False):
        return None
    if amp in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in table:
        raise ConfigError(f"amp: expected bf16, fp16, off or auto, got {amp!r}")
    return table[amp]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Predictor:
    """``model.predict`` on uint8 batches: normalisation from the contract, AMP and
    ``channels_last`` on CUDA only, output checked to be ``B×(C+1)×h×w`` float32."""

    def __init__(
        self,
        model: torch.nn.Module,
        contract: Mapping[str, Any],
        classes: ClassList,
        device: torch.device,
        amp: str | None,
        source: str,
    ) -> None:
        self.device, self.classes, self.source = device, classes, source
        self.autocast = _autocast_dtype(amp, device)
        norm = contract.get("normalisation") or {"mean": [0.0] * 3, "std": [1.0] * 3}
        self.mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1) * 255.0
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = (images_u8.to(self.device, non_blocking=True).float() - self.mean) / self.std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            out = self.model.predict(x)  # type: ignore[operator]
        n = len(self.classes.all)
        if out.ndim != 4 or out.shape[1] != n:
            raise CheckpointError(
                f"{self.source}: predict returned {tuple(out.shape)}, expected B×{n}×h×w for "
                f"classes {self.classes.names}"
            )
        return out.float()


class _BandSink:
    """Finalises accumulator bands in order and writes them with a background thread."""

    def __init__(
        self, acc: BandAccumulator, writer: MosaicWriter, roi: BaseGeometry, level0_per_px: float
    ) -> None:
        self.acc, self.writer, self.roi, self.s = acc, writer, roi, level0_per_px
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-writer")
        self.blender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosaic-blend")
        self.blending: deque[Future] = deque()
        self.pending: Future | None = None
        self.next_band = 0
        self.wait_s = 0.0
        self.blend_wait_s = 0.0

    def _blend(
        self, out: torch.Tensor, weights: torch.Tensor, origins: np.ndarray, next_row: int
    ) -> None:
        with torch.inference_mode():  # thread-local: the blending thread sets its own
            for k, (oy, ox) in enumerate(origins.tolist()):
                self.acc.add(out[k], weights, oy, ox)
            self.flush_until(next_row)

    def blend(
        self, out: torch.Tensor, weights: torch.Tensor, origins: np.ndarray, next_row: int
    ) -> None:
        """Blend a batch (``origins`` (B, 2) mosaic px) in the blending thread, then write the
        bands above ``next_row``; waits only when ``BLEND_QUEUE`` batches are already queued."""
        while len(self.blending) >= BLEND_QUEUE:
            t0 = time.perf_counter()
            self.blending.popleft().result()
            self.blend_wait_s += time.perf_counter() - t0
        self.blending.append(self.blender.submit(self._blend, out, weights, origins, next_row))

    def drain(self) -> None:
        """Wait for every queued batch to be blended."""
        while self.blending:
            t0 = time.perf_counter()
            self.blending.popleft().result()
            self.blend_wait_s += time.perf_counter() - t0

    def _wait(self) -> None:
        if self.pending is not None:
            t0 = time.perf_counter()
            self.pending.result()
            self.wait_s += time.perf_counter() - t0
            self.pending = None

    def flush_until(self, row_px: int) -> None:
        """Write every band that ends at or above mosaic row ``row_px`` (no window reaches it)."""
        acc = self.acc
        while self.next_band < acc.num_bands and acc.band_rows(self.next_band)[1] <= row_px:
            y0, y1 = acc.band_rows(self.next_band)
            inside = rasterize_band(self.roi, y0, y1 - y0, acc.width_px, self.s)
            probs, labels = acc.finalise(self.next_band, torch.from_numpy(inside))
            self._wait()  # at most one band in the writer: memory stays bounded
            self.pending = self.pool.submit(self.writer.write_band, y0, probs, labels)
            self.next_band += 1

    def finish(self) -> Path:
        """Write the remaining bands, build the pyramid, rename the mosaic into place."""
        self.drain()
        self.blender.shutdown(wait=True)
        self.flush_until(self.acc.height_px)
        self._wait()
        self.pool.shutdown(wait=True)
        t0 = time.perf_counter()
        final = self.writer.close()
        self.wait_s += time.perf_counter() - t0
        return final

    def abort(self) -> None:
        """Stop writing and remove the temporary store."""
        for job in self.blending:
            job.cancel()
        self.blender.shutdown(wait=True)
        if self.pending is not None:
            self.pending.cancel()
        self.pool.shutdown(wait=True)
        self.writer.abort()


def _window_px(patch_px: int, model_mpp: float, output_mpp: float) -> int:
    exact = patch_px * model_mpp / output_mpp
    window_px = max(round(exact), 1)
    if abs(window_px - exact) > 0.01:
        log.warning(
            "window is %.3f output px, rounded to %d; pick output_mpp so that "
            "patch_px·mpp/output_mpp is whole",
            exact,
            window_px,
        )
    return window_px


def _resolve_decode(
    decode: str, slide: SlideLike, model_mpp: float, dev: torch.device
) -> JpegTileLevel | None:
    """The JPEG tile level to decode on the device, or None for ``slide.read_region``."""
    if decode not in DECODES:
        raise ConfigError(f"decode: expected one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "cpu" or (decode == "auto" and dev.type != "cuda"):
        return None
    tiles = jpeg_level_for(slide, model_mpp)
    if tiles is None and decode == "gpu":
        log.warning(
            "%s: the level read at %g µm/px is not JPEG-tiled; decoding on the CPU instead",
            getattr(slide, "path", "slide"),
            model_mpp,
        )
    return tiles


def window_loader(
    slide: SlideLike,
    locations: np.ndarray,
    patch_px: int,
    model_mpp: float,
    *,
    batch_size: int,
    workers: int,
    prefetch: int,
    tiles: JpegTileLevel | None,
    pin_memory: bool,
) -> DataLoader:
    """The window DataLoader: decoded uint8 windows, or JPEG tile bytes when ``tiles`` is set."""
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
    )
    if tiles is not None:
        scale = model_mpp / (slide.mpp * tiles.downsample)
        ds = JpegWindowDataset(tiles, locations, patch_px, scale)
        return DataLoader(ds, collate_fn=_collate_jpeg, **common)
    common["batch_size"] = None  # the dataset yields whole batches (strips shared by windows)
    return DataLoader(
        WindowBatchDataset(slide, locations, patch_px, model_mpp, batch_size),
        pin_memory=pin_memory,
        worker_init_fn=_reopen_slide if workers else None,
        **common,
    )


def batch_images(
    batch: Any, tiles: JpegTileLevel | None, patch_px: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images B×3×P×P, window indices)`` of a loader batch (decoding tiles on ``dev``)."""
    if tiles is None:
        images, idx = batch
        return images, idx
    data, rects, idx = batch
    keys = list(data)
    decoded = dict(zip(keys, decode_tiles([data[k] for k in keys], dev), strict=True))
    return assemble_windows(tiles, rects, decoded, patch_px, dev), idx


def predict_slide(
    slide: SlideLike,
    model: torch.nn.Module,
    contract: Mapping[str, Any],
    out_path: str | os.PathLike,
    opts: InferSection | None = None,
    *,
    tissue: BaseGeometry | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    slide_id: str | None = None,
    expected_classes: ClassList | None = None,
    model_sha256: str = "",
    band_px: int = CHUNK_PX,
    timing: bool = False,
) -> InferenceResult:
    """Predict a whole slide into ``out_path`` (``{slide_id}.ome.zarr``), written atomically.

    ``opts`` (default: :class:`~wsi_lpd.infer.options.InferSection`'s defaults): ``output_mpp``
    (µm/px) defaults to the model's native output resolution (model mpp × patch_px / predicted map
    size); ``amp``: ``auto`` (bf16 where supported, else fp16), ``bf16``, ``fp16`` or ``off``, CUDA
    only; ``workers``: reading processes (None: :func:`default_reading_workers`); ``prefetch``:
    batches queued per worker; ``decode``: ``cpu`` (``slide.read_region``), ``gpu`` (JPEG tiles
    decoded on the compute device — nvJPEG on CUDA, libjpeg-turbo on the CPU) or ``auto`` (``gpu``
    on CUDA for JPEG-tiled levels). ``device`` (a resolved device or a name) overrides
    ``opts.device``. ``band_px`` (output px) must be a multiple of the 512-px chunk. ``timing``
    synchronises the device after each forward pass so that ``forward_s`` is exact (slower on
    CUDA).
    """
    from wsi_lpd.progress import progress as progress_bar

    opts = opts or InferSection()
    overlap, blend, sigma_frac = opts.overlap, opts.blend, opts.sigma_frac
    output_mpp, batch_size, prefetch = opts.output_mpp, opts.batch_size, opts.prefetch
    started = time.perf_counter()
    source = str(getattr(slide, "path", "")) or "slide"
    classes = check_contract(contract, slide.mpp, expected_classes, source=source)
    model_mpp, patch_px = float(contract["mpp"]), int(contract["patch_px"])
    workers = default_reading_workers() if opts.workers is None else opts.workers
    if band_px < CHUNK_PX or band_px % CHUNK_PX:
        raise ConfigError(f"band_px: must be a multiple of {CHUNK_PX}, got {band_px}")
    dev = resolve_device(opts.device if device is None else device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    predict = Predictor(model, contract, classes, dev, opts.amp, source)
    sid = slide_id or default_slide_id(source)
    tiles = _resolve_decode(opts.decode, slide, model_mpp, dev)
    forward_s = loader_s = 0.0

    with torch.inference_mode():
        if output_mpp is None:
            probe = predict(torch.full((1, 3, patch_px, patch_px), 255, dtype=torch.uint8))
            output_mpp = model_mpp * patch_px / probe.shape[-1]
        if output_mpp < slide.mpp * (1 - MPP_TOLERANCE):
            raise ConfigError(
                f"output_mpp: {output_mpp:g} µm/px is finer than the slide ({slide.mpp:g} µm/px)"
            )
        s = output_mpp / slide.mpp
        width0, height0 = (int(v) for v in slide.dimensions)
        mosaic_hw = (math.ceil(height0 / s - 1e-9), math.ceil(width0 / s - 1e-9))
        window_px = _window_px(patch_px, model_mpp, output_mpp)
        roi = region_of_interest(slide, tissue)
        origins, total = plan_windows(roi, mosaic_hw, window_px, overlap, s)
        if len(origins) == 0:
            warnings.warn(
                f"{source}: no window touches tissue; mosaic is all background",
                NoTissueWarning,
                stacklevel=2,
            )
        params = dict(
            overlap=overlap,
            blend=blend,
            sigma_frac=sigma_frac,
            output_mpp=output_mpp,
            model_mpp=model_mpp,
            patch_px=patch_px,
            window_px=window_px,
            batch_size=batch_size,
            workers=workers,
            prefetch=prefetch,
            decode="gpu" if tiles is not None else "cpu",
            device=str(dev),
            band_px=band_px,
            amp=str(predict.autocast).replace("torch.", "") if predict.autocast else "off",
            tissue="given" if tissue is not None else "bounds",
        )
        log.info(
            "%s: mosaic %dx%d px at %.3g µm/px, %d of %d windows of %d px on %s (decode %s, "
            "%d reading workers)",
            sid,
            mosaic_hw[1],
            mosaic_hw[0],
            output_mpp,
            len(origins),
            total,
            window_px,
            dev,
            params["decode"],
            workers,
        )
        weights = torch.from_numpy(window_weights(window_px, blend, sigma_frac)).to(dev)
        acc = BandAccumulator(len(classes.all), mosaic_hw[0], mosaic_hw[1], band_px, dev)
        locations = np.round(origins[:, ::-1] * s).astype(np.int64)  # (x, y) level 0
        loader = window_loader(
            slide,
            locations,
            patch_px,
            model_mpp,
            batch_size=batch_size,
            workers=workers,
            prefetch=prefetch,
            tiles=tiles,
            pin_memory=dev.type == "cuda",
        )
        slide_path = getattr(slide, "path", "")
        writer = MosaicWriter(
            out_path,
            classes=classes,
            height_px=mosaic_hw[0],
            width_px=mosaic_hw[1],
            mpp=output_mpp,
            slide_mpp=slide.mpp,
            level0_width=width0,
            level0_height=height0,
            slide_id=sid,
            slide_path=str(Path(slide_path).resolve()) if slide_path else "",
            bounds=tuple(int(v) for v in slide.bounds),  # type: ignore[arg-type]
            model_sha256=model_sha256,
            parameters=params,
            workers=usable_cores(),  # pyramid chunks in parallel threads
        )
        sink = _BandSink(acc, writer, roi, s)
        try:
            with progress_bar(
                total=len(origins), unit="win", desc=sid, disable=not progress
            ) as bar:
                batches = iter(loader)
                done = 0
                while True:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    loader_s += time.perf_counter() - t0
                    if batch is None:
                        break
                    t0 = time.perf_counter()
                    images, idx = batch_images(batch, tiles, patch_px, dev)
                    out = predict(images)
                    if out.shape[-2:] != (window_px, window_px):
                        out = torch.nn.functional.interpolate(
                            out,
                            size=(window_px, window_px),
                            mode="bilinear",
                            align_corners=False,
                            antialias=out.shape[-1] > window_px,
                        )
                    if timing and dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    forward_s += time.perf_counter() - t0
                    done += len(idx)
                    bar.update(len(idx))
                    next_row = int(origins[done, 0]) if done < len(origins) else 1 << 62
                    sink.blend(out, weights, origins[idx.numpy()], next_row)
            final = sink.finish()
        except BaseException:
            sink.abort()
            raise

    wall = time.perf_counter() - started
    result = InferenceResult(
        mosaic_path=final,
        slide_id=sid,
        mosaic_height_px=mosaic_hw[0],
        mosaic_width_px=mosaic_hw[1],
        output_mpp=float(output_mpp),
        window_px=window_px,
        windows_total=int(total),
        windows=len(origins),
        bands=acc.num_bands,
        wall_s=wall,
        forward_s=forward_s,
        loader_wait_s=loader_s,
        blend_wait_s=sink.blend_wait_s,
        write_wait_s=sink.wait_s,
        windows_per_s=len(origins) / wall if wall > 0 else 0.0,
        peak_rss_mib=_peak_rss_mib(),
        cuda_peak_mib=torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        device=str(dev),
        decode=str(params["decode"]),
        parameters=params,
    )
    log.info(
        "%s: %d windows in %.1f s (%.1f win/s; forward %.1f s, waiting on reads %.1f s, "
        "on blending %.1f s, on writes %.1f s)",
        sid,
        result.windows,
        wall,
        result.windows_per_s,
        forward_s,
        loader_s,
        sink.blend_wait_s,
        sink.wait_s,
    )
    return result
