"""Images with their view labels: loading with or without images, view lists, joining."""

from __future__ import annotations

import pytest

from fusynth.core.errors import UserInputError
from fusynth.data.views import load_view_set, parse_view_list


def test_labels_only_loading_matches_the_full_load(phantom_prepared):
    full = load_view_set(f"{phantom_prepared}:train", "--data", ["head", "femur"])
    labels = load_view_set(f"{phantom_prepared}:train", "--data", ["head", "femur"], images=False)
    assert len(labels) == len(full) > 0 and labels.images == []
    for name in ("views", "subjects", "centers", "synthetic", "keys"):
        assert getattr(labels, name) == getattr(full, name)
    assert labels.subset([1, 0]).subjects == [full.subjects[1], full.subjects[0]]
    with pytest.raises(UserInputError, match="--data: .* has no samples with views brain"):
        load_view_set(f"{phantom_prepared}:train", "--data", ["brain"], images=False)


def test_concat_keeps_order_and_names_the_source(phantom_prepared):
    a = load_view_set(f"{phantom_prepared}:train", "a")
    b = load_view_set(f"{phantom_prepared}:test", "b")
    ab = a.concat(b)
    assert ab.source == a.source and len(ab) == len(a) + len(b)
    assert ab.keys == a.keys + b.keys and ab.images[len(a)] is b.images[0]
    assert a.concat(b, source="both").source == "both"


def test_parse_view_list():
    assert parse_view_list(" head, femur,,", "--views") == ["femur", "head"]  # canonical order
    assert parse_view_list(["thorax", "abdomen"], "--views") == ["abdomen", "thorax"]
    assert parse_view_list(None, "--views") is None
    with pytest.raises(UserInputError, match="--views: give at least one view"):
        parse_view_list(" , ", "--views")
    with pytest.raises(UserInputError, match="--views: unknown view 'brian'"):
        parse_view_list("head,brian", "--views")
