"""Prompt values drawn per sample: clinical-report-style prompts at generation.

An adapter trained with a caption template over schema columns (``train_lora.py
--caption_template "fetal head, {trimester}, HC {head_circumference_mm:.0f} mm"``)
learned to follow those values in its prompt. ``generate text2img --prompt_values``
fills the same template for every sample:

- ``real``: each sample draws one row of its view from the adapter's training data, so
  the values follow their real joint distribution (HC with trimester, say);
- ``FIELD=LOW:HIGH`` (uniform) or ``FIELD=VALUE``, comma-separated: those fields from
  the user's range instead; any other field of the template still comes from the drawn
  row.

A sample's values are a function of (cohort seed, sample index) only, and are recorded
in its provenance (``prompt_values``) beside its prompt.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusynth.core.errors import UserInputError

FLAG = "--prompt_values"
REAL = "real"
#: Salt of the per-sample draw (sample seeds and mask draws use others).
_SALT = 15485863


def template_fields(template: str, flag: str) -> list[str]:
    """The placeholders of a caption template, in order.

    Raises:
        UserInputError: a malformed template, naming ``flag``.
    """
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UserInputError(f"{flag}: {template!r} is not a valid template ({exc})") from exc
    if any(not n.isidentifier() for n in names):
        raise UserInputError(f"{flag}: {template!r} has a placeholder that is not a field name")
    return list(dict.fromkeys(names))


def parse_prompt_values(text: str) -> dict[str, tuple[float, float]]:
    """``real`` (no range: every value from a real row) or ``FIELD=LOW:HIGH,...``.

    Raises:
        UserInputError: naming ``--prompt_values`` and the part that is wrong.
    """
    text = text.strip()
    if text == REAL:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            nums = [float(x) for x in value.split(":")] if sep else []
        except ValueError:
            nums = []
        if not name.isidentifier() or len(nums) not in (1, 2) or nums[0] > nums[-1]:
            raise UserInputError(
                f"{FLAG}: give 'real' or FIELD=LOW:HIGH / FIELD=VALUE, comma-separated "
                f"(e.g. head_circumference_mm=150:300), got {part.strip()!r}"
            )
        if name in out:
            raise UserInputError(f"{FLAG}: {name} given twice")
        if name == "trimester" and (len(set(nums)) != 1 or nums[0] not in (1.0, 2.0, 3.0)):
            raise UserInputError(f"{FLAG}: trimester takes one value, 1, 2 or 3, got {value!r}")
        out[name] = (nums[0], nums[-1])
    return out


class PromptSampler:
    """Draws each sample's prompt values and renders its prompt.

    Args:
        spec: ``--prompt_values``.
        template: the caption template (the adapter's, or ``--prompt_template``).
        train_data: the adapter's training data ``DIR[:split]`` (None: not recorded).
        views: the requested views.
        cohort_seed: the cohort's seed.

    Raises:
        UserInputError: a template without schema fields, a range for a field the
            template does not use, no training data where real values are needed, or
            training data without the view or the field.
    """

    def __init__(
        self,
        spec: str,
        template: str,
        train_data: str | None,
        views: Sequence[str],
        cohort_seed: int,
    ) -> None:
        self.spec = spec
        self.ranges = parse_prompt_values(spec)
        self.template = template
        self.cohort_seed = cohort_seed
        self.fields = [f for f in template_fields(template, FLAG) if f != "view"]
        if not self.fields:
            raise UserInputError(
                f"{FLAG}: the prompt template {template!r} names no field besides {{view}}: "
                "there is nothing to draw (train with a --caption_template over schema "
                "columns, or give --prompt_template)"
            )
        for name in self.ranges:
            if name not in self.fields:
                raise UserInputError(
                    f"{FLAG}: {name} is not in the prompt template {template!r} "
                    f"(its fields: {', '.join(self.fields)})"
                )
        from_rows = [f for f in self.fields if f not in self.ranges]
        self.pool: dict[str, list[dict[str, Any]]] | None = None
        if from_rows:
            if not train_data:
                raise UserInputError(
                    f"{FLAG}: the adapter records no training data to draw "
                    f"{', '.join(from_rows)} from; give FIELD=LOW:HIGH for each"
                )
            self.pool = _pool(train_data, views, from_rows)
        for view in views:  # the template renders for each view, before anything is made
            try:
                self.draw(view, 0)
            except UserInputError as exc:
                raise UserInputError(f"{FLAG}: {exc}") from exc

    def fingerprint(self) -> dict[str, Any]:
        """What determines the drawn values, for the cohort's request."""
        fp: dict[str, Any] = {"prompt_values": self.spec, "prompt_template": self.template}
        if self.pool is not None:
            used = {v: [_used(r, self.fields) for r in rows] for v, rows in self.pool.items()}
            data = json.dumps(used, sort_keys=True, separators=(",", ":")).encode()
            fp["prompt_value_pool_sha256"] = hashlib.sha256(data).hexdigest()
        return fp

    def draw(self, view: str, index: int) -> tuple[str, dict[str, Any]]:
        """Sample ``index``'s prompt and the values it was rendered with."""
        from fusynth.diffusion.dataset import caption_for

        rng = np.random.default_rng([self.cohort_seed, index, _SALT])
        row: dict[str, Any] = {"view": view, "subject_id": None}
        prov: dict[str, Any] = {}
        if self.pool is not None:
            rows = self.pool[view]
            row = dict(rows[int(rng.integers(len(rows)))])
            prov = json.loads(row.get("provenance") or "{}")
        for name, (low, high) in sorted(self.ranges.items()):
            value = low if low == high else float(rng.uniform(low, high))
            if name == "trimester":
                prov["trimester"] = int(value)
            else:
                row[name] = value
        prompt = caption_for(view, prov, self.template, None, FLAG, row)
        values = {
            f: (prov.get("trimester") if f == "trimester" else row.get(f)) for f in self.fields
        }
        return prompt, values


def _used(row: dict[str, Any], fields: Sequence[str]) -> list[Any]:
    prov = json.loads(row.get("provenance") or "{}")
    return [prov.get("trimester") if f == "trimester" else row.get(f) for f in fields]


def _pool(
    train_data: str, views: Sequence[str], fields: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The small columns of the training rows of each view that have every one of
    ``fields`` (images are not decoded)."""
    from fusynth.data.schema import VIEWS, load_split, with_default_split

    spec = with_default_split(train_data, "train")
    try:
        ds = load_split(spec)
    except UserInputError as exc:
        raise UserInputError(f"{FLAG}: the adapter's training data: {exc}") from exc
    small = ds.remove_columns([c for c in ("image", "mask") if c in ds.column_names])
    pool: dict[str, list[dict[str, Any]]] = {v: [] for v in views}
    for row in small:
        view = VIEWS[row["view"]]
        if view in pool and all(v is not None for v in _used(row, fields)):
            pool[view].append({**row, "view": view})
    for view, rows in pool.items():
        if not rows:
            raise UserInputError(
                f"{FLAG}: the adapter's training data {spec} has no {view!r} sample with "
                f"{', '.join(fields)} to draw from"
            )
    return pool
