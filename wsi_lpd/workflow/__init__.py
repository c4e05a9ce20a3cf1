"""The cohort workflow's library side: typed workflow config, sample sheet and results layout,
and the run report. The top layer below the CLI: may import every domain package.
"""
