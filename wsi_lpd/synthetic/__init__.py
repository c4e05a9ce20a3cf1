"""Synthetic H&E-like slides with ground truth (procedural or real texture) for tests, the demo
and the benchmarks (stage entry point :func:`wsi_lpd.synthetic.stage.write_synthetic_cohort`,
options :class:`wsi_lpd.synthetic.options.SynthSection`). Imports :mod:`wsi_lpd.data`,
:mod:`wsi_lpd.formats`.
"""
