"""Datasets: the sample schema, readers for public layouts, the phantom, splits."""

from fusynth.data.schema import FEATURES, SPLITS, VIEWS, load_prepared, load_split

__all__ = ["FEATURES", "SPLITS", "VIEWS", "load_prepared", "load_split"]
