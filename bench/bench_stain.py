"""Stain robustness of LPD on the real-texture cohort: training augmentation strength vs the drop
from the test slides to their stain-shifted copies (H and E scaled per slide in [0.5, 1.5]).

Each setting is one ``bench_methods`` configuration (tag) on the ``real`` cohort; runs already in
WORK/results.jsonl are reused (the tag ``base`` is jitter off). Writes bench/results/stain.md.

    nice -n 5 python bench/bench_stain.py --work /tmp/wsi-lpd-bench --seeds 42
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench"))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", default=["42"])
    p.add_argument("--iters", default="100")
    p.add_argument("--batch", default="8")
    p.add_argument("--stain-normalise", action="store_true", help="also score normalised copies")
    p.add_argument("--stain-extremes", action="store_true", help="also score H&E × 0.5 / × 1.5")
    p.add_argument("--out", type=Path, default=bench_methods.ROOT / "bench/results/stain.md")
    args = p.parse_args()
    for tag in args.settings:
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
    roles = [r for r in bench_methods.ROLES if any(r in rec for rec in records)]
    lines = [
        "# Stain robustness (LPD, real-texture cohort)\n",
        f"`nice -n 5 python bench/bench_stain.py {' '.join(sys.argv[1:])}`\n",
        "Cells: mean ± sd over seeds of the test slides' mean per-slide mIoU (%, protocol lpd), "
        "all configured classes / only the classes in the ground truth. drop = test − "
        "test_shifted per seed. `_norm`: the same slides Reinhard-normalised to the training "
        "slides' LAB statistics before inference. Target: drop ≤ 3 without a lower test score.\n",
        "| train.augment | seeds | " + " | ".join(f"mIoU {r}" for r in roles) + " | drop |",
        "|" + " --- |" * (len(roles) + 3),
    ]
    for tag in args.settings:
        rs = [
            r
            for r in records
            if r["tag"] == tag and r["cohort"] == "real" and r["method"] == "LPD"
            and "error" not in r and str(r["seed"]) in args.seeds
        ]  # fmt: skip
        if not rs:
            continue
        cells = [
            " ".join(SETTINGS[tag]) or "off (flips only)",
            ",".join(str(r["seed"]) for r in rs),
        ]
        for role in roles:
            full = [bench_methods.slide_mean(r, role) for r in rs if role in r]
            gt = [bench_methods.slide_mean(r, f"{role}_gt") for r in rs if f"{role}_gt" in r]
            cells.append(f"{bench_methods.summarise(full)} / {bench_methods.summarise(gt)}")
        drops = {
            k: [
                bench_methods.slide_mean(r, k) - bench_methods.slide_mean(r, f"test_shifted{k[4:]}")
                for r in rs
                if k in r and f"test_shifted{k[4:]}" in r
            ]
            for k in ("test", "test_gt")
        }
        cells.append(" / ".join(bench_methods.summarise(d) for d in drops.values()))
        lines.append("| " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
