"""Whole-slide inference (stage entry point :func:`wsi_lpd.infer.stage.infer_slide`, options
:class:`wsi_lpd.infer.options.InferSection`): overlapping windows at the model's mpp, blended into
an OME-Zarr mosaic. Imports :mod:`wsi_lpd.slide`, :mod:`wsi_lpd.formats`, :mod:`wsi_lpd.networks`.
"""
