"""The best and worst overlay figures of ``fusynth evaluate segmentation``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusynth.core.style import png_text
from fusynth.data.geometry import Ellipse, ellipse_mask
from fusynth.segment.data import SegSample
from fusynth.segment.evaluate import Prediction
from fusynth.segment.overlays import _Examples


def _prediction(i: int) -> Prediction:
    mask = ellipse_mask((40, 48), Ellipse(24, 20, 10 + i % 3, 8, 0.2 * i))
    rng = np.random.default_rng(i)
    sample = SegSample(
        key=f"img{i:02d}",
        image=rng.integers(0, 255, (40, 48), dtype=np.uint8),
        mask=mask,
        subject_id=f"s{i}",
        synthetic=False,
        pixel_spacing_mm=None,
        head_circumference_mm=None,
    )
    return Prediction(i, sample, 0, 0, np.array([10, 8, 38, 32]), np.roll(mask, i, axis=1))


def _offer(dice: list[float], k: int) -> _Examples:
    examples = _Examples(k)
    for i, d in enumerate(dice):
        examples.offer(d, _prediction(i))
    return examples


@pytest.mark.parametrize(
    ("dice", "k", "shown"),
    [
        ([0.1 * i for i in range(10)], 4, 4),  # enough images: k each
        ([0.9, 0.2, 0.5, 0.7, 0.1, 0.3], 4, 3),  # fewer than 2k: half each
        ([0.5] * 8, 4, 4),  # ties: still different images
        ([0.4, 0.6], 4, 1),
    ],
)
def test_best_and_worst_are_different_images(dice, k, shown):
    worst, best = _offer(dice, k).chosen()
    assert len(worst) == len(best) == shown
    assert not {p.index for _, p in worst} & {p.index for _, p in best}
    # Every worst image scores no higher than every best one.
    assert max(d for d, _ in worst) <= min(d for d, _ in best)


def test_a_single_image_is_shown_in_both():
    worst, best = _offer([0.7], 4).chosen()
    assert [p.index for _, p in worst] == [p.index for _, p in best] == [0]


def test_overlay_figures_explain_their_colours(tmp_path):
    examples = _offer([0.1 * i for i in range(10)], 3)
    examples.write(tmp_path)
    for name, lowest in (("worst", "Lowest"), ("best", "Highest")):
        path = tmp_path / f"{name}.png"
        with Image.open(path) as im:
            assert im.width >= 3 * 256 and im.height >= 256
        text = png_text(path)
        assert text["Title"] == f"{lowest} Dice: 3 of 10 images, box prompt jittered by 0 px"
        for entry in ("ground truth", "prediction", "box prompt"):
            assert entry in text["Description"]
    worst = png_text(tmp_path / "worst.png")["Description"]
    assert "img00 Dice 0.000" in worst and "img09" not in worst
    assert "img09 Dice 0.900" in png_text(tmp_path / "best.png")["Description"]


def test_no_examples_asked_writes_nothing(tmp_path):
    _offer([0.5, 0.6], 0).write(tmp_path / "o")
    assert not (tmp_path / "o").exists()
