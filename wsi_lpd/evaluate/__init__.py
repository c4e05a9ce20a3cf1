"""Evaluation: segmentation metrics and scoring mosaics or models against ground truth."""
