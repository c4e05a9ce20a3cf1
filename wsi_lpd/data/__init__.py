"""Training data and the patches stage: the patch-store builder
(:func:`wsi_lpd.data.patches.build_patch_store`, options
:class:`wsi_lpd.data.options.PatchesSection`), datasets over patch stores, train/validation splits,
class-balanced sampling, augmentation (stain included). Imports :mod:`wsi_lpd.slide`,
:mod:`wsi_lpd.formats` and top-level modules.
"""
