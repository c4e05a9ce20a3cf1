"""Evaluation (stage entry point :func:`wsi_lpd.evaluate.stage.evaluate_to`, options
:class:`wsi_lpd.evaluate.options.EvaluateSection`): scoring mosaics or models against ground truth.
Imports :mod:`wsi_lpd.data`, :mod:`wsi_lpd.networks`, :mod:`wsi_lpd.slide`, :mod:`wsi_lpd.formats`.
"""
