"""The infer stage: one slide and a trained ``model.pt`` into an OME-Zarr mosaic.

:func:`infer_slide` writes ``{slide_id}.ome.zarr`` and ``{slide_id}.run.json`` into a folder; its
options are one :class:`~wsi_lpd.infer.options.InferSection`. Tissue comes from a tile directory
(its ``tissue.geojson``) or is detected with the given
:class:`~wsi_lpd.slide.options.TissueOptions` (the workflow's ``tile:`` settings).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from wsi_lpd.classes import ClassList
from wsi_lpd.device import resolve_device
from wsi_lpd.errors import ConfigError
from wsi_lpd.infer.inference import InferenceResult, check_contract, predict_slide
from wsi_lpd.infer.options import InferSection
from wsi_lpd.networks.checkpoint import checkpoint_sha256, load_model
from wsi_lpd.run_metadata import sha256_first_mib, write_run_metadata
from wsi_lpd.slide.options import TissueOptions
from wsi_lpd.slide.reader import default_slide_id, open_slide, validate_slide_id
from wsi_lpd.slide.tissue import detect_tissue, read_tissue_geojson

log = logging.getLogger("wsi_lpd.infer")


def infer_slide(
    slide_path: str | os.PathLike,
    model_path: str | os.PathLike,
    opts: InferSection,
    out: str | os.PathLike,
    *,
    slide_id: str | None = None,
    tiles: str | os.PathLike | None = None,
    tissue: TissueOptions | None = None,
    expected_classes: ClassList | None = None,
    config: str | os.PathLike | None = None,
    on_valid: Callable[[], None] | None = None,
) -> InferenceResult:
    """Predict the slide at ``slide_path`` with ``model_path`` into ``out/{slide_id}.ome.zarr``.

    ``tiles``: a ``wsi-lpd tile`` folder whose ``tissue.geojson`` is used; otherwise tissue is
    detected with ``tissue`` (defaults: :class:`TissueOptions`; ``opts.tissue_mpp`` overrides its
    µm/px). ``expected_classes`` (from ``config``, the workflow YAML, recorded in run.json) must
    equal the model's. ``on_valid`` is called once the inputs are checked."""
    started = time.time()
    slide_path, model_path, out = Path(slide_path), Path(model_path), Path(out)
    sid = validate_slide_id(slide_id or default_slide_id(slide_path))
    wsi = open_slide(slide_path, mpp=opts.slide_mpp)
    dev = resolve_device(opts.device)
    net, contract = load_model(model_path, dev)
    # fail before tissue detection: classes (names, order) and resolution
    check_contract(
        contract, wsi.mpp, expected_classes, source=str(model_path), expected_source=str(config)
    )
    if on_valid is not None:
        on_valid()
    sha = checkpoint_sha256(model_path)
    tissue_source = "detected"
    if tiles is not None:
        tissue_file = Path(tiles) / "tissue.geojson"
        if not tissue_file.is_file():
            raise ConfigError(f"{tissue_file}: tissue GeoJSON not found in the tile directory")
        region = read_tissue_geojson(tissue_file)
        tissue_source = str(tissue_file)
    else:
        detection = tissue or TissueOptions()
        if opts.tissue_mpp is not None:
            detection = detection.model_copy(update={"tissue_mpp": opts.tissue_mpp})
        region = detect_tissue(wsi, detection)
    out.mkdir(parents=True, exist_ok=True)
    result = predict_slide(
        wsi,
        net,
        contract,
        out / f"{sid}.ome.zarr",
        opts,
        tissue=region,
        device=dev,
        progress=True,
        slide_id=sid,
        model_sha256=sha,
    )
    write_run_metadata(
        out / f"{sid}.run.json",
        "infer",
        parameters={**opts.model_dump(), **result.parameters, "tissue": tissue_source},
        inputs={
            "slide": str(slide_path.resolve()),
            "slide_sha256_first_mib": sha256_first_mib(slide_path),
            "slide_mpp": wsi.mpp,
            "slide_dimensions": list(wsi.dimensions),
            "model": str(model_path.resolve()),
            "model_sha256": sha,
            "tiles": str(tiles) if tiles else None,
            "config": str(config) if config else None,
        },
        started=started,
        outputs={"mosaic": str(result.mosaic_path)},
        throughput_windows_per_s=round(result.windows_per_s, 2),
        peak_rss_mib=round(result.peak_rss_mib, 1),
        cuda_peak_mib=None if result.cuda_peak_mib is None else round(result.cuda_peak_mib, 1),
        result=result.to_dict(),
    )
    log.info("%s: wrote %s", sid, result.mosaic_path)
    return result
