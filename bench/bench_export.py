"""Benchmark ``wsi-lpd export`` on the mosaic of a large synthetic slide.

A 100k×100k level-0 slide at 0.5 µm/px, inferred at 1 µm/px, gives a 50k×50k mosaic. Its
probabilities are a smooth random field (Gaussian-weighted random logits on a coarse grid, one
per class, evaluated separably block by block: ``W_y @ G @ W_x^T``) with background outside an
elliptical "tissue" section; labels are their argmax. The mosaic is written band by band with
``MosaicWriter`` (level 0 only) — no inference. The export then runs in a child process once per
``--workers`` value (default 1 and 2: blocks in dask worker processes), whose wall time, CPU time
(export process and workers) and peak RSS are measured (the export process's own ``VmHWM`` and
the largest worker's); the speed-up is relative to the first value. File size and vertex count
come from its outputs; the GeoJSON of every run is checked to hold the same polygons as the
first. Before and after the runs a CPU probe (a pure-Python loop alone, then in as many processes
as the largest ``--workers``) gives the speed-up the machine can offer at that moment
(``cpu_ceiling``): on a shared machine the export's speed-up is bounded by it.

    python bench/bench_export.py [--level0-px 100000] [--workers 1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.formats.mosaic import MosaicWriter

log = logging.getLogger("bench_export")


def _weights(coords_px: np.ndarray, spacing_px: float, n_nodes: int) -> np.ndarray:
    """Gaussian interpolation weights (len(coords) × n_nodes) from pixel centres to grid nodes."""
    nodes = (np.arange(n_nodes) - 1) * spacing_px
    d = (coords_px[:, None] + 0.5 - nodes[None, :]) / spacing_px
    return np.exp(-(d**2)).astype(np.float32)


def write_synthetic_mosaic(
    path: Path,
    height_px: int,
    width_px: int,
    *,
    mpp: float = 1.0,
    slide_mpp: float = 0.5,
    feature_um: float = 800.0,
    seed: int = 0,
    column_px: int = 2048,
    progress: bool = True,
) -> Path:
    """Write a level-0-only mosaic of smooth random class regions; memory: one band column."""
    classes = BCSS_CLASSES
    c = len(classes.all)
    spacing = feature_um / mpp
    rng = np.random.default_rng(seed)
    gy, gx = int(height_px / spacing) + 3, int(width_px / spacing) + 3
    grid = rng.standard_normal((c, gy, gx)).astype(np.float32) * 4.0
    scale = mpp / slide_mpp
    writer = MosaicWriter(
        path,
        classes,
        height_px=height_px,
        width_px=width_px,
        mpp=mpp,
        slide_mpp=slide_mpp,
        level0_width=round(width_px * scale),
        level0_height=round(height_px * scale),
        slide_id=path.name.removesuffix(".ome.zarr"),
        min_level_px=max(height_px, width_px),
    )
    with writer:
        band_px = writer.chunk_px * 2
        for y0 in tqdm(range(0, height_px, band_px), desc="synth mosaic", disable=not progress):
            ys = np.arange(y0, min(y0 + band_px, height_px))
            wy = _weights(ys, spacing, gy)
            band = np.empty((c, len(ys), width_px), dtype=np.uint8)
            for x0 in range(0, width_px, column_px):
                xs = np.arange(x0, min(x0 + column_px, width_px))
                wx = _weights(xs, spacing, gx)
                logits = np.einsum("yi,kij,xj->kyx", wy, grid, wx, optimize=True)
                ey = ((ys + 0.5) / height_px - 0.5) / 0.45
                ex = ((xs + 0.5) / width_px - 0.5) / 0.45
                outside = ey[:, None] ** 2 + ex[None, :] ** 2 - 1.0
                logits[-1] += 400.0 * outside  # background outside the tissue ellipse
                logits -= logits.max(axis=0, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=0, keepdims=True)
                band[:, :, x0 : x0 + len(xs)] = np.rint(p * 255).astype(np.uint8)
            writer.write_band(y0, band)
    return path


CHILD = """
import sys, typer
from pathlib import Path
import wsi_lpd.cli.export as m
t = typer.Typer(); t.command()(m.command)
try:
    t(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
import resource
status = Path("/proc/self/status").read_text().splitlines()
print("VmHWM_kB", next(line.split()[1] for line in status if line.startswith("VmHWM")))
print("CHILD_kB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
cpu = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("CPU_s", sum(u.ru_utime + u.ru_stime for u in cpu))
"""


def run_export(mosaic: Path, out: Path, extra: list[str]) -> tuple[float, float, float, float]:
    """Run the export stage in a child process; (wall s, its peak RSS MiB, largest worker MiB,
    CPU s of the export process and its workers together).

    The peak is the child's own ``VmHWM`` (``ru_maxrss`` of a child also counts the RSS the
    parent had when it forked); its dask workers are spawned, so their ``ru_maxrss`` is their own.
    """
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(mosaic), "--out", str(out), *extra],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    peak_kb = int(proc.stdout.split("VmHWM_kB")[-1].split()[0])
    worker_kb = int(proc.stdout.split("CHILD_kB")[-1].split()[0])
    cpu_s = float(proc.stdout.split("CPU_s")[-1].split()[0])
    return wall, peak_kb / 1024, worker_kb / 1024, cpu_s


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_ceiling(processes: int, loops: int = 10_000_000) -> float:
    """Speed-up free cores offer now: ``processes`` × (one loop alone) / (``processes`` loops at
    once in separate processes); ``processes`` on idle cores, less on busy ones."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_spin, [1000] * processes))  # start the processes first
        t0 = time.perf_counter()
        pool.submit(_spin, loops).result()
        alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(_spin, [loops] * processes))
        together = time.perf_counter() - t0
    return round(processes * alone / together, 2)


def _polygons(path: Path) -> list[tuple[str, int]]:
    from wsi_lpd.formats.geojson import read_annotations

    return sorted((a.class_name or "", round(a.geometry.area)) for a in read_annotations(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level0-px", type=int, default=100_000, help="slide side, level-0 px")
    ap.add_argument("--slide-mpp", type=float, default=0.5)
    ap.add_argument("--mpp", type=float, default=1.0, help="mosaic µm/px")
    ap.add_argument("--feature-um", type=float, default=800.0, help="region scale (µm)")
    ap.add_argument("--keep", type=Path, default=None, help="keep mosaic and outputs here")
    ap.add_argument("--export-args", default="", help="extra export flags, space separated")
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values to compare")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_export-"))
    work.mkdir(parents=True, exist_ok=True)
    side = round(args.level0_px * args.slide_mpp / args.mpp)
    mosaic = work / "bench.ome.zarr"
    try:
        if not mosaic.exists():
            t0 = time.perf_counter()
            write_synthetic_mosaic(
                mosaic,
                side,
                side,
                mpp=args.mpp,
                slide_mpp=args.slide_mpp,
                feature_um=args.feature_um,
            )
            log.info("mosaic %d×%d px written in %.1f s", side, side, time.perf_counter() - t0)
        counts = [int(v) for v in args.workers.split(",")]
        ceiling_before = cpu_ceiling(max(counts))
        runs = []
        reference = None
        for n in counts:
            out = work / f"export-{n}"
            wall, peak, worker, cpu_s = run_export(
                mosaic, out, ["--workers", str(n), *args.export_args.split()]
            )
            meta = json.loads((out / "bench.export.json").read_text())
            geojson = next(out.glob("bench.geojson*"))
            polygons = _polygons(geojson)
            reference = reference or polygons
            runs.append(
                {
                    "workers": n,
                    "wall_s": round(wall, 1),
                    "speedup": round(runs[0]["wall_s"] / wall, 2) if runs else 1.0,
                    "cpu_s": round(cpu_s, 1),
                    "peak_rss_mib": round(peak, 1),
                    "largest_worker_rss_mib": round(worker, 1) if n > 1 else None,
                    "same_polygons_as_first": polygons == reference,
                    "geojson_mib": round(geojson.stat().st_size / 2**20, 2),
                    "features": meta["features"],
                    "vertices": meta["vertices"],
                }
            )
            log.info("workers %d: %s", n, runs[-1])
        result = {
            "mosaic_px": [side, side],
            "level0_px": [args.level0_px, args.level0_px],
            "cpus": len(os.sched_getaffinity(0)),
            "cpu_ceiling_before_after": [ceiling_before, cpu_ceiling(max(counts))],
            "load_average": os.getloadavg(),
            "runs": runs,
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
