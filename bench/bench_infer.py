"""Benchmark whole-slide inference: overhead over the bare model, windows/s, I/O limit, peak RSS.

On a synthetic Aperio-style SVS (``wsi_lpd.synthetic.slides``, JPEG tiles), in one process and with
the same
windows, batch size, workers, decoding and device:

1. ``forward``: ``model.predict`` alone on random batches (the compute floor);
2. ``read``: the inference DataLoader alone, read + decode + collate (the I/O ceiling; with
   ``--decode gpu`` the JPEG tiles are decoded on the device as in inference);
3. ``predict_slide``: the whole pipeline (reads, forward, upsampling, blending, zarr writes,
   pyramid).

``overhead = infer wall / forward wall`` (targets: ≤ 1.10 paper model, ≤ 1.25 small model).
Configs: ``small`` (MiT-tiny, 64 px at 1 µm/px, for CPU) and ``paper`` (MiT-B1, 224 px at 1 µm/px).

    python bench/bench_infer.py [--device cpu|cuda] [--config small|paper] [--side-px 4096]
        [--batch-size 16] [--workers N] [--decode cpu|gpu|auto] [--threads N] [--repeat 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.device import resolve_device
from wsi_lpd.infer.inference import (
    _resolve_decode,
    batch_images,
    default_reading_workers,
    plan_windows,
    predict_slide,
    window_loader,
)
from wsi_lpd.infer.options import InferSection
from wsi_lpd.networks.build import build_model
from wsi_lpd.slide.reader import open_slide
from wsi_lpd.synthetic.slides import write_synthetic_slide

CONFIGS = {
    "small": {"variant": "mit_tiny", "patch_px": 64, "mpp": 1.0, "dim": 32, "k": 2},
    "paper": {"variant": "mit_b1", "patch_px": 224, "mpp": 1.0, "dim": 512, "k": 10},
}
NORM = {"mean": [0.706, 0.478, 0.668], "std": [0.198, 0.226, 0.174]}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_forward(
    model: torch.nn.Module,
    n_windows: int,
    batch: int,
    patch_px: int,
    dev: torch.device,
    amp: torch.dtype | None,
) -> float:
    """Seconds for ``model.predict`` on ``n_windows`` random windows in batches of ``batch``."""
    x = torch.randn(batch, 3, patch_px, patch_px, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        model.predict(x[:2])  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        for start in range(0, n_windows, batch):
            model.predict(x[: min(batch, n_windows - start)])
        _sync(dev)
    return time.perf_counter() - t0


def time_reads(
    slide_path: Path,
    mpp: float,
    locations: np.ndarray,
    patch_px: int,
    batch: int,
    workers: int,
    decode: str,
    dev: torch.device,
) -> float:
    """Seconds to read, decode and collate every window as inference does (no forward)."""
    slide = open_slide(slide_path)
    tiles = _resolve_decode(decode, slide, mpp, dev)
    loader = window_loader(
        slide,
        locations,
        patch_px,
        mpp,
        batch_size=batch,
        workers=workers,
        prefetch=4,
        tiles=tiles,
        pin_memory=dev.type == "cuda",
    )
    t0 = time.perf_counter()
    for batch_data in loader:
        images, _ = batch_images(batch_data, tiles, patch_px, dev)
        images.to(dev, non_blocking=True)
    _sync(dev)
    return time.perf_counter() - t0


def build(config: str, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """Random-init LPD model of ``config`` on ``dev`` and its inference contract."""
    cfg = CONFIGS[config]
    torch.manual_seed(0)
    model_config = {
        "encoder": {"type": "mit", "variant": cfg["variant"], "weights": None},
        "head": {"prototypes_per_class": cfg["k"], "prototype_dim": cfg["dim"]},
        "predict": {"tta": False},
    }
    model = build_model("lpd", model_config, BCSS_CLASSES).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    contract = {
        "classes": BCSS_CLASSES.to_dict(),
        "mpp": cfg["mpp"],
        "patch_px": cfg["patch_px"],
        "normalisation": NORM,
    }
    return model, contract


def measure(
    config: str,
    dev: torch.device,
    side_px: int,
    batch_size: int,
    workers: int,
    decode: str,
    overlap: float = 0.25,
    amp: str = "auto",
    repeat: int = 1,
    slide_path: Path | None = None,
) -> dict:
    """Forward-only, read-only and full-pipeline windows/s on one synthetic slide (written at
    ``side_px``² unless ``slide_path`` names one already written)."""
    cfg = CONFIGS[config]
    model, contract = build(config, dev)
    amp_dtype = None
    if dev.type == "cuda" and amp != "off":
        amp_dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if slide_path is None:
            slide_path = write_synthetic_slide(
                Path(tmp) / "bench.svs", width_px=side_px, height_px=side_px, mpp=0.5, seed=0
            ).slide_path
        synth_s = time.perf_counter() - t0
        slide = open_slide(slide_path)
        s = cfg["mpp"] / slide.mpp  # output at the model's resolution (LPD predicts full size)
        hw = (math.ceil(slide.dimensions[1] / s), math.ceil(slide.dimensions[0] / s))
        x, y, w, h = slide.bounds
        from shapely.geometry import box

        origins, _ = plan_windows(box(x, y, x + w, y + h), hw, cfg["patch_px"], overlap, s)
        locations = np.round(origins[:, ::-1] * s).astype(np.int64)
        n = len(origins)
        fwd_s = read_s = math.inf
        res = None
        for _ in range(max(repeat, 1)):  # interleaved, so load changes hit all three
            fwd_s = min(fwd_s, time_forward(model, n, batch_size, cfg["patch_px"], dev, amp_dtype))
            read_s = min(
                read_s,
                time_reads(
                    slide_path,
                    cfg["mpp"],
                    locations,
                    cfg["patch_px"],
                    batch_size,
                    workers,
                    decode,
                    dev,
                ),
            )
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            run = predict_slide(
                slide,
                model,
                contract,
                Path(tmp) / "bench.ome.zarr",
                InferSection(
                    overlap=overlap, batch_size=batch_size, workers=workers, decode=decode, amp=amp
                ),
                device=dev,
                progress=False,
            )
            res = run if res is None or run.wall_s < res.wall_s else res
    assert res is not None and res.windows == n, (res and res.windows, n)
    return {
        "device": str(dev),
        "config": config,
        "variant": cfg["variant"],
        "patch_px": cfg["patch_px"],
        "side_px": side_px,
        "synth_s": synth_s,
        "mosaic_hw": list(hw),
        "windows": n,
        "batch_size": batch_size,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "decode": res.decode,
        "forward_s": fwd_s,
        "forward_win_s": n / fwd_s,
        "read_s": read_s,
        "read_win_s": n / read_s,
        "infer_s": res.wall_s,
        "infer_win_s": res.windows_per_s,
        "infer_forward_s": res.forward_s,
        "wait_reads_s": res.loader_wait_s,
        "wait_blend_s": res.blend_wait_s,
        "wait_writes_s": res.write_wait_s,
        "overhead": res.wall_s / fwd_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mib": res.cuda_peak_mib,
    }


def print_table(r: dict) -> None:
    rows = [
        ("device / config", f"{r['device']} / {r['config']} ({r['variant']}, {r['patch_px']} px)"),
        ("torch threads / loader workers", f"{r['threads']} / {r['workers']}"),
        ("decode", r["decode"]),
        ("slide (level-0 px) / synth time", f"{r['side_px']}² / {r['synth_s']:.1f} s"),
        (
            "mosaic (px) / windows / batch",
            f"{r['mosaic_hw'][1]}×{r['mosaic_hw'][0]} / {r['windows']} / {r['batch_size']}",
        ),
        ("forward only: s, windows/s", f"{r['forward_s']:.2f} s, {r['forward_win_s']:.1f}"),
        ("read+decode only: s, windows/s", f"{r['read_s']:.2f} s, {r['read_win_s']:.1f}"),
        ("predict_slide: s, windows/s", f"{r['infer_s']:.2f} s, {r['infer_win_s']:.1f}"),
        (
            "  forward (main thread) / wait reads / blend / writes",
            f"{r['infer_forward_s']:.2f} / {r['wait_reads_s']:.2f} / {r['wait_blend_s']:.2f} / "
            f"{r['wait_writes_s']:.2f} s",
        ),
        ("overhead (infer / forward)", f"{r['overhead']:.3f}"),
        ("peak RSS (MiB)", f"{r['peak_rss_mib']:.0f}"),
    ]
    if r["cuda_peak_mib"] is not None:
        rows.append(("CUDA peak (MiB)", f"{r['cuda_peak_mib']:.0f}"))
    width = max(len(k) for k, _ in rows)
    print(f"\n{'metric':<{width}}  value\n{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--side-px", type=int, default=4096, help="level-0 slide side at 0.5 µm/px")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="reading workers (default: auto)")
    ap.add_argument("--decode", default="auto", choices=("auto", "cpu", "gpu"))
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--amp", default="auto", help="CUDA only: auto, bf16, fp16, off")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="repeat each measurement, keep the fastest (shared machines are noisy)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    workers = default_reading_workers() if args.workers is None else args.workers
    r = measure(
        args.config,
        dev,
        args.side_px,
        args.batch_size,
        workers,
        args.decode,
        args.overlap,
        args.amp,
        args.repeat,
    )
    print_table(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
