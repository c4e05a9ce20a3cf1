"""wsi-lpd: weakly supervised whole-slide tissue segmentation with learnable prototypes (LPD)."""

__version__ = "0.1.0"
