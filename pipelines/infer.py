"""Predict a whole slide with a trained model into an OME-Zarr mosaic (probabilities + labels)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines._common import (
    file_checksum,
    load_config_section,
    merge_options,
    one_line_errors,
    setup_logging,
    write_run_metadata,
)

DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "batch_size": 16,
    "workers": 2,
    "overlap": 0.25,
    "blend": "gaussian",
    "sigma_frac": 0.125,
    "output_mpp": None,
    "amp": "auto",
    "tissue_mpp": 8.0,
    "slide_mpp": None,
}


def _options(config: Path | None, **flags: Any) -> dict[str, Any]:
    """Defaults < config section ``infer`` < flags; unknown config keys are refused."""

    section = load_config_section(config, "infer", DEFAULTS)
    return {**DEFAULTS, **merge_options(section, **flags)}


def _write_run_json(out: Path, slide_id: str, **payload: Any) -> Path:
    """``write_run_metadata`` into a temporary folder, then renamed to ``{slide_id}.run.json``."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(dir=out, prefix=f".{slide_id}.run-") as tmp:
        path = write_run_metadata(tmp, **payload)
        final = out / f"{slide_id}.run.json"
        os.replace(path, final)
    return final


@one_line_errors
def command(
    slide: Annotated[Path, typer.Argument(help="Whole-slide image (SVS, NDPI, MRXS, TIFF, …).")],
    model: Annotated[Path, typer.Option(help="Trained model.pt.")],
    out: Annotated[Path, typer.Option(help="Output directory for {slide_id}.ome.zarr.")],
    slide_id: Annotated[str | None, typer.Option(help="Slide id (default: file stem).")] = None,
    tiles: Annotated[
        Path | None, typer.Option(help="Tile directory of `wsi-lpd tile` (its tissue.geojson).")
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Override the slide's level-0 µm/px.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass.")] = None,
    workers: Annotated[int | None, typer.Option(help="Slide-reading worker processes.")] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Window overlap fraction in [0, 1).")
    ] = None,
    blend: Annotated[str | None, typer.Option(help="Overlap weights: gaussian or cosine.")] = None,
    output_mpp: Annotated[
        float | None, typer.Option(help="Mosaic µm/px (default: the model's output resolution).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (section `infer`).")] = None,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Predict a whole slide with a trained model into an OME-Zarr mosaic."""
    setup_logging(verbose)
    started = time.time()
    import logging

    from wsi_lpd.device import resolve_device
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.inference import check_contract, infer_slide
    from wsi_lpd.model.checkpoint import checkpoint_sha256, load_model
    from wsi_lpd.slide import default_slide_id, open_slide, validate_slide_id
    from wsi_lpd.tissue import detect_tissue, read_tissue_geojson

    log = logging.getLogger("wsi_lpd.infer")
    opts = _options(
        config,
        slide_mpp=slide_mpp,
        device=device,
        batch_size=batch_size,
        workers=workers,
        overlap=overlap,
        blend=blend,
        output_mpp=output_mpp,
    )
    wsi = open_slide(slide, mpp=opts["slide_mpp"])
    sid = validate_slide_id(slide_id or default_slide_id(slide))
    dev = resolve_device(opts["device"])
    net, contract = load_model(model, dev)
    check_contract(contract, wsi.mpp, source=str(model))  # fail before tissue detection
    sha = checkpoint_sha256(model)
    tissue_source = "detected"
    if tiles is not None:
        tissue_file = tiles / "tissue.geojson"
        if not tissue_file.is_file():
            raise ConfigError(f"{tissue_file}: tissue GeoJSON not found in the tile directory")
        tissue = read_tissue_geojson(tissue_file)
        tissue_source = str(tissue_file)
    else:
        tissue = detect_tissue(wsi, mpp=float(opts["tissue_mpp"]))
    out.mkdir(parents=True, exist_ok=True)
    result = infer_slide(
        wsi,
        net,
        contract,
        out / f"{sid}.ome.zarr",
        tissue=tissue,
        overlap=float(opts["overlap"]),
        blend=str(opts["blend"]),
        sigma_frac=float(opts["sigma_frac"]),
        output_mpp=None if opts["output_mpp"] is None else float(opts["output_mpp"]),
        batch_size=int(opts["batch_size"]),
        workers=int(opts["workers"]),
        device=dev,
        amp=opts["amp"],
        progress=True,
        slide_id=sid,
        model_sha256=sha,
    )
    _write_run_json(
        out,
        sid,
        stage="infer",
        parameters={**opts, **result.parameters, "tissue": tissue_source},
        inputs={
            "slide": str(slide),
            "slide_sha256_first_mib": file_checksum(slide),
            "slide_mpp": wsi.mpp,
            "slide_dimensions": list(wsi.dimensions),
            "model": str(model),
            "model_sha256": sha,
            "tiles": str(tiles) if tiles else None,
        },
        started=started,
        outputs={"mosaic": str(result.mosaic_path)},
        throughput_windows_per_s=round(result.windows_per_s, 2),
        peak_rss_mib=round(result.peak_rss_mib, 1),
        cuda_peak_mib=None if result.cuda_peak_mib is None else round(result.cuda_peak_mib, 1),
        result=result.to_dict(),
    )
    log.info("%s: wrote %s", sid, result.mosaic_path)
