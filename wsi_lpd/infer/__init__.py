"""Whole-slide inference: overlapping windows at the model's mpp, blended into an OME-Zarr mosaic.
Imports :mod:`wsi_lpd.slide`, :mod:`wsi_lpd.formats`, :mod:`wsi_lpd.networks`.
"""
