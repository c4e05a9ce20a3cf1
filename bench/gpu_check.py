"""One GPU check: paper-model training step with AMP, inference with CPU and GPU JPEG decoding.

Run through ``bench/gpu_check.sh`` (which sets up Python); ``--dry-run`` runs the same path on the
CPU with tiny sizes. Prints a table and writes it as markdown (``--out``, default
``bench/results/gpu.md``; ``--dry-run`` writes ``bench/results/gpu_dry_run.md``).

Training: the engine's own step (:func:`wsi_lpd.train.engine.train_step`, what ``run_loop``
calls) on the paper model (``configs/model/lpd_mit_b1.yaml``: MiT-B1, strides 4-2-2-1, K = 10,
dim 512, random init) built through the method registry, its LPD loss during the warm-up (L_cls;
L_div and L_sim start after ``warmup_iters``), AdamW, AMP (bf16 where supported, else fp16 with a
GradScaler), batch 10 of 224 px; on CUDA once with ``train.channels_last`` off and once on.
Inference: ``bench_infer.measure`` on a synthetic Aperio-style SVS for ``decode=cpu``
(slide reader in worker processes) and ``decode=gpu`` (JPEG tiles decoded with nvJPEG).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_infer

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.data.contracts import Batch
from wsi_lpd.device import resolve_device
from wsi_lpd.infer.inference import default_reading_workers
from wsi_lpd.synthetic.slides import write_synthetic_slide
from wsi_lpd.train.engine import Optimisation
from wsi_lpd.train.engine import train_step as engine_train_step
from wsi_lpd.train.registry import make_method, training_config_from_mapping

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/model/lpd_mit_b1.yaml"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train_step(
    dev: torch.device, batch: int, patch_px: int, steps: int, warmup: int, channels_last: bool
) -> dict:
    """Seconds per step and images/s of the ENGINE's training step
    (:func:`wsi_lpd.train.engine.train_step`: the method's losses under AMP, backward, AdamW) on
    the paper model built by the method registry, ``train.channels_last`` as given."""
    raw = yaml.safe_load(PAPER.read_text())
    raw["model"]["encoder"] = {**raw["model"]["encoder"], "weights": None}
    raw["loss"] = {**raw.get("loss", {}), "lambda_sim": 0.0}  # L_sim is off in the warm-up anyway
    raw.pop("region_encoder", None)
    raw["train"] = {**raw["train"], "amp": True, "channels_last": channels_last}
    config = training_config_from_mapping(raw, PAPER)
    torch.manual_seed(0)
    method = make_method(config, BCSS_CLASSES).to(dev)
    method.model.train()
    opt = Optimisation.create(method.model, config.train, dev)
    gen = torch.Generator().manual_seed(0)
    c = BCSS_CLASSES.num_foreground
    items: Batch = {
        "image": torch.randn(batch, 3, patch_px, patch_px, generator=gen),
        "labels": (torch.rand(batch, c, generator=gen) > 0.5).float(),
        "known": torch.ones(batch, c),
        "slide": torch.zeros(batch, dtype=torch.int64),
    }
    batches = {"train": opt.to_device(items)}
    for i in range(warmup):
        engine_train_step(method, batches, i, opt, i + 1)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        engine_train_step(method, batches, warmup + i, opt, warmup + i + 1)
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    return {
        "step_s": dt,
        "images_per_s": batch / dt,
        "batch": batch,
        "patch_px": patch_px,
        "amp": str(opt.amp_dtype).replace("torch.", "") if opt.use_amp else "off (CPU)",
        "channels_last": opt.channels_last,
        "steps": steps,
    }


def report(decode: str, r: dict) -> None:
    print(
        f"infer decode={decode} (used: {r['decode']}): forward {r['forward_win_s']:.1f}, "
        f"read {r['read_win_s']:.1f}, pipeline {r['infer_win_s']:.1f} windows/s, "
        f"overhead {r['overhead']:.3f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (tests the path)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dry = args.dry_run
    dev = resolve_device("cpu" if dry else "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    out = args.out or ROOT / "bench/results" / ("gpu_dry_run.md" if dry else "gpu.md")
    t0 = time.perf_counter()
    trains = [
        train_step(
            dev,
            batch=2 if dry else 10,
            patch_px=64 if dry else 224,
            steps=1 if dry else 20,
            warmup=1 if dry else 5,
            channels_last=channels_last,
        )
        for channels_last in ((False,) if dev.type != "cuda" else (False, True))
    ]
    for train in trains:
        print(
            f"train (channels_last {train['channels_last']}): {train['step_s'] * 1000:.0f} "
            f"ms/step, {train['images_per_s']:.1f} images/s",
            flush=True,
        )
    config = "small" if dry else "paper"
    side = 512 if dry else 12288  # ≈ 1350 paper-model windows; the synthetic slide takes ~1.5 min
    batch = 4 if dry else 64
    workers = default_reading_workers()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_synthetic_slide(
            Path(tmp) / "check.svs", width_px=side, height_px=side, mpp=0.5, seed=0
        ).slide_path
        print(f"synthetic slide {side}² written in {time.perf_counter() - t0:.0f} s", flush=True)
        for decode in ("cpu", "gpu"):
            runs[decode] = bench_infer.measure(
                config, dev, side, batch, workers, decode, slide_path=slide
            )
            report(decode, runs[decode])
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    total_s = time.perf_counter() - t0
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# GPU check{' (dry run on the CPU: tiny sizes, not GPU figures)' if dry else ''}",
        "",
        f"`bench/gpu_check.sh{' --dry-run' if dry else ''}` on {name}, torch {torch.__version__}, "
        f"{stamp}; total {total_s:.0f} s.",
        "",
        "| measurement | value |",
        "|---|---|",
    ]
    for train in trains:
        lines.append(
            f"| engine training step (`train_step`), paper model (MiT-B1, K 10 × 512, random "
            f"init), batch {train['batch']} × {train['patch_px']} px, AMP {train['amp']}, "
            f"channels_last {'on' if train['channels_last'] else 'off'} | "
            f"{train['step_s'] * 1000:.0f} ms/step, {train['images_per_s']:.1f} images/s |"
        )
    for decode, r in runs.items():
        lines += [
            f"| inference {r['variant']} {r['patch_px']} px, decode {decode} (used {r['decode']}),"
            f" {r['windows']} windows, batch {r['batch_size']}, {r['workers']} workers: "
            f"forward only | {r['forward_win_s']:.1f} windows/s |",
            f"| … read only (read + decode + collate) | {r['read_win_s']:.1f} windows/s |",
            f"| … full pipeline | {r['infer_win_s']:.1f} windows/s |",
            f"| … overhead (pipeline / forward) | {r['overhead']:.3f} |",
        ]
    if peak is not None:
        lines.append(f"| peak GPU memory (allocated) | {peak:.0f} MiB |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps({"train": trains, "infer": runs}, indent=2))


if __name__ == "__main__":
    main()
