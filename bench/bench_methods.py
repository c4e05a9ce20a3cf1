"""LPD vs CAM vs PBIP-style vs LPD without L_div (vs HisynSeg) on synthetic slides, same CPU budget.

Each method trains on the same patch store (patch-level labels from the slides' coarse region
annotations only), with the same backbone, batch size and number of iterations; each model then
infers the held-out slides through the real whole-slide path (overlap blending into a mosaic) and is
scored against the pixel ground truth (protocol ``lpd``). Prints a table and writes it as Markdown.

    python bench/bench_methods.py --work /tmp/bench-methods --iters 300
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from wsi_lpd.classes import BCSS_CLASSES
from wsi_lpd.datasets import PatchDataset
from wsi_lpd.labelmask import read_label_mask
from wsi_lpd.metrics import mosaic_confusion_vs_mask, segmentation_scores
from wsi_lpd.model.checkpoint import load_model
from wsi_lpd.mosaic import open_mosaic
from wsi_lpd.patch_store import build_patch_store_from_annotations
from wsi_lpd.slide import open_slide
from wsi_lpd.synth import write_synthetic_slide
from wsi_lpd.tiling import make_tile_grid
from wsi_lpd.tissue import detect_tissue
from wsi_lpd.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "model" / "lpd_cpu_small.yaml"

VARIANTS: dict[str, dict[str, Any]] = {
    "LPD": {"method": "lpd"},
    "LPD w/o L_div": {"method": "lpd", "loss": {"lambda_div": 0.0}},
    "CAM": {"method": "cam", "head": {"prototypes_per_class": 1}},
    "PBIP-style": {"method": "pbip"},
    "HisynSeg": {"method": "hisynseg"},
}


def make_cohort(work: Path, n_train: int, n_test: int, size_px: int) -> list[dict[str, Any]]:
    """Synthetic slides with annotations and ground truth (reused when present)."""
    slides = []
    for i in range(n_train + n_test):
        path = work / "slides" / f"synth_{i:02d}.tiff"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_slide(path, width_px=size_px, height_px=size_px, mpp=0.5, seed=100 + i)
        slides.append(
            {
                "id": path.stem,
                "path": path,
                "split": "train" if i < n_train else "test",
                "annotations": path.with_name(f"{path.stem}.annotations.geojson"),
                "truth": path.with_name(f"{path.stem}.mask.tiff"),
            }
        )
    return slides


def make_store(work: Path, slides: list[dict[str, Any]], mpp: float, patch_px: int) -> Path:
    """Tile the training slides and cut labelled patches from their region annotations."""
    store = work / f"patches_{mpp}_{patch_px}.zarr"
    if store.exists():
        return store
    tile_dirs = []
    for s in slides:
        if s["split"] != "train":
            continue
        with open_slide(s["path"]) as slide:
            tissue = detect_tissue(slide)
            grid = make_tile_grid(
                *slide.dimensions,
                slide.mpp,
                tissue,
                mpp,
                patch_px,
                slide_id=s["id"],
                slide_path=str(s["path"]),
            )
        tile_dir = work / "tiles" / s["id"]
        tile_dir.mkdir(parents=True, exist_ok=True)
        grid.save(tile_dir / "tiles.npz")
        tile_dirs.append(tile_dir)
    train_slides = [s for s in slides if s["split"] == "train"]
    build_patch_store_from_annotations(
        tile_dirs,
        [s["annotations"] for s in train_slides],
        store,
        BCSS_CLASSES,
        truth_masks=[s["truth"] for s in train_slides],
        progress=False,
    )
    return store


def variant_config(name: str, iters: int, batch: int) -> Any:
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    spec = VARIANTS[name]
    if spec["method"] == "hisynseg":
        raw = yaml.safe_load((ROOT / "configs" / "model" / "hisynseg_cpu_small.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["model"]["method"] = spec["method"]
    raw["model"].setdefault("head", {}).update(spec.get("head", {}))
    raw.setdefault("loss", {}).update(spec.get("loss", {}))
    raw["train"].update(max_iters=iters, batch_size=batch, workers=0, val_fraction=0.0)
    if spec["method"] == "hisynseg":
        from wsi_lpd.hisynseg.training import HisynSegConfig

        return HisynSegConfig.from_mapping(raw)
    return TrainConfig.from_mapping(raw)


def _trainer(method: str):
    if method == "hisynseg":
        from wsi_lpd.hisynseg.training import train_hisynseg

        return train_hisynseg
    return train


def evaluate(model_path: Path, slides: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    from wsi_lpd.inference import infer_slide

    model, contract = load_model(model_path)
    n = len(BCSS_CLASSES.all)
    cm = np.zeros((n, n), dtype=np.int64)
    seconds = 0.0
    for s in slides:
        if s["split"] != "test":
            continue
        out = work / "mosaics" / model_path.parent.name / f"{s['id']}.ome.zarr"
        with open_slide(s["path"]) as slide:
            tissue = detect_tissue(slide)
            t0 = time.time()
            infer_slide(
                slide,
                model,
                contract,
                out,
                tissue=tissue,
                batch_size=16,
                progress=False,
                slide_id=s["id"],
            )
            seconds += time.time() - t0
            slide_mpp = slide.mpp
        mosaic = open_mosaic(out)
        truth = read_label_mask(s["truth"])
        cm += mosaic_confusion_vs_mask(
            mosaic.labels,
            mosaic.level0_per_px,
            truth.mask,
            truth.mpp / slide_mpp,
            n,
            BCSS_CLASSES.background_index,
        )
    scores = segmentation_scores(cm, "lpd", BCSS_CLASSES.names)
    scores["infer_s"] = seconds
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench-methods"))
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mpp", type=float, default=2.0)
    parser.add_argument("--patch-px", type=int, default=112)
    parser.add_argument("--slide-px", type=int, default=4096)
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "methods.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    slides = make_cohort(args.work, args.n_train, args.n_test, args.slide_px)
    store = make_store(args.work, slides, args.mpp, args.patch_px)
    data = PatchDataset(store)
    print(
        f"patch store: {len(data)} patches, labels per class {data.labels.sum(0).tolist()}, "
        f"multi-label {(data.labels.sum(1) > 1).mean():.0%}"
    )

    rows = []
    for name in args.methods:
        config = variant_config(name, args.iters, args.batch)
        norm = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
        from wsi_lpd.augment import Augment

        train_set = PatchDataset(store, norm, Augment(seed=0))
        out_dir = args.work / "models" / name.replace(" ", "_").replace("/", "")
        t0 = time.time()
        result = _trainer(config.method)(
            config,
            train_set,
            None,
            BCSS_CLASSES,
            mpp=args.mpp,
            patch_px=args.patch_px,
            normalisation=norm,
            out_dir=out_dir,
            device="cpu",
        )
        train_s = time.time() - t0
        scores = evaluate(result.checkpoint, slides, args.work)
        per_class = {k: v["iou"] for k, v in scores["per_class"].items()}
        rows.append(
            {
                "method": name,
                "mIoU": scores["miou"],
                "mDice": scores["mdice"],
                "FwIoU": scores["fwiou"],
                **per_class,
                "train_s": train_s,
                "step_s": train_s / args.iters,
                "infer_s": scores["infer_s"],
            }
        )
        print(json.dumps(rows[-1], default=lambda v: round(v, 4) if isinstance(v, float) else v))

    cam_step = next((r["step_s"] for r in rows if r["method"] == "CAM"), None)
    header = (
        "| method | mIoU | mDice | FwIoU | TUM | STR | LYM | NEC | train s | step time vs CAM |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [header]
    for r in rows:
        ratio = f"{r['step_s'] / cam_step:.2f}×" if cam_step else "–"
        cells = [r["mIoU"], r["mDice"], r["FwIoU"], r["TUM"], r["STR"], r["LYM"], r["NEC"]]
        fmt = " | ".join("–" if c is None else f"{100 * c:.1f}" for c in cells)
        lines.append(f"| {r['method']} | {fmt} | {r['train_s']:.0f} | {ratio} |")
    table = "\n".join(lines)
    setup = (
        f"{args.n_train} training + {args.n_test} test synthetic slides of {args.slide_px}² px at "
        f"0.5 µm/px; {len(data)} patches of {args.patch_px} px at {args.mpp} µm/px labelled from "
        f"region annotations; {args.iters} iterations × batch {args.batch} per method, "
        f"{args.threads} CPU threads; scores (%) on the test slides' pixels, protocol lpd."
    )
    print(table)
    print(setup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"{setup}\n\n{table}\n")


if __name__ == "__main__":
    main()
