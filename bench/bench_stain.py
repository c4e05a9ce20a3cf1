"""Stain robustness of LPD on the real-texture cohort.

Default mode ``normalise``: LPD (the shipped CPU config, 100 it × 8) trained per seed, then every
test slide re-stained in each shift direction (pale, dark, H only, E only, both at random in
[0.5, 1.5]) and inferred with ``wsi-lpd infer --stain-normalise none|reinhard|macenko`` (the
reference: the training patches' statistics stored in model.pt). Records in
WORK/stain_results.jsonl (finished cells are skipped on a rerun); writes bench/results/stain.md.

    nice -n 10 python bench/bench_stain.py --work /tmp/wsi-lpd-bench --seeds 42 7 1

Mode ``augment`` (the earlier study): training augmentation strength vs the drop to the
stain-shifted copies, each setting one ``bench_methods`` configuration (tag) on the ``real``
cohort (runs in WORK/results.jsonl are reused; the tag ``base`` is jitter off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_methods

SETTINGS: dict[str, list[str]] = {
    "base": [],
    "hed0.05": ["hed_jitter=0.05"],
    "hed0.1": ["hed_jitter=0.1"],
    "hed0.2": ["hed_jitter=0.2"],
    "hed0.1+col0.1": ["hed_jitter=0.1", "color_jitter=0.1"],
    "hed0.2+col0.2": ["hed_jitter=0.2", "color_jitter=0.2"],
}


def augment_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench"))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", default=["42"])
    p.add_argument("--iters", default="100")
    p.add_argument("--batch", default="8")
    p.add_argument("--report-only", action="store_true", help="only rewrite --out from WORK")
    p.add_argument("--stain-normalise", action="store_true", help="also score normalised copies")
    p.add_argument("--stain-extremes", action="store_true", help="also score H&E × 0.5 / × 1.5")
    p.add_argument("--out", type=Path, default=bench_methods.ROOT / "bench/results/stain.md")
    args = p.parse_args(argv)
    for tag in [] if args.report_only else args.settings:
        extra = ["--augment", *SETTINGS[tag]] if SETTINGS[tag] else []
        bench_methods.main(
            ["--work", str(args.work), "--cohorts", "real", "--methods", "LPD", "--seeds",
             *args.seeds, "--iters", args.iters, "--batch", args.batch, "--tag", tag,
             "--out", str(args.work / f"methods_{tag}.md"), *extra,
             *(["--stain-normalise"] if args.stain_normalise else []),
             *(["--stain-extremes"] if args.stain_extremes else [])]
        )  # fmt: skip
    records = bench_methods.load_records(args.work / "results.jsonl")
    bench_methods.backfill_gt(records, args.work)
    chosen = {
        tag: [
            r
            for r in records
            if r["tag"] == tag
            and r["cohort"] == "real"
            and r["method"] == "LPD"
            and "error" not in r
            and str(r["seed"]) in args.seeds
        ]
        for tag in args.settings
    }
    lines = [
        "# Stain robustness (LPD, real-texture cohort)\n",
        f"`nice -n 5 python bench/bench_stain.py {' '.join(sys.argv[1:])}`\n",
        LEGEND,
    ]
    for suffix, title in (("_gt", "classes in the ground truth"), ("", "all configured classes")):
        lines += [f"## mIoU over {title}\n", "| train.augment | seeds | " + " | ".join(COLUMNS)
                  + " |", "|" + " --- |" * (2 + len(COLUMNS))]  # fmt: skip
        for tag, rs in chosen.items():
            if rs:
                label = " ".join(SETTINGS[tag]) or "off (flips only)"
                cells = [label, ",".join(str(r["seed"]) for r in rs)]
                cells += [cell(rs, role, part, suffix) for role, part in COLUMNS.values()]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


LEGEND = (
    "Mean ± sd over seeds of the test slides' mean per-slide mIoU (%, protocol lpd); in brackets "
    "the drop from the plain test slides (mean over seeds; negative = better). shifted: H and E "
    "scaled per slide by factors drawn in [0.5, 1.5] (real_04: H × 0.67, E × 1.40; real_05: "
    "H × 1.01, E × 0.76); H&E × 0.5 / × 1.5: both stains scaled; norm: the same slides "
    "Reinhard-normalised to the training slides' LAB statistics before inference. Target: drop "
    "≤ 3 without a lower test score. Runs: 100 it × batch 8 (`--iters 100 --batch 8 "
    "--stain-normalise --stain-extremes`); the 200 it × 16 runs are in methods.md.\n"
)
COLUMNS = {  # header: (evaluation set, slide-id filter)
    "test": ("test", ""),
    "shifted": ("test_shifted", ""),
    "H&E × 0.5": ("test_extreme", "_x0.5"),
    "H&E × 1.5": ("test_extreme", "_x1.5"),
    "norm: test": ("test_norm", ""),
    "norm: shifted": ("test_shifted_norm", ""),
    "norm: × 0.5": ("test_extreme_norm", "_x0.5"),
    "norm: × 1.5": ("test_extreme_norm", "_x1.5"),
}


def cell(rs: list[dict], role: str, part: str, suffix: str) -> str:
    """Mean ± sd over seeds of the slide-mean mIoU of a set (slides whose id holds ``part``),
    with the mean drop from the plain test slides in brackets."""
    values, drops = [], []
    for r in rs:
        scores = [v for k, v in r.get(role + suffix, {}).items() if part in k]
        if scores:
            values.append(float(np.mean(scores)))
            drops.append(bench_methods.slide_mean(r, "test" + suffix) - values[-1])
    if not values:
        return "–"
    text = bench_methods.summarise(values)
    return text if role == "test" else f"{text} (drop {np.mean(drops):.1f})"


# --- mode normalise ------------------------------------------------------------------------

DIRECTIONS: dict[str, tuple[float, float] | None] = {  # (H, E) factors; None: the cohort's own
    "pale (H&E × 0.5)": (0.5, 0.5),
    "dark (H&E × 1.5)": (1.5, 1.5),
    "H × 0.5": (0.5, 1.0),
    "H × 1.5": (1.5, 1.0),
    "E × 0.5": (1.0, 0.5),
    "E × 1.5": (1.0, 1.5),
    "random H, E in [0.5, 1.5]": None,
}
NORMALISERS = ("none", "reinhard", "macenko")


class _ShiftedLevel0:
    """``write_pyramid``'s renderer protocol: a level-0 array re-stained block by block."""

    def __init__(self, level0: np.ndarray, scale: tuple[float, float]) -> None:
        self.level0, self.scale = level0, scale
        h, w = level0.shape[:2]
        self.layout = type("Layout", (), {"height_px": h, "width_px": w, "mpp": 0.5})()

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        from wsi_lpd.data.stain import shift_stain

        block = np.full((h, w, 3), 255, np.uint8)
        part = self.level0[y0 : y0 + h, x0 : x0 + w]
        block[: part.shape[0], : part.shape[1]] = part
        return shift_stain(block, *self.scale)


def stained_sets(work: Path, slides: list[dict]) -> dict[str, list[dict]]:
    """Evaluation sets: ``test`` and one per shift direction (the test slides' pixels re-stained
    in HED space, same ground truth; the random one is the cohort's ``test_shifted``)."""
    import tifffile

    from wsi_lpd.synthetic.slides import write_pyramid

    sets = {"test": [s for s in slides if s["split"] == "test"]}
    for name, scale in DIRECTIONS.items():
        if scale is None:
            sets[name] = [s for s in slides if s["split"] == "test_shifted"]
            continue
        sets[name] = []
        for s in sets["test"]:
            dest = s["path"].with_name(f"{s['id']}_h{scale[0]:g}_e{scale[1]:g}.tiff")
            if not dest.exists():
                level0 = tifffile.imread(s["path"], key=0)
                write_pyramid(dest, _ShiftedLevel0(level0, scale), tile_px=256, aperio=True,
                              jpeg_quality=85)  # type: ignore[arg-type]  # fmt: skip
            sets[name].append({**s, "id": dest.stem, "path": dest})
    return sets


def normalise_main(argv: list[str]) -> None:
    import json
    import time

    cli = bench_methods.cli
    p = argparse.ArgumentParser(description="stain normalisation at inference vs stain shifts")
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench"))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 7, 1])
    p.add_argument("--normalisers", nargs="+", default=list(NORMALISERS), choices=NORMALISERS)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--slide-px", type=int, default=4096)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", type=Path, default=bench_methods.ROOT / "bench/results/stain.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = args.work / "stain_results.jsonl"
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["seed"], r["normaliser"], r["set"]))
    started = time.time()
    if not args.report_only:
        slides = bench_methods.make_cohort("real", args.work, 4, 2, args.slide_px)
        store = bench_methods.make_store(args.work, "real", slides, 2.0, 112, False)
        sets = stained_sets(args.work / "real", slides)
        for seed in args.seeds:
            run = args.work / "real" / "runs" / f"stain_LPD_s{seed}"
            model = run / "model" / "model.pt"
            if not model.exists():
                cfg = bench_methods.write_config("LPD", run / "config.yaml", {}, args.iters)
                cli(["train", "--model-config", str(cfg), "--out", str(run / "model"),
                     "--patches", str(store), "--seed", str(seed), "--max-iters",
                     str(args.iters), "--batch-size", str(args.batch), "--workers", "0",
                     "--device", "cpu"], False)  # fmt: skip
            for norm in args.normalisers:
                for name, todo in sets.items():
                    if (seed, norm, name) in done:
                        continue
                    t0 = time.time()
                    out = run / f"mosaics_{norm}"
                    pairs = []
                    for s in todo:
                        cli(["infer", str(s["path"]), "--model", str(model), "--out", str(out),
                             "--device", "cpu", "--batch-size", "32", "--workers", "0",
                             "--stain-normalise", norm], False)  # fmt: skip
                        pairs += ["--pred", str(out / f"{s['id']}.ome.zarr"), "--truth",
                                  str(s["truth"])]  # fmt: skip
                    ev = run / f"eval_{norm}_{len(done)}"
                    cli(["evaluate", "--out", str(ev), *pairs], False)
                    record = {"seed": seed, "normaliser": norm, "set": name,
                              "all": bench_methods.slide_scores(ev / "metrics.json"),
                              "gt": bench_methods.slide_scores(ev / "metrics.json", True),
                              "infer_s": time.time() - t0}  # fmt: skip
                    with results.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    done.add((seed, norm, name))
                    print(json.dumps(record), flush=True)
    write_normalise_report(args, results, time.time() - started)


def write_normalise_report(args: argparse.Namespace, results: Path, wall_s: float) -> None:
    import json

    records: dict[tuple, dict] = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        r = json.loads(line)
        records[(r["seed"], r["normaliser"], r["set"])] = r
    names = ["test", *DIRECTIONS]
    lines = [
        "# Stain normalisation at inference (LPD, real-texture cohort)\n",
        f"`nice -n 10 python bench/bench_stain.py {' '.join(sys.argv[1:])}` "
        f"(this invocation {wall_s / 60:.1f} min, 1 torch thread, shared 2-core machine)\n",
        NORMALISE_LEGEND,
    ]
    for key, title in (("gt", "classes in the ground truth"), ("all", "all configured classes")):
        lines += [f"## mIoU over {title}\n",
                  "| infer.stain_normalise | seeds | " + " | ".join(names) + " | worst drop |",
                  "|" + " --- |" * (3 + len(names))]  # fmt: skip
        for norm in NORMALISERS:
            seeds = sorted({s for (s, n, _) in records if n == norm})
            if not seeds:
                continue
            cells, worst = [], None
            for name in names:
                vals, drops = [], []
                for seed in seeds:
                    r, base = records.get((seed, norm, name)), records.get((seed, norm, "test"))
                    if r is None:
                        continue
                    vals.append(float(np.mean(list(r[key].values()))))
                    if base is not None:
                        drops.append(float(np.mean(list(base[key].values()))) - vals[-1])
                if not vals:
                    cells.append("–")
                    continue
                text = bench_methods.summarise(vals) + f" ({len(vals)})"
                if name != "test" and drops:
                    text += f" (drop {np.mean(drops):.1f})"
                    worst = max(worst or -1e9, float(np.mean(drops)))
                cells.append(text)
            worst_text = "–" if worst is None else f"{worst:.1f}"
            lines.append(f"| {norm} | {','.join(map(str, seeds))} | " + " | ".join(cells)
                         + f" | {worst_text} |")  # fmt: skip
        lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


NORMALISE_LEGEND = (
    "Cells: mean ± sd over seeds (number of seeds in brackets) of the test slides' mean "
    "per-slide mIoU (%, protocol lpd); drop = the same normaliser's unshifted test score − the "
    "shifted score (mean over seeds; negative = better). Shifted sets: the two test slides' "
    "pixels re-stained in HED space (same ground truth); random: H and E each "
    "scaled per slide by a factor drawn in [0.5, 1.5] (real_04: H × 0.67, E × 1.40; real_05: "
    "H × 1.01, E × 0.76). Reference: the training patches' statistics stored in model.pt; each "
    "slide's statistics from one low-resolution read. Training: LPD, lpd_cpu_small.yaml "
    "(stain_strength 0.5 augmentation) at 100 it × batch 8. Target: drop ≤ 3 in every "
    "direction.\n"
)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["--mode", "augment"]:
        augment_main(argv[2:])
    else:
        normalise_main(argv[2:] if argv[:1] == ["--mode"] else argv)


if __name__ == "__main__":
    main()
