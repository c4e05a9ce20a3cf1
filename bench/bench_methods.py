"""LPD vs LPD without L_div vs CAM vs PBIP-style vs HisynSeg over seeds, on two cohorts.

Cohorts: ``synth`` (procedural H&E-like slides, classes TUM/STR/LYM/NEC) and ``real`` (the same
kind of layouts filled with real H&E texture from histolytics' HGSC crops, classes TUM/STR/LYM
with NEC configured but absent; test slides use texture pixels no training slide contains, plus
stain-shifted copies ``real_shift``). Training sees only the coarse region annotations (which
cover part of each region). Every step goes through the ``wsi-lpd`` CLI (tile, patches, train
--config, infer, evaluate), called in this process (``--subprocess`` for separate processes), so
the bench follows the engine behind those commands. Scores: per-slide mIoU (protocol lpd, %) on
the test slides; each run's record is appended to WORK/results.jsonl (finished runs are skipped
on a rerun) and the table of every record is written as Markdown.

    nice -n 5 python bench/bench_methods.py --work /tmp/wsi-lpd-bench
    python bench/bench_methods.py --cohorts real --methods LPD CAM --seeds 42
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "model"

VARIANTS: dict[str, dict[str, Any]] = {
    "LPD": {"model": {"method": "lpd"}},
    "LPD w/o L_div": {"model": {"method": "lpd"}, "loss": {"lambda_div": 0.0}},
    "CAM": {"model": {"method": "cam", "head": {"prototypes_per_class": 1}}},
    "PBIP-style": {"model": {"method": "pbip"}},
    "HisynSeg": {"base": "hisynseg_cpu_small.yaml", "model": {"method": "hisynseg"}},
    "LPD class-balanced": {"model": {"method": "lpd"}, "train": {"class_balance": "sampler"}},
    "LPD K=5": {"model": {"method": "lpd", "head": {"prototypes_per_class": 5}}},
    "LPD dim 64": {"model": {"method": "lpd", "head": {"prototype_dim": 64}}},
    "LPD no warm-up": {"model": {"method": "lpd"}, "loss": {"warmup_iters": 0}},
}
# HisynSeg's synthesis and realism filter scaled down to the bench budget.
HISYNSEG_BENCH = {"n_mosaic": 150, "n_bezier": 150, "filter": {"n_train": 120}}
WARMUP_SHARE = 0.3  # loss.warmup_iters / iterations, as in lpd_cpu_small.yaml (60 / 200)
EVAL_SETS = {
    "synth": ("test",),
    "real": ("test", "test_shifted"),
    "real4x": ("test",),
    "hetero": ("test",),
}
ROLES = ("test", "test_shifted", "test_extreme")
ROLES += tuple(f"{r}_norm" for r in ROLES)
EXTREME_SCALES = (0.5, 1.5)  # test_extreme: H and E both × 0.5 (pale) and both × 1.5 (dark)
REAL_SEED = 500  # write_real_texture_cohort's default layout seed


def cli(args: list[str], subprocess_mode: bool) -> None:
    """Run ``wsi-lpd ARGS`` (in this process unless ``subprocess_mode``); raise on failure."""
    if subprocess_mode:
        done = subprocess.run(
            [sys.executable, "-m", "wsi_lpd.cli.app", *args], capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
        return
    from typer.main import get_command

    from wsi_lpd.cli.app import app

    err = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(err):
            get_command(app).main(args, prog_name="wsi-lpd", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            said = [line for line in err.lines if line.startswith("wsi-lpd: error:")]
            raise RuntimeError(
                said[-1] if said else f"wsi-lpd {args[0]} exited {exc.code}"
            ) from exc


class _Tee(io.TextIOBase):
    """A stderr that also keeps the complete lines written to it."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.lines, self._part = stream, [], ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, self._part = (self._part + text).split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def make_cohort(kind: str, work: Path, n_train: int, n_test: int, size_px: int) -> list[dict]:
    """Slides of a cohort (reused when present): dicts id, path, split, annotations, truth."""
    out = work / kind / "slides"
    out.mkdir(parents=True, exist_ok=True)
    slides = []
    if kind in ("real", "real4x"):
        from wsi_lpd.synthetic.slides import write_real_texture_cohort

        side = size_px * (2 if kind == "real4x" else 1)  # 4x the area: 4x the labelled patches
        for c in write_real_texture_cohort(out, n_train=n_train, n_test=n_test, size_px=side):
            if kind == "real4x" and c.split == "test_shifted":
                continue  # a methods comparison: the stain study is bench_stain.py's
            slides.append((c.slide, c.split, c.stain_scale))
    elif kind == "hetero":
        from wsi_lpd.synthetic.slides import write_heterogeneous_cohort

        for c in write_heterogeneous_cohort(out, n_train=n_train, n_test=n_test, size_px=size_px):
            slides.append((c.slide, c.split, None))
    else:
        from wsi_lpd.synthetic.slides import SynthSlide, write_synthetic_slide

        for i in range(n_train + n_test):
            path = out / f"synth_{i:02d}.tiff"
            stem = path.stem
            if path.exists():
                s = SynthSlide(
                    path,
                    out / f"{stem}.mask.tiff",
                    out / f"{stem}.annotations.geojson",
                    stem,
                    size_px,
                    size_px,
                    0.5,
                )
            else:
                s = write_synthetic_slide(
                    path, width_px=size_px, height_px=size_px, mpp=0.5, seed=100 + i
                )
            slides.append((s, "train" if i < n_train else "test", None))
    return [
        {
            "id": s.slide_id,
            "path": s.slide_path,
            "split": split,
            "stain": stain,
            "annotations": s.annotations_path,
            "truth": s.mask_path,
        }
        for s, split, stain in slides
    ]


def make_store(
    work: Path, kind: str, slides: list[dict], mpp: float, patch_px: int, sub: bool
) -> Path:
    """``wsi-lpd tile`` each training slide, then ``wsi-lpd patches`` from their annotations."""
    store = work / kind / f"patches_{mpp:g}um_{patch_px}px.zarr"
    if store.exists():
        return store
    train = [s for s in slides if s["split"] == "train"]
    tile_dirs = []
    for s in train:
        tdir = work / kind / "tiles" / s["id"]
        if not (tdir / "tiles.npz").exists():
            cli(["tile", str(s["path"]), "--out", str(tdir), "--tile-mpp", str(mpp),
                 "--patch-px", str(patch_px)], sub)  # fmt: skip
        tile_dirs.append(tdir)
    args = ["patches", "--out", str(store)]
    for tdir, s in zip(tile_dirs, train, strict=True):
        args += ["--tiles", str(tdir), "--annotations", str(s["annotations"])]
    cli(args, sub)
    return store


def write_config(name: str, path: Path, augment: dict[str, float], iters: int) -> Path:
    """The variant's training config: the CPU-small base config plus the variant's overrides;
    the loss warm-up keeps its share of the run (60 of 200 iterations in the base config)."""
    spec = VARIANTS[name]
    raw = yaml.safe_load((CONFIGS / spec.get("base", "lpd_cpu_small.yaml")).read_text())
    raw = copy.deepcopy(raw)
    for section in ("model", "loss", "train"):
        for key, value in spec.get(section, {}).items():
            target = raw.setdefault(section, {})
            if isinstance(value, dict):
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    if spec["model"]["method"] == "hisynseg":
        h = raw.setdefault("hisynseg", {})
        h.update({k: v for k, v in HISYNSEG_BENCH.items() if k != "filter"})
        h.setdefault("filter", {}).update(HISYNSEG_BENCH["filter"])
    loss = raw.get("loss")
    if loss and "warmup_iters" in loss and "warmup_iters" not in spec.get("loss", {}):
        loss["warmup_iters"] = max(1, round(WARMUP_SHARE * iters))
    train = raw.setdefault("train", {})
    train["val_fraction"] = 0.0
    train["augment"] = {**train.get("augment", {}), **augment}  # the base config's, then overrides
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def slide_scores(metrics: Path, gt_only: bool = False) -> dict[str, float]:
    """Per-slide mIoU (%) from ``wsi-lpd evaluate``'s metrics.json; ``gt_only``: the mean IoU
    over the classes present in the slide's ground truth only (a class the model predicts but
    the slide lacks then costs its false positives in the other classes, not a zero)."""
    data = json.loads(metrics.read_text())
    if not gt_only:
        return {k: 100.0 * v["miou"] for k, v in data["per_slide"].items()}
    out = {}
    for k, v in data["per_slide"].items():
        cm = np.asarray(v["confusion_matrix"])
        inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
        present = cm.sum(1) > 0
        out[k] = 100.0 * float(np.mean(inter[present] / union[present]))
    return out


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_dir(work: Path, cohort: str, tag: str, name: str, seed: int) -> Path:
    return work / cohort / "runs" / f"{tag}_{name.replace(' ', '_').replace('/', '')}_s{seed}"


def run_one(
    cohort: str,
    name: str,
    seed: int,
    slides: list[dict],
    store: Path,
    args: argparse.Namespace,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one variant with one seed, infer and score every evaluation slide.

    With ``previous`` (a record of the same run lacking some evaluation sets), the trained model
    is reused and only the missing sets are scored.
    """
    tag = args.tag
    run = run_dir(args.work, cohort, tag, name, seed)
    model = run / "model" / "model.pt"
    if args.models_from:  # rescoring: the model of the same run under another tag
        model = run_dir(args.work, cohort, args.models_from, name, seed) / "model" / "model.pt"
        trained = next(
            (r for r in load_records(args.work / "results.jsonl")
             if (r["cohort"], r["method"], r["seed"], r["tag"])
             == (cohort, name, seed, args.models_from)), None
        )  # fmt: skip
        if trained is None or "error" in trained or not model.exists():
            return {"cohort": cohort, "method": name, "seed": seed, "tag": tag,
                    "error": f"no trained model under tag {args.models_from}"}  # fmt: skip
        keep = ("iters", "batch", "augment", "train_s", "train_cpu_s")
        record = dict(previous or {k: trained[k] for k in keep if k in trained})
        record.update(cohort=cohort, method=name, seed=seed, tag=tag)
    elif previous is not None and model.exists():
        record = dict(previous)
    elif model.exists() and (model.parent / "run.json").exists():  # trained, scoring was cut
        record = {"cohort": cohort, "method": name, "seed": seed, "tag": tag}
        record.update(iters=args.iters, batch=args.batch, augment=args.augment)
        record["train_s"] = json.loads((model.parent / "run.json").read_text())["wall_time_s"]
    else:
        cfg = write_config(name, run / "config.yaml", args.augment, args.iters)
        record = {"cohort": cohort, "method": name, "seed": seed, "tag": tag}
        record.update(iters=args.iters, batch=args.batch, augment=args.augment)
        t0, c0 = time.time(), cpu_seconds()
        try:
            cli(["train", "--model-config", str(cfg), "--out", str(run / "model"), "--patches",
                 str(store), "--seed", str(seed), "--max-iters", str(args.iters),
                 "--batch-size", str(args.batch), "--workers", "0", "--device", "cpu"],
                args.subprocess)  # fmt: skip
        except Exception as exc:  # a method that cannot train on this cohort is a result, too
            record.update(error=str(exc).splitlines()[-1][:200], train_s=time.time() - t0)
            return record
        record["train_s"], record["train_cpu_s"] = time.time() - t0, cpu_seconds() - c0
    t1, c1 = time.time(), cpu_seconds()
    for role in roles_of(slides):
        if role in record:
            continue
        todo = [s for s in slides if s["split"] == role]
        preds = []
        for s in todo:
            cli(["infer", str(s["path"]), "--model", str(model), "--out", str(run / "mosaics"),
                 "--device", "cpu", "--batch-size", "32", "--stain-normalise",
                 args.stain_normalise_infer], args.subprocess)  # fmt: skip
            preds.append(run / "mosaics" / f"{s['id']}.ome.zarr")
        ev = run / f"eval_{role}"
        pairs = [
            ["--pred", str(p), "--truth", str(s["truth"])] for p, s in zip(preds, todo, strict=True)
        ]
        cli(["evaluate", "--out", str(ev), *[a for pair in pairs for a in pair]], args.subprocess)
        record[role] = slide_scores(ev / "metrics.json")
        record[f"{role}_gt"] = slide_scores(ev / "metrics.json", gt_only=True)
    record.setdefault("infer_s", time.time() - t1)
    record.setdefault("infer_cpu_s", cpu_seconds() - c1)
    return record


def roles_of(slides: list[dict]) -> list[str]:
    """Evaluation sets present among the slides, in ROLES order."""
    present = {s["split"] for s in slides}
    return [r for r in ROLES if r in present]


def extreme_copies(work: Path, slides: list[dict], size_px: int) -> list[dict]:
    """Copies of the real cohort's test slides with H and E both scaled by each of
    EXTREME_SCALES (role ``test_extreme``; same layout, mask and annotations)."""
    from wsi_lpd.synthetic.slides import write_synthetic_slide
    from wsi_lpd.synthetic.texture import RealTextureBank

    bank = None
    out = []
    for s in slides:
        if s["split"] != "test":
            continue
        index = int(s["id"].split("_")[1])
        for f in EXTREME_SCALES:
            dest = s["path"].with_name(f"{s['id']}_x{f:g}.tiff")
            if not dest.exists():
                bank = bank or RealTextureBank("test")
                write_synthetic_slide(dest, width_px=size_px, height_px=size_px,
                                      seed=REAL_SEED + index, texture="real", stain_scale=(f, f),
                                      bank=bank)  # fmt: skip
            truth = dest.with_name(f"{dest.stem}.mask.tiff")
            out.append({**s, "id": dest.stem, "path": dest, "split": "test_extreme",
                        "stain": (f, f), "truth": truth})  # fmt: skip
    return out


class NormalisedLevel0:
    """``write_pyramid``'s renderer protocol over a Reinhard-normalised level-0 array."""

    def __init__(self, level0: np.ndarray, source: np.ndarray, reference: np.ndarray) -> None:
        self.level0, self.source, self.reference = level0, source, reference
        h, w = level0.shape[:2]
        self.layout = type("Layout", (), {"height_px": h, "width_px": w, "mpp": 0.5})()

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        from wsi_lpd.data.stain import reinhard_normalise

        block = np.full((h, w, 3), 255, np.uint8)
        part = self.level0[y0 : y0 + h, x0 : x0 + w]
        block[: part.shape[0], : part.shape[1]] = part
        return reinhard_normalise(block, self.source, self.reference)


def normalised_copies(work: Path, slides: list[dict]) -> list[dict]:
    """Reinhard-normalised copies of the test slides (roles ``{role}_norm``):
    each slide's tissue LAB statistics (from a 1/16 thumbnail) mapped onto the training slides'
    pooled statistics, block by block (wsi_lpd.data.stain). Same ground truth."""
    import tifffile

    from wsi_lpd.data.stain import reinhard_stats
    from wsi_lpd.synthetic.slides import write_pyramid

    def thumb(path: Path) -> np.ndarray:
        with tifffile.TiffFile(path) as tif:
            return tif.pages[1].asarray() if len(tif.pages) > 1 else tif.pages[0].asarray()

    ref_pixels = np.concatenate([thumb(s["path"]).reshape(-1, 3) for s in slides
                                 if s["split"] == "train"])  # fmt: skip
    reference = reinhard_stats(ref_pixels)
    out = []
    for s in slides:
        if s["split"] not in ("test", "test_shifted", "test_extreme"):
            continue
        dest = s["path"].with_name(f"{s['id']}_norm.tiff")
        if not dest.exists():
            source = reinhard_stats(thumb(s["path"]).reshape(-1, 3))
            level0 = tifffile.imread(s["path"], key=0)

            renderer = NormalisedLevel0(level0, source, reference)
            write_pyramid(dest, renderer, tile_px=256, aperio=True, jpeg_quality=85)  # type: ignore[arg-type]
        out.append({**s, "id": dest.stem, "path": dest, "split": f"{s['split']}_norm"})
    return out


def load_records(path: Path) -> list[dict[str, Any]]:
    """The last record of every (cohort, method, seed, tag) in results.jsonl."""
    if not path.exists():
        return []
    last: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            last[(r["cohort"], r["method"], r["seed"], r["tag"])] = r
    return list(last.values())


def summarise(values: list[float]) -> str:
    if not values:
        return "–"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {sd:.1f}"


def backfill_gt(records: list[dict[str, Any]], work: Path) -> None:
    """Add the GT-classes scores to records written before they were recorded."""
    for r in records:
        for role in ROLES:
            metrics = run_dir(work, r["cohort"], r["tag"], r["method"], r["seed"])
            metrics = metrics / f"eval_{role}" / "metrics.json"
            if role in r and f"{role}_gt" not in r and metrics.exists():
                r[f"{role}_gt"] = slide_scores(metrics, gt_only=True)


def wall_cpu(records: list[dict[str, Any]], step: str) -> str:
    """Mean wall seconds of a step, with its mean CPU seconds where recorded."""
    wall = f"{np.mean([r[f'{step}_s'] for r in records]):.0f}"
    cpu = [r[f"{step}_cpu_s"] for r in records if f"{step}_cpu_s" in r]
    return f"{wall} ({np.mean(cpu):.0f})" if cpu else wall


def slide_mean(r: dict[str, Any], key: str) -> float:
    return float(np.mean(list(r[key].values())))


def table(records: list[dict[str, Any]], cohort: str, tag: str) -> str:
    """Markdown rows per method: mean ± sd over seeds of the slide-mean mIoU per evaluation set
    (all configured classes + background / only the classes in the slide's ground truth)."""
    mine = [r for r in records if r["cohort"] == cohort and r["tag"] == tag]
    roles = [role for role in ROLES if any(role in r for r in mine)] or list(EVAL_SETS[cohort])
    head = ["method", "seeds", *[f"mIoU {r} (all / GT classes)" for r in roles]]
    if "test_shifted" in roles:
        head.append("stain-shift drop (all / GT)")
    head += ["train s / run (CPU s)", "infer s / run (CPU s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    notes: list[str] = []
    for name in VARIANTS:
        rs = [r for r in mine if r["method"] == name]
        if not rs:
            continue
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"| {name} | {len(rs)} | fails: `{rs[0]['error']}` |")
            continue
        seeds = ",".join(str(r["seed"]) for r in ok)
        for r in rs:
            if "error" in r:
                notes.append(f"{name}, seed {r['seed']}: `{r['error']}`")
                seeds += f" (seed {r['seed']} failed ¹)"
        cells = [name, seeds]
        for role in roles:
            full = [slide_mean(r, role) for r in ok if role in r]
            gt = [slide_mean(r, f"{role}_gt") for r in ok if f"{role}_gt" in r]
            cells.append(f"{summarise(full)} / {summarise(gt)}")
        if "test_shifted" in roles:
            both = [r for r in ok if "test" in r and "test_shifted" in r]
            drop = [slide_mean(r, "test") - slide_mean(r, "test_shifted") for r in both]
            drop_gt = [
                slide_mean(r, "test_gt") - slide_mean(r, "test_shifted_gt")
                for r in both
                if "test_gt" in r and "test_shifted_gt" in r
            ]
            cells.append(f"{summarise(drop)} / {summarise(drop_gt)}")
        cells += [wall_cpu(ok, "train"), wall_cpu(ok, "infer")]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("\n¹ " + "; ".join(notes))
    return "\n".join(lines)


def parse_augment(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = float(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench"))
    p.add_argument("--cohorts", nargs="+", default=["synth", "real"], choices=list(EVAL_SETS))
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 7, 1])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mpp", type=float, default=2.0)
    p.add_argument("--patch-px", type=int, default=112)
    p.add_argument("--slide-px", type=int, default=4096)
    p.add_argument("--n-train", type=int, default=4)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--augment", nargs="*", default=[], help="train.augment overrides: KEY=VALUE")
    p.add_argument("--tag", default="base", help="label of this configuration in results.jsonl")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--subprocess", action="store_true", help="run each CLI step as a process")
    p.add_argument(
        "--stain-extremes",
        action="store_true",
        help="also score the real test slides with H and E both × 0.5 and both × 1.5",
    )
    p.add_argument("--report-only", action="store_true", help="only rewrite --out from WORK")
    p.add_argument("--report-tags", nargs="*", default=None, help="tags in the report [--tag]")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument(
        "--stain-normalise",
        action="store_true",
        help="also score Reinhard-normalised copies of the real cohort's test slides",
    )
    p.add_argument(
        "--models-from",
        default=None,
        help="score the models trained under this tag (no training) and record them as --tag",
    )
    p.add_argument(
        "--stain-normalise-infer",
        default="none",
        choices=["none", "reinhard", "macenko"],
        help="wsi-lpd infer --stain-normalise (none: methods compared on the raw colours)",
    )
    p.add_argument(
        "--label-merge",
        default="mean",
        choices=["mean", "softmax"],
        help="softmax: predicted image labels from the softmax-weighted merge of the subclass "
        "logits, as before the fix in wsi_lpd.networks.predict.predicted_labels (in-process only)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "methods.md")
    return p


def use_softmax_label_merge() -> None:
    """Reproduce the predicted labels before the fix: sigmoid of the softmax-weighted merge of
    the K subclass logits (the CAM merge), not of the mean that L_cls trains."""
    import torch

    from wsi_lpd.networks import merge, predict

    def old(logits4: Any, num_classes: int, threshold: float = 0.5) -> Any:
        probs = torch.sigmoid(merge.merge_softmax_weighted(logits4, num_classes))
        labels = (probs > threshold).float()
        empty = labels.sum(dim=1) == 0
        if bool(empty.any()):
            top = torch.nn.functional.one_hot(probs.argmax(dim=1), num_classes).float()
            labels[empty] = top[empty]
        return labels

    predict.predicted_labels = old


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.augment = parse_augment(args.augment)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.label_merge == "softmax":
        if args.subprocess:
            raise SystemExit("--label-merge softmax works in-process only")
        use_softmax_label_merge()
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    started = time.time()
    for cohort in [] if args.report_only else args.cohorts:
        slides = make_cohort(cohort, args.work, args.n_train, args.n_test, args.slide_px)
        store = make_store(args.work, cohort, slides, args.mpp, args.patch_px, args.subprocess)
        if args.stain_extremes and cohort == "real":
            slides += extreme_copies(args.work / cohort, slides, args.slide_px)
        if args.stain_normalise and cohort == "real":
            slides += normalised_copies(args.work / cohort, slides)
        for seed in args.seeds:
            for name in args.methods:
                key = (cohort, name, seed, args.tag)
                previous = next(
                    (r for r in load_records(results)
                     if (r["cohort"], r["method"], r["seed"], r["tag"]) == key), None
                )  # fmt: skip
                failed = previous is not None and "error" in previous
                if failed and args.retry_failed:
                    previous = None
                if previous and (failed or all(
                    role in previous for role in roles_of(slides))):  # fmt: skip
                    continue
                record = run_one(cohort, name, seed, slides, store, args, previous)
                print(json.dumps(record), flush=True)
                with results.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
    records = load_records(results)
    backfill_gt(records, args.work)
    write_report(args, records, time.time() - started)


LEGEND = (
    "Cells: mean ± sd over seeds of the test slides' mean per-slide mIoU (protocol lpd, %), "
    "all configured classes (the `wsi-lpd evaluate` figure: a class absent from a slide but "
    "predicted on it scores 0) / only the classes in the slide's ground truth. test_shifted: "
    "the test slides with H and E scaled per slide by factors in [0.5, 1.5] (HED space); "
    "test_extreme: H and E both × 0.5 and both × 1.5; `_norm`: Reinhard-normalised to the "
    "training slides before inference. Stain-shift drop = test − test_shifted per seed. Wall "
    "seconds on a shared machine (CPU seconds of the run in brackets)."
)


def write_report(args: argparse.Namespace, records: list[dict[str, Any]], wall_s: float) -> None:
    command = "nice -n 5 python bench/bench_methods.py " + " ".join(sys.argv[1:])
    parts = [
        "# bench_methods results\n",
        f"`{command.strip()}` ({args.threads} CPU threads; "
        f"this invocation {wall_s / 60:.1f} min)\n",
        f"Slides {args.slide_px}² px at 0.5 µm/px, {args.n_train} training + {args.n_test} test "
        f"per cohort; patches {args.patch_px} px at {args.mpp:g} µm/px labelled from the region "
        f"annotations only; {args.threads} torch thread(s). {LEGEND}\n",
    ]
    for cohort in args.cohorts:
        for tag in args.report_tags or [args.tag]:
            mine = [r for r in records if r["cohort"] == cohort and r["tag"] == tag]
            if not mine:
                continue
            runs = sorted({f"{r['iters']} it × batch {r['batch']}" for r in mine})
            augment = mine[0].get("augment") or "of the model config"
            parts.append(
                f"## cohort `{cohort}`, tag `{tag}` ({', '.join(runs)}; augment {augment})\n"
            )
            parts.append(table(records, cohort, tag) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
