"""Synthetic H&E-like slides with ground truth (procedural or real texture) for tests, the demo
and the benchmarks.
"""
