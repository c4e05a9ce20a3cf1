"""Slides in µm: reading any slide (OpenSlide, tifffile), tissue masks, tile grids, thumbnails
with overlays and raster geometry. Imports only the top-level modules (errors, io, classes,
progress).
"""
