"""Show slides: id (as `wsi-lpd samples` and the QuPath scripts give it), vendor, backend, µm/px,
pyramid levels, bounds, objective, associated images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def slide_info(path: Path, slide_mpp: float | None = None) -> dict[str, Any]:
    """What ``wsi-lpd info`` prints, as a JSON-ready dict (sizes in px, resolutions in µm/px)."""
    from wsi_lpd.slide.reader import open_slide, slide_id_from_name

    with open_slide(path, mpp=slide_mpp) as wsi:
        return {
            "slide_id": slide_id_from_name(path),
            "path": str(path),  # as given (a symlink stays itself)
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
        f"slide id:   {info['slide_id']}",
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
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files (SVS, NDPI, MRXS, TIFF, OME-TIFF …).")
    ],
    slide_mpp: Annotated[
        float | None,
        typer.Option(help="Override the slides' level-0 µm/px.", show_default="from the file"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a list for several slides).")
    ] = False,
) -> None:
    infos = [slide_info(slide, slide_mpp) for slide in slides]
    if as_json:
        typer.echo(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    else:
        typer.echo("\n\n".join(_text(info) for info in infos))
