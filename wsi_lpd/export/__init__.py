"""Export (stage entry point :func:`wsi_lpd.export.stage.export_mosaic`, options
:class:`wsi_lpd.export.options.ExportSection`): mosaic labels vectorised into QuPath polygons (dask
over blocks) and overlay PNGs. Imports :mod:`wsi_lpd.slide`, :mod:`wsi_lpd.formats`.
"""
