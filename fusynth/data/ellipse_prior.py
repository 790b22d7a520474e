"""A distribution of head ellipses fitted to training masks, to draw new head masks.

Drawing new ellipses, rather than reusing the few real masks, keeps a synthetic cohort
from being copies of a handful of outlines. Each ellipse is described relative to its
frame, ``(cx / W, cy / H, log(a / S), log(b / a))`` with ``S = sqrt(W * H)``, and those
four numbers get a Gaussian (mean and covariance); the orientation is drawn from the
observed angles with a small jitter, since it is circular and often bimodal. Groups
(e.g. trimesters, when the data records them) get their own distribution.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusynth.core.errors import UserInputError
from fusynth.data.geometry import Ellipse, boundary_points, ellipse_mask, fit_ellipse

ALL = "all"


def ellipse_features(ellipse: Ellipse, shape: tuple[int, int]) -> np.ndarray:
    """The four frame-relative numbers the prior models."""
    h, w = shape
    s = math.sqrt(w * h)
    return np.array(
        [ellipse.cx / w, ellipse.cy / h, math.log(ellipse.a / s), math.log(ellipse.b / ellipse.a)]
    )


def mask_ellipse(mask: np.ndarray) -> Ellipse:
    """The ellipse fitted to a filled mask's boundary."""
    return fit_ellipse(boundary_points(np.asarray(mask) > 0))


@dataclass
class GroupPrior:
    """Gaussian over the four features plus the observed angles of one group."""

    mean: list[float]
    cov: list[list[float]]
    angles: list[float]
    n: int


@dataclass
class EllipsePrior:
    """Per-group ellipse distributions (``all`` always present)."""

    groups: dict[str, GroupPrior] = field(default_factory=dict)
    angle_jitter: float = 0.1

    def sample(
        self, rng: np.random.Generator, shape: tuple[int, int], group: str | None = None
    ) -> tuple[np.ndarray, Ellipse]:
        """Draw a filled ``[H, W]`` uint8 mask and its ellipse for a frame of ``shape``.

        Draws whose centre falls outside the frame are redrawn (up to 100 times), so the
        head is always at least partly visible, as in the data.

        Raises:
            UserInputError: unknown group.
        """
        key = group or ALL
        if key not in self.groups:
            raise UserInputError(
                f"--group: no ellipse prior for {key!r} (have: {', '.join(self.groups)})"
            )
        g = self.groups[key]
        h, w = shape
        s = math.sqrt(w * h)
        for _ in range(100):
            f = rng.multivariate_normal(np.asarray(g.mean), np.asarray(g.cov))
            angle = float(g.angles[rng.integers(len(g.angles))] + rng.normal(0, self.angle_jitter))
            a = math.exp(f[2]) * s
            b = a * min(math.exp(f[3]), 1.0)
            ell = Ellipse(cx=f[0] * w, cy=f[1] * h, a=a, b=b, angle=angle % math.pi)
            if 0 <= ell.cx < w and 0 <= ell.cy < h and ell.b >= 2:
                mask = ellipse_mask(shape, ell).astype(np.uint8)
                if mask.any():
                    return mask, ell
        raise RuntimeError("the ellipse prior keeps drawing heads outside the frame")

    def sample_hc(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int],
        hc_mm: float,
        spacing_mm: float,
        group: str | None = None,
    ) -> tuple[np.ndarray, Ellipse]:
        """Draw a head whose circumference is ``hc_mm`` at ``spacing_mm`` per pixel.

        Position, orientation and aspect ratio come from the prior (:meth:`sample`); the
        size is set so that the ellipse's Ramanujan perimeter times the spacing is the
        asked HC, so a pair made from the mask has an HC known by construction. Heads
        that would leave the frame are redrawn.

        Raises:
            UserInputError: a non-positive HC or spacing, or an HC too large for the frame
                at that spacing.
        """
        from fusynth.data.geometry import ramanujan_perimeter

        if not (hc_mm > 0 and spacing_mm > 0):
            raise UserInputError(
                f"--hc_mm/--pixel_spacing_mm: must be positive, got {hc_mm} and {spacing_mm}"
            )
        h, w = shape
        target = hc_mm / spacing_mm  # perimeter in pixels
        for _ in range(100):
            _, ell = self.sample(rng, shape, group)
            k = target / ramanujan_perimeter(ell.a, ell.b)
            ell = Ellipse(cx=ell.cx, cy=ell.cy, a=ell.a * k, b=ell.b * k, angle=ell.angle)
            # Whole head inside the frame: the bounding box of the rotated ellipse.
            c, s_ = math.cos(ell.angle), math.sin(ell.angle)
            half_w = math.hypot(ell.a * c, ell.b * s_)
            half_h = math.hypot(ell.a * s_, ell.b * c)
            if half_w * 2 > w or half_h * 2 > h:
                continue
            cx = min(max(ell.cx, half_w), w - 1 - half_w)
            cy = min(max(ell.cy, half_h), h - 1 - half_h)
            ell = Ellipse(cx=cx, cy=cy, a=ell.a, b=ell.b, angle=ell.angle)
            return ellipse_mask(shape, ell).astype(np.uint8), ell
        raise UserInputError(
            f"--hc_mm: a head of {hc_mm} mm at {spacing_mm} mm/pixel ({target:.0f} px around) "
            f"does not fit a {w}x{h} frame"
        )

    def to_json(self) -> str:
        """Serialise (for ``provenance`` and for reuse)."""
        return json.dumps(
            {
                "angle_jitter": self.angle_jitter,
                "groups": {k: vars(v) for k, v in self.groups.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> EllipsePrior:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls({k: GroupPrior(**v) for k, v in data["groups"].items()}, data["angle_jitter"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the prior as JSON."""
        from fusynth.core.io import atomic_write_bytes

        return atomic_write_bytes(path, self.to_json().encode())


def fit_ellipse_prior(
    masks: Iterable[tuple[np.ndarray, str | None]], min_per_group: int = 5
) -> EllipsePrior:
    """Fit the prior to filled masks.

    Args:
        masks: ``(mask, group)`` pairs; ``group`` may be None (e.g. trimester "2").
        min_per_group: groups with fewer masks are folded into ``all`` only.

    Raises:
        UserInputError: fewer than 3 masks in all.
    """
    feats: dict[str, list[np.ndarray]] = {}
    angles: dict[str, list[float]] = {}
    for mask, group in masks:
        ell = mask_ellipse(mask)
        f = ellipse_features(ell, mask.shape)
        for key in {ALL, str(group)} if group is not None else {ALL}:
            feats.setdefault(key, []).append(f)
            angles.setdefault(key, []).append(ell.angle)
    if len(feats.get(ALL, [])) < 3:
        raise UserInputError("--masks_from: need at least 3 masks to fit an ellipse distribution")
    groups = {}
    for key, rows in feats.items():
        if key != ALL and len(rows) < min_per_group:
            continue
        x = np.stack(rows)
        # A small ridge keeps the covariance usable with few masks.
        cov = np.cov(x, rowvar=False) + np.eye(4) * 1e-5
        groups[key] = GroupPrior(x.mean(axis=0).tolist(), cov.tolist(), angles[key], len(rows))
    return EllipsePrior(groups)
