"""Training data: datasets over patch stores, train/validation splits, class-balanced sampling,
augmentation (stain included). Imports :mod:`wsi_lpd.formats` and top-level modules.
"""
