"""Export: mosaic labels vectorised into QuPath polygons (dask over blocks) and overlay PNGs.
Imports :mod:`wsi_lpd.slide`, :mod:`wsi_lpd.formats`.
"""
