"""Stage layer: one module per stage (file in, file out) and the ``wsi-lpd`` CLI."""
