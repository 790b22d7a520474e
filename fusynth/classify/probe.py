"""The supervised reference for zero-shot CLIP: a linear probe on frozen CLIP features.

``fusynth evaluate classification --linear_probe`` embeds the ``--train`` images with an
open_clip image tower (a model name with ``--pretrained``, or a ``recipes/train_clip.py``
folder), fits a multinomial logistic regression on the L2-normalised features (L2
penalty ``--probe_l2``, full-batch L-BFGS, deterministic), and writes the same report as
every other view classifier for ``--data``. Where a zero-shot head has only the prompts,
the probe has the labels: the distance between the two is what better captions or
tuning could still win.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusynth.core.errors import UserInputError

#: L-BFGS iterations of the probe (the problem is convex and small: it converges).
MAX_ITER = 500


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``softmax(x W + b)`` by full-batch L-BFGS.

    Args:
        features: ``[N, D]`` float.
        labels: ``[N]`` int class ids.
        num_classes: C.
        l2: penalty ``l2 * ||W||^2 / 2`` added to the mean cross-entropy.

    Returns:
        ``(W [D, C], b [C])``.
    """
    x = features.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=MAX_ITER, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, labels) + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def evaluate_linear_probe(
    model: str,
    pretrained: str | None,
    train: str,
    data: str,
    out: str | os.PathLike,
    l2: float = 1e-3,
    metrics: str | Sequence[str] = ("standard",),
    views: str | Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    n_boot: int = 1000,
    legacy_batch_size: int = 24,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a linear probe on CLIP features of ``train`` and evaluate it on ``data``.

    Args:
        model: an open_clip model name, ``local-dir:``/``hf-hub:`` source, or a
            ``recipes/train_clip.py`` output folder.
        pretrained: its weights (tag or file; None for random init or a folder).
        train: labelled images the probe is fitted on, ``DIR[:split]``; no subject may
            also be in ``data``.
        data: the evaluation images, ``DIR[:split]``.
        out: the report folder.
        l2: the probe's L2 penalty.
        metrics, views, batch_size, seed, n_boot, legacy_batch_size, overwrite: as
            :func:`fusynth.classify.evaluate.evaluate_classification`.

    Returns:
        The content of ``metrics.json``, with ``out``.

    Raises:
        UserInputError: bad settings, an unloadable model, fewer than two views in
            ``train``, ``data`` with a view ``train`` lacks, or a shared subject.
    """
    from fusynth.classify.evaluate import _finish, _request, check_known_views
    from fusynth.data.schema import VIEWS
    from fusynth.data.splits import check_disjoint_subjects
    from fusynth.data.views import load_view_set
    from fusynth.embed.clip import load_clip

    req = _request(metrics, views, batch_size, seed, n_boot, legacy_batch_size, out, overwrite)
    if not l2 >= 0:
        raise UserInputError(f"--probe_l2: must be >= 0, got {l2}")
    fit = load_view_set(train, "--train", req.views)
    vs = load_view_set(data, "--data", req.views)
    classes = [v for v in VIEWS if v in fit.view_counts]
    if len(classes) < 2:
        raise UserInputError(f"--train: {train} has only view {classes[0]}; a probe needs two")
    check_known_views(vs, classes, f"linear probe fitted on {train}", "--data")
    check_disjoint_subjects(
        fit.subjects, vs.subjects, f"--data: {data}", f"the probe's --train {train}",
        "fit the probe on a patient-disjoint split such as DIR:train",
    )  # fmt: skip
    clip = load_clip(model, pretrained, "--model", "--pretrained")
    clip.model.to("cuda" if torch.cuda.is_available() else "cpu")
    x_fit = clip.encode_images(fit.images, batch_size)
    y_fit = torch.tensor([classes.index(v) for v in fit.views])
    w, b = fit_linear_probe(x_fit, y_fit, len(classes), l2)
    x = clip.encode_images(vs.images, batch_size).double()
    probs = torch.softmax(x @ w + b, dim=1).numpy().astype(np.float64)
    setup = {
        "what": "linear-probe",
        "model": clip.name,
        "pretrained": pretrained,
        "smoke_model": clip.smoke,
        "probe_train": train,
        "probe_train_images": len(fit),
        "probe_l2": l2,
        "image_size": clip.image_size,
    }
    return _finish(req, vs, classes, probs, setup, data)
