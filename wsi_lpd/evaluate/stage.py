"""The evaluate stage: score mosaics (mode A) or a model (mode B) against ground truth.

:func:`evaluate_to` writes ``metrics.json``, ``metrics.md`` and ``run.json`` into one folder,
atomically; its options are one :class:`~wsi_lpd.evaluate.options.EvaluateSection`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsi_lpd.errors import ConfigError
from wsi_lpd.evaluate.evaluation import evaluate_model, evaluate_mosaics, metrics_report
from wsi_lpd.evaluate.options import EvaluateSection
from wsi_lpd.io import atomic_dir, write_json, write_text
from wsi_lpd.run_metadata import write_run_metadata


def evaluate_to(
    opts: EvaluateSection,
    out: str | os.PathLike,
    *,
    on_valid: Callable[[], None] | None = None,
) -> str:
    """Score ``opts.pred`` against ``opts.truth`` (mode A) or ``opts.model`` on ``opts.patches``
    / ``opts.bcss_dir`` (mode B) into the folder ``out``; returns the metrics table (text).

    ``on_valid`` is called once the options are checked."""
    started = time.time()
    mode_b = opts.model is not None
    if mode_b == bool(opts.pred):
        raise ConfigError("evaluate: give either --pred with --truth, or --model")
    if mode_b and (opts.patches is None) == (opts.bcss_dir is None):
        raise ConfigError("evaluate: --model needs exactly one of --patches or --bcss-dir")
    if on_valid is not None:
        on_valid()
    if opts.model is not None:
        evaluation = evaluate_model(
            Path(opts.model),
            patches=Path(opts.patches) if opts.patches else None,
            bcss_dir=Path(opts.bcss_dir) if opts.bcss_dir else None,
            split=opts.split,
            layout=opts.layout,
            label_mode=opts.label_mode,
            batch_size=opts.batch_size,
            device=opts.device,
        )
        inputs: dict[str, Any] = {
            k: getattr(opts, k) for k in ("model", "patches", "bcss_dir") if getattr(opts, k)
        }
    else:
        evaluation = evaluate_mosaics(
            [Path(p) for p in opts.pred], [Path(p) for p in opts.truth], opts.workers
        )
        inputs = {"pred": opts.pred, "truth": opts.truth}
    result, markdown, table = metrics_report(
        evaluation,
        opts.protocol,
        "model" if mode_b else "mosaic",
        opts.label_mode if mode_b else None,
    )
    parameters = {k: v for k, v in opts.model_dump().items() if k not in inputs and k != "pred"}
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_text(tmp / "metrics.md", markdown)
        write_run_metadata(tmp, "evaluate", parameters, inputs, started)
    return table
