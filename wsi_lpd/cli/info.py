"""Show a slide: vendor, backend, µm/px, pyramid levels, bounds, objective, associated images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def slide_info(path: Path, slide_mpp: float | None = None) -> dict[str, Any]:
    """What ``wsi-lpd info`` prints, as a JSON-ready dict (sizes in px, resolutions in µm/px)."""
    from wsi_lpd.slide.reader import open_slide

    with open_slide(path, mpp=slide_mpp) as wsi:
        return {
            "path": str(path.resolve()),
            "vendor": wsi.vendor,
            "backend": wsi.backend,
            "mpp": wsi.mpp,
            "mpp_source": "--slide-mpp" if slide_mpp is not None else "file",
            "objective_power": wsi.objective_power,
            "dimensions": list(wsi.dimensions),
            "bounds": list(wsi.bounds),
            "levels": [
                {"level": i, "width": w, "height": h, "downsample": ds, "mpp": wsi.mpp * ds}
                for i, ((w, h), ds) in enumerate(
                    zip(wsi.level_dimensions, wsi.level_downsamples, strict=True)
                )
            ],
            "associated_images": list(wsi.associated_images),
        }


def _text(info: dict[str, Any]) -> str:
    x, y, w, h = info["bounds"]
    objective = info["objective_power"]
    lines = [
        f"path:       {info['path']}",
        f"vendor:     {info['vendor']} (read with {info['backend']})",
        f"µm/px:      {info['mpp']:.4f} (from {info['mpp_source']})",
        f"objective:  {f'{objective:g}×' if objective else 'unknown'}",
        f"size:       {info['dimensions'][0]} × {info['dimensions'][1]} px (level 0)",
        f"bounds:     x={x} y={y} w={w} h={h} px"
        + ("" if (x, y) == (0, 0) else "  (cropped: QuPath coordinates start at x, y)"),
        "levels:",
    ]
    for lv in info["levels"]:
        lines.append(
            f"  {lv['level']}: {lv['width']} × {lv['height']} px, "
            f"downsample {lv['downsample']:.3f}, {lv['mpp']:.4f} µm/px"
        )
    lines.append(f"associated: {', '.join(info['associated_images']) or 'none'}")
    return "\n".join(lines)


def command(
    slide: Annotated[Path, typer.Argument(help="Slide file (SVS, NDPI, MRXS, TIFF, OME-TIFF …).")],
    slide_mpp: Annotated[
        float | None,
        typer.Option(help="Override the slide's level-0 µm/px.", show_default="from the file"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    info = slide_info(slide, slide_mpp)
    typer.echo(json.dumps(info, indent=2) if as_json else _text(info))
