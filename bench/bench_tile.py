"""Benchmark the tile logic on a large synthetic slide against OpenSlide's own thumbnail.

Writes (or reuses) a ``--size-px``² synthetic pyramidal JPEG slide at 0.5 µm/px with
``wsi_lpd.synthetic.slides.write_synthetic_slide(..., texture=False)``: flat class colours with the
same
layout, several times faster to write than the textured slide and just as good here, since tissue
detection and tiling only look at a coarse level. Then runs, each in its own child process so
that its peak RSS (the child's ``VmHWM``) is its own:

  (a) the tile stage in-process (``wsi_lpd.cli.tile.command``: open, one read of the coarsest level
      serving 8 µm/px, tissue mask and polygons on it, grid at 1 µm/px 224 px, tiles.npz,
      tissue.geojson, ~1024 px qc.png shrunk from the same thumbnail, run.json), steps timed;
  (b) ``openslide.OpenSlide(path).get_thumbnail((1024, 1024))``, the floor for any reader.

Prints a table (wall s including interpreter start and imports, peak RSS MiB, tiles, ratio a/b)
and appends it to ``bench/results/tile.md``.

    python bench/bench_tile.py --work DIR [--size-px 60000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_tile")

RESULTS = Path(__file__).resolve().parent / "results" / "tile.md"

_PEAK = """
def _peak_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

CHILD_TILE = (
    _PEAK
    + """
import functools, json, logging, sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy as np
import wsi_lpd.cli.tile as stage
import wsi_lpd.slide.overlay, wsi_lpd.slide.reader, wsi_lpd.slide.tiling, wsi_lpd.slide.tissue
import wsi_lpd.slide.stage
from wsi_lpd.slide.tiling import TileGrid
slide_path, out, thumb_px, tissue_mpp, mpp, patch_px = sys.argv[1:7]
steps = {"import": time.perf_counter() - t0}

def timed(module, name, label):
    func = getattr(module, name)
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            steps[label] = steps.get(label, 0.0) + time.perf_counter() - t
    setattr(module, name, wrapper)
    if getattr(wsi_lpd.slide.stage, name, None) is func:  # the stage imported it by name
        setattr(wsi_lpd.slide.stage, name, wrapper)

timed(wsi_lpd.slide.reader, "open_slide", "open")
timed(wsi_lpd.slide.reader.Slide, "thumbnail", "read_thumbnail")
timed(wsi_lpd.slide.tissue, "tissue_mask", "tissue_mask")
timed(wsi_lpd.slide.tissue, "polygonize", "polygonize")
timed(wsi_lpd.slide.tiling, "make_tile_grid", "make_tile_grid")
timed(wsi_lpd.slide.tissue, "write_tissue_geojson_into", "tissue_geojson")
timed(wsi_lpd.slide.overlay, "write_tile_qc_into", "qc_png")
config = Path(out).with_name(Path(out).name + ".config.yaml")
config.write_text(json.dumps({"tile": {"qc_long_side_px": int(thumb_px)}}))  # YAML ⊃ JSON
t = time.perf_counter()
stage.command(slide=Path(slide_path), out=Path(out), tile_mpp=float(mpp),
              patch_px=int(patch_px), tissue_mpp=float(tissue_mpp), config=config)
steps["stage_total"] = time.perf_counter() - t
logging.disable(logging.CRITICAL)
grid = TileGrid.load(Path(out) / "tiles.npz")
run = json.loads((Path(out) / "run.json").read_text())
print("RESULT", json.dumps({"steps": steps, "n_tiles": len(grid),
                            "thumb_px": int(thumb_px), "backend": run["inputs"]["backend"],
                            "tissue_fraction": run["tissue_area_um2"] / run["inputs"]["slide_mpp"]
                            ** 2 / (grid.slide_width * grid.slide_height),
                            "peak_rss_mib": _peak_mib()}))
"""
)

CHILD_OPENSLIDE = (
    _PEAK
    + """
import json, sys, time
t0 = time.perf_counter()
import openslide
steps = {"import": time.perf_counter() - t0}
t = time.perf_counter()
osr = openslide.OpenSlide(sys.argv[1])
thumb = osr.get_thumbnail((int(sys.argv[2]), int(sys.argv[2])))
steps["get_thumbnail"] = time.perf_counter() - t
print("RESULT", json.dumps({"steps": steps, "thumb_shape": [thumb.height, thumb.width],
                            "peak_rss_mib": _peak_mib()}))
"""
)


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; its RESULT JSON plus the parent-measured wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, stdout=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - started
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["wall_s"] = wall
    return result


def ensure_slide(work: Path, size_px: int, mpp: float) -> tuple[Path, float | None]:
    """The synthetic slide for ``size_px`` in ``work`` (written when absent); (path, write s)."""
    from wsi_lpd.synthetic.slides import write_synthetic_slide

    path = work / f"bench_tile_{size_px}.tiff"
    if path.is_file():  # written atomically: an existing file is complete
        log.info("reusing %s", path)
        return path, None
    log.info("writing %s (%d×%d px at %g µm/px, texture=False) …", path, size_px, size_px, mpp)
    started = time.perf_counter()
    write_synthetic_slide(
        path,
        width_px=size_px,
        height_px=size_px,
        mpp=mpp,
        seed=0,
        texture=False,
        progress=sys.stderr.isatty(),
    )
    elapsed = time.perf_counter() - started
    log.info("written in %.0f s (%.0f MiB)", elapsed, path.stat().st_size / 2**20)
    return path, elapsed


def format_table(
    size_px: int, tile: dict, osl: dict, write_s: float | None, slide_mib: float
) -> str:
    ratio = tile["wall_s"] / osl["wall_s"]
    steps = ", ".join(f"{k} {v:.2f}" for k, v in tile["steps"].items())
    osteps = ", ".join(f"{k} {v:.2f}" for k, v in osl["steps"].items())
    written = f"written in {write_s:.0f} s" if write_s is not None else "reused"
    lines = [
        f"### {datetime.datetime.now().isoformat(timespec='seconds')} — {size_px}×{size_px} px "
        f"synthetic slide at 0.5 µm/px",
        "",
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; slide "
        f"{slide_mib:.0f} MiB JPEG, texture=False ({written}); tiles 224 px at 1 µm/px, "
        f"tissue at 8 µm/px, QC image ≤ {tile['thumb_px']} px; "
        f"backend {tile['backend']}; tissue {100 * tile['tissue_fraction']:.1f} % of the slide.",
        "",
        "| run | wall s | peak RSS MiB | tiles | ratio a/b |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| (a) tile stage | {tile['wall_s']:.2f} | {tile['peak_rss_mib']:.0f} | "
        f"{tile['n_tiles']} | {ratio:.2f} |",
        f"| (b) OpenSlide get_thumbnail(1024) | {osl['wall_s']:.2f} | "
        f"{osl['peak_rss_mib']:.0f} | – | 1.00 |",
        "",
        f"Wall s includes interpreter start and imports. (a) steps, s: {steps}. "
        f"(b) steps, s: {osteps}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="slide cache and outputs")
    ap.add_argument("--size-px", type=int, default=60_000, help="slide side, level-0 px")
    ap.add_argument("--slide-mpp", type=float, default=0.5)
    ap.add_argument("--thumb-px", type=int, default=1024)
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    slide, write_s = ensure_slide(args.work, args.size_px, args.slide_mpp)
    out = args.work / f"tile_{args.size_px}"
    tile = run_child(CHILD_TILE, str(slide), str(out), str(args.thumb_px), "8.0", "1.0", "224")
    osl = run_child(CHILD_OPENSLIDE, str(slide), str(args.thumb_px))
    table = format_table(args.size_px, tile, osl, write_s, slide.stat().st_size / 2**20)
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as fh:
        if fh.tell() == 0:
            fh.write("# bench_tile results\n\n")
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
