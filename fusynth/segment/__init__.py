"""Segmentation with segment-anything: model building and loading, prompting, metrics."""
