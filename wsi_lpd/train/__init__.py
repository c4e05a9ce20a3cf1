"""Training: the one engine (loop, AMP, schedule, validation, resume, distributed), the methods,
their losses and the typed training config. Imports :mod:`wsi_lpd.data`, :mod:`wsi_lpd.networks`.
"""
