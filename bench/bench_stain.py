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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-lpd-bench"))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", default=["42"])
    p.add_argument("--iters", default="100")
    p.add_argument("--batch", default="8")
    p.add_argument("--out", type=Path, default=bench_methods.ROOT / "bench/results/stain.md")
    args = p.parse_args()
    for tag in args.settings:
        extra = ["--augment", *SETTINGS[tag]] if SETTINGS[tag] else []
        bench_methods.main(
            ["--work", str(args.work), "--cohorts", "real", "--methods", "LPD", "--seeds",
             *args.seeds, "--iters", args.iters, "--batch", args.batch, "--tag", tag,
             "--out", str(args.work / f"methods_{tag}.md"), *extra]
        )  # fmt: skip
    records = bench_methods.load_records(args.work / "results.jsonl")
    lines = [
        "# Stain robustness (LPD, real-texture cohort)\n",
        f"`nice -n 5 python bench/bench_stain.py {' '.join(sys.argv[1:])}`\n",
        "mIoU (%, protocol lpd): mean over seeds of the test slides' mean per-slide mIoU; drop = "
        "test − test_shifted per seed, then averaged; target drop ≤ 3 without a lower test "
        "score.\n",
        "| train.augment | seeds | mIoU test | mIoU stain-shifted | drop | per-slide shifted |",
        "| --- | --- | --- | --- | --- | --- |",
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
        test = [float(np.mean(list(r["test"].values()))) for r in rs]
        shift = [float(np.mean(list(r["test_shifted"].values()))) for r in rs]
        drop = [a - b for a, b in zip(test, shift, strict=True)]
        per = "; ".join(", ".join(f"{k} {v:.1f}" for k, v in r["test_shifted"].items()) for r in rs)
        label = " ".join(SETTINGS[tag]) or "off (flips only)"
        lines.append(
            f"| {label} | {','.join(str(r['seed']) for r in rs)} | "
            f"{bench_methods.summarise(test)} | {bench_methods.summarise(shift)} | "
            f"{bench_methods.summarise(drop)} | {per} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
