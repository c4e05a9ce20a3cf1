"""The synth stage: a cohort of synthetic slides with ground truth and its sample sheet.

:func:`write_synthetic_cohort` writes ``{prefix}_{i:02d}.tiff`` (+ label masks and annotations),
``samples.csv`` and ``run.json`` into a folder; its options are one
:class:`~wsi_lpd.synthetic.options.SynthSection`.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from pathlib import Path

from wsi_lpd.io import atomic_file
from wsi_lpd.progress import progress
from wsi_lpd.run_metadata import write_run_metadata
from wsi_lpd.synthetic.artefacts import write_artefact_slide
from wsi_lpd.synthetic.options import SynthSection
from wsi_lpd.synthetic.slides import CMU_SLIDE_ID, copy_cmu_small_region, write_synthetic_slide

SAMPLE_COLUMNS = ("slide_id", "path", "mpp", "annotations", "truth", "split")


def write_synthetic_cohort(
    opts: SynthSection, out: str | os.PathLike, *, add_cmu: bool = False
) -> Path:
    """Write ``opts.n_slides`` synthetic slides (``opts.artefacts`` painted on, with their ground
    truth) into ``out`` (the last one the test split when there are two or more), plus
    CMU-1-Small-Region with ``add_cmu``; returns the sample sheet."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n = opts.n_slides
    for i in progress(range(n), desc="synth slides", unit="slide"):
        split = "test" if n >= 2 and i == n - 1 else "train"
        paint = (
            functools.partial(write_artefact_slide, kinds=opts.artefacts)
            if opts.artefacts
            else write_synthetic_slide
        )
        written = paint(
            out / f"{opts.prefix}_{i:02d}.tiff",
            width_px=opts.width_px,
            height_px=opts.height_px,
            mpp=opts.slide_mpp,
            seed=opts.seed + i,
            aperio=opts.aperio,
            mask_mpp=opts.mask_mpp,
            jpeg_quality=opts.jpeg_quality,
            texture=opts.texture,
            texture_split=split,
            stain_scale=opts.stain_scale,
            tissue_fraction=opts.tissue_fraction,
            progress=True,
        )
        slide = getattr(written, "slide", written)  # an ArtefactSlide holds the SynthSlide
        rows.append(
            (
                slide.slide_id,
                slide.slide_path.resolve(),
                slide.mpp,
                slide.annotations_path.resolve(),
                slide.mask_path.resolve(),
                split,
            )
        )
    if add_cmu:
        cmu = copy_cmu_small_region(out)
        rows.append((CMU_SLIDE_ID, cmu.resolve(), "", "", "", "test"))
    sheet = out / "samples.csv"
    with atomic_file(sheet) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SAMPLE_COLUMNS)
        writer.writerows(rows)
    write_run_metadata(
        out, "synth", opts.model_dump(), {}, started, outputs=[str(r[1]) for r in rows]
    )
    return sheet
