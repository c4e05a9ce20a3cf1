"""The on-disk contracts between stages: patch stores, OME-Zarr mosaics, QuPath GeoJSON and
ground-truth label masks. Every reader validates what it opens. Imports only top-level modules.
"""
