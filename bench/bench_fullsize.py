"""The whole workflow on full-size 40× slides: synth → tile → patches → train → infer → export →
evaluate → report, on 2 cores, with per-job wall time and peak RSS from Snakemake's benchmark files.

Writes (or reuses) one pyramidal JPEG Aperio slide per ``--tissue`` fraction with
``wsi-lpd synth`` (default 100 000 × 80 000 px at 0.25 µm/px, the same layout seed, so the slide
with less tissue holds a subset of the other's tissue; ``--texture flat`` by default: pale class
colours, several times faster to write on a busy 2-core machine; tiling, inference and export
do the same work per window on any texture), runs the Snakefile on them (the first
slide trains a small model for ``--max-iters`` iterations with ``configs/model/lpd_cpu_small.yaml``:
training is not what is measured), then reports per slide and stage: wall s, peak RSS MiB
(``max_rss``), CPU s, infer windows and windows/s, the GeoJSON's polygons, vertices and size and
the time QuPath's geometry library (JTS ``GeoJsonReader`` + ``IsValidOp``, tests/jts) takes to
read it, and the tile stage's wall time against OpenSlide's ``get_thumbnail(1024)`` on the first
slide (bench_tile.py's children). ``uptime`` is recorded before and after (the machine is shared).

    python bench/bench_fullsize.py --work /work/big/fullsize [--tissue 0.16 0.08]

Needs several GB of disk in --work (each slide ~1-2 GB). CI does not run it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tile import CHILD_OPENSLIDE, CHILD_TILE, run_child

log = logging.getLogger("bench_fullsize")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "fullsize.md"
JTS_JARS = ("jts-core.jar", "jts-io-common.jar", "json-simple.jar")
STAGES = ("tile", "patches", "train", "infer", "export", "evaluate", "report")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def slide_name(fraction: float) -> str:
    return f"fs{round(fraction * 100):02d}"


def ensure_slide(work: Path, fraction: float, args: argparse.Namespace) -> dict:
    """``wsi-lpd synth`` one slide (reused when its file exists: it is written atomically)."""
    name = slide_name(fraction)
    out = work / name
    path = out / f"{name}_00.tiff"
    info = {"id": f"{name}_00", "path": path, "fraction": fraction, "synth_s": None}
    if path.is_file():
        log.info("reusing %s", path)
    else:
        cmd = ["wsi-lpd", "synth", "--out", str(out), "--width-px", str(args.width_px),
               "--height-px", str(args.height_px), "--slide-mpp", str(args.slide_mpp),
               "--tissue-fraction", str(fraction), "--seed", str(args.seed),
               "--prefix", name, "--texture", args.texture]  # fmt: skip
        log.info("%s", " ".join(cmd))
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        info["synth_s"] = time.perf_counter() - started
    info["mask"] = out / f"{name}_00.mask.tiff"
    info["annotations"] = out / f"{name}_00.annotations.geojson"
    info["size_gib"] = path.stat().st_size / 2**30
    return info


def write_config(work: Path, slides: list[dict], max_iters: int, checkpoint: Path | None) -> Path:
    """The sample sheet (first slide trains, the others are test slides) and workflow YAML."""
    sheet = work / "samples.csv"
    with open(sheet, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "path", "mpp", "annotations", "truth", "split"])
        for i, s in enumerate(slides):
            split = "train" if i == 0 else "test"
            writer.writerow([s["id"], s["path"], "", s["annotations"], s["mask"], split])
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg = {
        "samples": str(sheet),
        "results": str(work / "results"),
        "demo_cohort": None,
        "classes": demo["classes"],
        "tile": demo["tile"],
        "patches": {},
        "train": {
            "model_config": str(REPO / "configs" / "model" / "lpd_cpu_small.yaml"),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "device": "cpu",
            "max_iters": max_iters,
        },
        "infer": {"device": "cpu", "batch_size": 8, "workers": 0},  # one process: ≤ 2 GB
        "export": {"min_area_um2": 1000},
        "evaluate": {"protocol": "lpd"},
        "report": {"title": "wsi-lpd full-size slides"},
        "threads": {k: 2 for k in ("tile", "patches", "train", "infer", "export", "evaluate")},
    }
    path = work / "fullsize.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _number(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def benchmark_rows(results: Path) -> dict[tuple[str, str], dict]:
    """(stage, key) → Snakemake benchmark row (s, max_rss MiB, cpu_time s)."""
    rows = {}
    for tsv in sorted((results / "benchmarks").glob("*/*.tsv")):
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rows[(tsv.parent.name, tsv.stem)] = {
            "s": float(row["s"]),
            "max_rss": _number(row.get("max_rss")),
            "max_pss": _number(row.get("max_pss")),
            "cpu_time": _number(row.get("cpu_time")),
        }
    return rows


def geojson_stats(path: Path, jts_dir: Path | None) -> dict:
    """Features, polygons, vertices, size and read times (Python json+shapely; JTS as QuPath)."""
    from shapely.geometry import shape

    started = time.perf_counter()
    data = json.loads(path.read_text())
    geoms = [shape(f["geometry"]) for f in data["features"]]
    py_s = time.perf_counter() - started
    polygons = sum(len(getattr(g, "geoms", [g])) for g in geoms)
    vertices = 0
    for g in geoms:
        for p in getattr(g, "geoms", [g]):
            vertices += len(p.exterior.coords) + sum(len(r.coords) for r in p.interiors)
    out = {
        "features": len(geoms),
        "polygons": polygons,
        "vertices": vertices,
        "mib": path.stat().st_size / 2**20,
        "python_read_s": py_s,
    }
    if jts_dir is not None:
        cp = ":".join([*(f"/usr/share/java/{j}" for j in JTS_JARS), str(jts_dir)])
        started = time.perf_counter()
        res = subprocess.run(
            ["java", "-cp", cp, "ValidateGeoJson", str(path)], capture_output=True, text=True
        )
        out["jts_s"] = time.perf_counter() - started
        out["jts"] = (res.stdout.strip().splitlines() or [res.stderr.strip()])[-1]
    return out


def compile_jts(work: Path) -> Path | None:
    """Compile tests/jts/ValidateGeoJson.java (None when Java or the JTS jars are missing)."""
    jars = [Path("/usr/share/java") / j for j in JTS_JARS]
    if not all(j.is_file() for j in jars):
        return None
    out = work / "jts"
    out.mkdir(exist_ok=True)
    res = subprocess.run(
        [
            "javac",
            "-cp",
            ":".join(map(str, jars)),
            "-d",
            str(out),
            str(REPO / "tests" / "jts" / "ValidateGeoJson.java"),
        ],
        capture_output=True,
        text=True,
    )
    return out if res.returncode == 0 else None


def model_note(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return f"model {args.checkpoint} (`lpd_cpu_small.yaml`; patches and train not run)"
    return f"model `lpd_cpu_small.yaml` trained {args.max_iters} iterations on the first slide"


def report(args: argparse.Namespace, slides: list[dict], info: dict) -> str:
    rows, results = info["rows"], info["results"]
    wall = (
        f"Workflow wall {info['wall_s']:.0f} s."
        if info.get("wall_s") is not None
        else "Workflow not rerun (--no-run): the rows are the last run's."
    )
    lines = [
        f"### {datetime.datetime.now().isoformat(timespec='seconds')} — "
        f"{args.width_px}×{args.height_px} px at {args.slide_mpp} µm/px, "
        f"tissue {', '.join(str(s['fraction']) for s in slides)}",
        "",
        f"{platform.node()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}; "
        f"`snakemake --cores 2`; {model_note(args)}; tiles {info['tile_cfg']['patch_px']} px at "
        f"{info['tile_cfg']['tile_mpp']} µm/px. {wall}",
        "",
        f"- uptime before: `{info['uptime_before']}`",
        f"- uptime after: `{info['uptime_after']}`",
        "",
        "| slide | tissue mm² | slide GiB | synth s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in slides:
        synth = f"{s['synth_s']:.0f}" if s["synth_s"] is not None else "reused"
        lines.append(f"| {s['id']} | {s['tissue_mm2']:.1f} | {s['size_gib']:.2f} | {synth} |")
    lines += [
        "",
        "Per job (Snakemake `benchmark:` files: wall `s`, peak `max_rss` and `max_pss` summed "
        "over the job's processes — RSS counts pages shared by a reading worker and its parent "
        "twice, PSS splits them —, `cpu_time`):",
        "",
        "| stage | job | wall s | peak RSS MiB | peak PSS MiB | CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for stage in STAGES:
        for (st, key), r in sorted(rows.items()):
            if st == stage:
                rss, pss, cpu = (
                    f"{r[k]:.0f}" if r[k] is not None else "–"
                    for k in ("max_rss", "max_pss", "cpu_time")
                )
                lines.append(f"| {stage} | {key} | {r['s']:.1f} | {rss} | {pss} | {cpu} |")
    peak = max((r["max_rss"] or 0) for r in rows.values())
    peak_pss = max((r["max_pss"] or 0) for r in rows.values())
    lines += [
        "",
        f"Largest peak of any job: RSS {peak:.0f} MiB, PSS {peak_pss:.0f} MiB (target ≤ 2048).",
        "",
    ]
    lines += [
        "| slide | infer windows | windows/s | GeoJSON features | polygons | vertices | MiB | "
        "read s (Python) | read+validate s (JTS, QuPath's parser) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in slides:
        g = s["geojson"]
        jts = f"{g['jts_s']:.1f} (`{g['jts']}`)" if "jts_s" in g else "–"
        lines.append(
            f"| {s['id']} | {s['windows']} | {s['windows_per_s']:.1f} | {g['features']} | "
            f"{g['polygons']} | {g['vertices']} | {g['mib']:.2f} | {g['python_read_s']:.2f} | "
            f"{jts} |"
        )
    if len(slides) >= 2:
        a, b = slides[0], slides[1]
        area = b["tissue_mm2"] / a["tissue_mm2"]
        lines += ["", f"Linearity ({b['id']} / {a['id']}): tissue area ratio {area:.2f}; "]
        parts = []
        for stage in ("infer", "export"):
            ra, rb = rows.get((stage, a["id"])), rows.get((stage, b["id"]))
            if ra and rb:
                parts.append(
                    f"{stage} wall {rb['s'] / ra['s']:.2f}, CPU "
                    f"{(rb['cpu_time'] or 0) / max(ra['cpu_time'] or 1e-9, 1e-9):.2f}"
                )
        parts.append(f"infer windows {b['windows'] / max(a['windows'], 1):.2f}")
        lines[-1] += "; ".join(parts) + "."
    t, o = info["tile"], info["thumb"]
    lines += [
        "",
        f"Tile stage vs OpenSlide `get_thumbnail(1024)` on {slides[0]['id']} (bench_tile.py's "
        f"children, each its own process): tile {t['wall_s']:.2f} s ({t['peak_rss_mib']:.0f} MiB, "
        f"{t['n_tiles']} tiles at 1 µm/px 224 px), get_thumbnail {o['wall_s']:.2f} s "
        f"({o['peak_rss_mib']:.0f} MiB): ratio {t['wall_s'] / o['wall_s']:.2f}. "
        f"uptime: `{info['uptime_tile']}`.",
        "",
        f"Results in `{results}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="slides and results (big)")
    ap.add_argument("--tissue", type=float, nargs="+", default=[0.16, 0.08])
    ap.add_argument(
        "--texture", default="flat", help="synth texture: flat (fast to write) or procedural"
    )
    ap.add_argument("--width-px", type=int, default=100_000)
    ap.add_argument("--height-px", type=int, default=80_000)
    ap.add_argument("--slide-mpp", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=10)
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a trained model.pt (lpd_cpu_small): skips patches and train",
    )
    ap.add_argument(
        "--no-run", action="store_true", help="report the last run's results without rerunning"
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    slides = [ensure_slide(work, f, args) for f in args.tissue]
    cfg = write_config(work, slides, args.max_iters, args.checkpoint)
    info: dict = {"results": work / "results", "uptime_before": uptime()}
    info["tile_cfg"] = yaml.safe_load(cfg.read_text())["tile"]
    info["wall_s"] = None
    if not args.no_run:
        started = time.perf_counter()
        subprocess.run(
            [
                "snakemake",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--configfile",
                str(cfg),
                "--cores",
                "2",
                "--directory",
                str(work),
                "--rerun-incomplete",
            ],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        info["wall_s"] = time.perf_counter() - started
    info["uptime_after"] = uptime()
    info["rows"] = benchmark_rows(info["results"])
    jts_dir = compile_jts(work)
    for s in slides:
        tiles_run = json.loads((info["results"] / "tiles" / s["id"] / "run.json").read_text())
        s["tissue_mm2"] = tiles_run["tissue_area_um2"] / 1e6
        infer_run = json.loads((info["results"] / "mosaics" / f"{s['id']}.run.json").read_text())
        s["windows"] = infer_run["result"]["windows"]
        s["windows_per_s"] = infer_run["throughput_windows_per_s"]
        s["geojson"] = geojson_stats(info["results"] / "geojson" / f"{s['id']}.geojson", jts_dir)
    info["uptime_tile"] = uptime()
    first = str(slides[0]["path"])
    info["tile"] = run_child(CHILD_TILE, first, str(work / "tile_vs_thumbnail"), "1024", "8.0",
                             "1.0", "224")  # fmt: skip
    info["thumb"] = run_child(CHILD_OPENSLIDE, first, "1024")
    table = report(args, slides, info)
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as fh:
        if fh.tell() == 0:
            fh.write("# Full-size slides through the workflow (bench/bench_fullsize.py)\n\n")
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
