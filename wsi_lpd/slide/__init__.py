"""Slides in µm: reading any slide (OpenSlide, tifffile), tissue detection, tile grids, raster
geometry, thumbnails with overlays, and the tile stage (:func:`wsi_lpd.slide.stage.tile_slide`,
options :class:`wsi_lpd.slide.options.TileSection`). Imports :mod:`wsi_lpd.formats` and top-level
modules.
"""
