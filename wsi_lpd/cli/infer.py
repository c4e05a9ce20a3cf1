"""Predict a whole slide with a trained model into an OME-Zarr mosaic (probabilities + labels)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wsi_lpd.cli._common import (
    file_checksum,
    package_versions,
    section_with_flags,
    setup_logging,
)


def _options(config: Path | None, **flags: Any) -> Any:
    """Config section ``infer`` (typed, defaults on the model) overridden by the given flags."""
    from wsi_lpd.workflow.config import InferSection

    return section_with_flags(InferSection, config, "infer", **flags)


def _config_classes(config: Path | None) -> Any:
    """The workflow config's ``classes:`` (None when no config or no such section)."""
    from wsi_lpd.workflow.config import ClassesSection, load_section, read_yaml

    if config is None or not read_yaml(config).get("classes"):
        return None
    return load_section(ClassesSection, config, "classes").class_list()


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
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N] [auto].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass [16].")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Slide-reading worker processes [one per spare core, at most 4]."),
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(help="Batches queued per reading worker [4].")
    ] = None,
    decode: Annotated[
        str | None,
        typer.Option(
            help="JPEG decoding: cpu (slide reader), gpu (JPEG tiles decoded on the compute "
            "device), auto (gpu on CUDA for JPEG-tiled TIFF/SVS) [auto]."
        ),
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Window overlap, fraction of the window in [0, 1) [0.25].")
    ] = None,
    blend: Annotated[
        str | None, typer.Option(help="Overlap weights: gaussian or cosine [gaussian].")
    ] = None,
    output_mpp: Annotated[
        float | None, typer.Option(help="Mosaic µm/px [the model's output resolution].")
    ] = None,
    stain_normalise: Annotated[
        str | None,
        typer.Option(help="Stain normalisation per slide: none, reinhard or macenko [reinhard]."),
    ] = None,
    stain_reference_slide: Annotated[
        Path | None,
        typer.Option(help="Reference slide for --stain-normalise [the training patches]."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Workflow YAML: section `infer`; its `classes` must match the model."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Predict a whole slide with a trained model into an OME-Zarr mosaic."""
    started = time.time()
    import logging

    from wsi_lpd.device import resolve_device
    from wsi_lpd.errors import ConfigError
    from wsi_lpd.infer.inference import check_contract, infer_slide
    from wsi_lpd.infer.stain import slide_stain_transform
    from wsi_lpd.io import write_json
    from wsi_lpd.networks.checkpoint import checkpoint_sha256, load_model
    from wsi_lpd.slide.reader import default_slide_id, open_slide, validate_slide_id
    from wsi_lpd.slide.tissue import detect_tissue, read_tissue_geojson

    log = logging.getLogger("wsi_lpd.infer")
    opts = _options(
        config,
        slide_mpp=slide_mpp,
        device=device,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        decode=decode,
        overlap=overlap,
        blend=blend,
        output_mpp=output_mpp,
        stain_normalise=stain_normalise,
        stain_reference_slide=str(stain_reference_slide) if stain_reference_slide else None,
    )
    expected = _config_classes(config)
    sid = validate_slide_id(slide_id or default_slide_id(slide))
    wsi = open_slide(slide, mpp=opts.slide_mpp)
    dev = resolve_device(opts.device)
    net, contract = load_model(model, dev)
    # fail before tissue detection: classes (names, order) and resolution
    check_contract(contract, wsi.mpp, expected, source=str(model), expected_source=str(config))
    setup_logging(verbose)  # the inputs are valid: progress and INFO lines from here on
    sha = checkpoint_sha256(model)
    tissue_source = "detected"
    if tiles is not None:
        tissue_file = tiles / "tissue.geojson"
        if not tissue_file.is_file():
            raise ConfigError(f"{tissue_file}: tissue GeoJSON not found in the tile directory")
        tissue = read_tissue_geojson(tissue_file)
        tissue_source = str(tissue_file)
    else:
        tissue = detect_tissue(wsi, mpp=opts.tissue_mpp)
    stain = slide_stain_transform(
        wsi,
        opts.stain_normalise,
        contract,
        reference_slide=opts.stain_reference_slide,
        model_source=str(model),
    )
    out.mkdir(parents=True, exist_ok=True)
    result = infer_slide(
        wsi,
        net,
        contract,
        out / f"{sid}.ome.zarr",
        tissue=tissue,
        overlap=opts.overlap,
        blend=opts.blend,
        sigma_frac=opts.sigma_frac,
        output_mpp=opts.output_mpp,
        batch_size=opts.batch_size,
        workers=opts.workers,
        prefetch=opts.prefetch,
        decode=opts.decode,
        device=dev,
        amp=opts.amp,
        progress=True,
        slide_id=sid,
        model_sha256=sha,
        stain=stain,
    )
    write_json(
        out / f"{sid}.run.json",
        {
            "stage": "infer",
            "versions": package_versions(),
            "parameters": {**opts.model_dump(), **result.parameters, "tissue": tissue_source},
            "inputs": {
                "slide": str(Path(slide).resolve()),
                "slide_sha256_first_mib": file_checksum(slide),
                "slide_mpp": wsi.mpp,
                "slide_dimensions": list(wsi.dimensions),
                "model": str(Path(model).resolve()),
                "model_sha256": sha,
                "tiles": str(tiles) if tiles else None,
                "config": str(config) if config else None,
            },
            "wall_time_s": round(time.time() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": {"mosaic": str(result.mosaic_path)},
            "throughput_windows_per_s": round(result.windows_per_s, 2),
            "peak_rss_mib": round(result.peak_rss_mib, 1),
            "cuda_peak_mib": None
            if result.cuda_peak_mib is None
            else round(result.cuda_peak_mib, 1),
            "result": result.to_dict(),
        },
    )
    log.info("%s: wrote %s", sid, result.mosaic_path)
