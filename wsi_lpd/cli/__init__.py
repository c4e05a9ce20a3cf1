"""The ``wsi-lpd`` command line: one subcommand per stage behind one error boundary
(:mod:`wsi_lpd.cli.app`).
"""
