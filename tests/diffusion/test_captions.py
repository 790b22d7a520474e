"""Captions from a template over any schema column (biometry-conditioned prompts)."""

from __future__ import annotations

import pytest

from fusynth.core.errors import UserInputError
from fusynth.diffusion.dataset import caption_for

ROW = {"view": 6, "subject_id": "p1", "head_circumference_mm": 172.4, "pixel_spacing_mm": 0.12,
       "center": "NL", "image": b"", "mask": None, "provenance": "{}"}  # fmt: skip


def test_template_over_schema_columns_with_format_specs():
    template = "fetal {view}, {trimester}, HC {head_circumference_mm:.0f} mm, {center}"
    caption = caption_for("head", {"trimester": 2}, template, None, "--captions", ROW)
    assert caption == "fetal head, second trimester, HC 172 mm, NL"


def test_missing_values_and_unknown_fields_name_the_problem():
    with pytest.raises(UserInputError, match="sample \\(p2\\) has no head_circumference_mm"):
        caption_for("head", {}, "HC {head_circumference_mm:.0f}", None, "x",
                    {**ROW, "subject_id": "p2", "head_circumference_mm": None})  # fmt: skip
    with pytest.raises(UserInputError, match="\\{gestational_age\\} is not a schema column"):
        caption_for("head", {}, "{gestational_age}", None, "x", ROW)
    with pytest.raises(UserInputError, match="is not a schema column"):
        caption_for("head", {}, "{image}", None, "x", ROW)
