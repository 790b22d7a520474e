"""Cohort audit: how far a synthetic cohort is from real data, and whether it copied.

Distribution distance: FID and KID (torchmetrics) between the cohort and a reference set,
per view present in both and over those views together, in the feature space of an
encoder named by a spec (``pixels``, ``clip:NAME[@PRETRAINED]``, ``ssl:DIR`` or
``inception:PATH``, a local torchvision Inception-v3 weights file). Every number is
stored with the sample counts and the feature dimension it was computed from: FID from
fewer samples than feature dimensions is biased and unstable, so it is marked unreliable
and KID, which is unbiased at any size, is the one to read.

Memorization: for each synthetic sample, the nearest training image by cosine
similarity of the encoder's features and by SSIM in pixel space (both padded to square
and resized to a common side). A sample at or above either threshold is flagged. A LoRA
trained on a few images per view can reproduce them; this says whether it did.

Everything goes to ``COHORT/audit/`` (or ``out``): ``cohort_audit.json`` (no timestamps,
so a rerun on the same inputs writes the same bytes), ``memorization.csv`` and
``closest_pairs.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth import __version__
from fusynth.audit.montage import write_montage
from fusynth.core.artifacts import AUDIT_DIR
from fusynth.core.artifacts import COHORT_AUDIT_FILE as AUDIT_FILE
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_write_bytes
from fusynth.core.traps import emit
from fusynth.data.transforms import square_batch
from fusynth.data.views import ViewSet, load_view_set
from fusynth.embed.base import Embedder

log = logging.getLogger(__name__)

MEMORIZATION_FILE = "memorization.csv"
MONTAGE_FILE = "closest_pairs.png"

#: torchmetrics' default KID subset size; smaller sets use their own size.
DEFAULT_KID_SUBSET_SIZE = 1000
#: Side of the images SSIM compares.
SSIM_SIZE = 64
#: Images per embedder call.
EMBED_BATCH = 64


# ----------------------------------------------------------------------------- encoders


def embed(embedder: Embedder, images: Sequence[np.ndarray]) -> np.ndarray:
    """Features of ``images`` (``[N, D]`` float64), in batches of :data:`EMBED_BATCH`."""
    parts = [embedder(images[i : i + EMBED_BATCH]) for i in range(0, len(images), EMBED_BATCH)]
    return np.concatenate(parts).astype(np.float64)


# ----------------------------------------------------------------------------- FID / KID


class Precomputed(torch.nn.Module):
    """The feature module torchmetrics' FID and KID call: features pass through.

    Each set is embedded once (the same features serve FID, KID per view and overall,
    and the memorization search), so what the metrics receive are ``[N, D]`` features
    already; ``num_features`` tells FID their dimension without a dummy forward pass.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``features`` (``[N, num_features]``) unchanged."""
        return features


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (torchmetrics), each with at least two rows.

    torchmetrics solves a ``D x D`` non-symmetric eigenproblem (a minute at D = 2048 on
    a small CPU) whatever the number of samples. With fewer samples than dimensions the
    features are first expressed in an orthonormal basis of the span of the centred
    samples: FID is unchanged by translating and rotating the feature space, and both
    covariances and the mean difference lie in that span, so the value is the same and
    the eigenproblem is at most ``(N_real + N_fake) x (N_real + N_fake)``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _sample_span(real, fake)
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    return float(metric.compute())


def _sample_span(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets, centred on their pooled mean, in coordinates of the span of the
    centred samples (unchanged when that span is not smaller than the feature space)."""
    pooled = np.concatenate([real, fake])
    centred = pooled - pooled.mean(axis=0)
    if len(pooled) >= pooled.shape[1]:
        return centred[: len(real)], centred[len(real) :]
    spanning = np.concatenate([real - real.mean(axis=0), fake - fake.mean(axis=0)])
    spanning = np.concatenate([spanning, (real.mean(axis=0) - fake.mean(axis=0))[None]])
    _, sv, vt = np.linalg.svd(spanning, full_matrices=False)
    rank = max(1, int((sv > sv.max(initial=0.0) * max(spanning.shape) * 1e-12).sum()))
    projected = centred @ vt[:rank].T
    return projected[: len(real)], projected[len(real) :]


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int, seed: int
) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets (torchmetrics).

    The subsets are drawn from torch's generator seeded with ``seed`` inside a forked
    RNG state, so the result is reproducible and the caller's RNG is untouched.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # "will save all extracted features": they are small
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size
        )
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def compare_sets(
    synthetic: np.ndarray,
    reference: np.ndarray,
    kid_subset_size: int | None,
    kid_subsets: int,
    seed: int,
) -> dict[str, Any]:
    """FID and KID of one pair of feature sets, with the counts they rest on.

    FID needs two samples per set; with fewer samples than feature dimensions it is
    still computed but marked unreliable. KID's subset size is the requested one (or
    torchmetrics' default of 1000) capped at the smaller set; when both sets are exactly
    that size every subset is the whole set, so one subset is drawn.
    """
    n_syn, n_ref, dim = len(synthetic), len(reference), synthetic.shape[1]
    smallest = min(n_syn, n_ref)
    entry: dict[str, Any] = {"n_synthetic": n_syn, "n_reference": n_ref, "feature_dim": dim}
    notes = []
    if smallest < 2:
        entry.update(fid=None, fid_reliable=False, kid_mean=None, kid_std=None)
        entry.update(kid_subset_size=None, kid_subsets=None, preferred=None)
        notes.append(f"{smallest} sample(s) in the smaller set: FID and KID need at least 2")
        entry["notes"] = notes
        return entry
    entry["fid"] = _round(frechet_distance(reference, synthetic))
    entry["fid_reliable"] = smallest > dim
    if smallest <= dim:
        notes.append(
            f"FID from {smallest} samples in {dim} dimensions is biased and unstable "
            "(singular covariance); read KID"
        )
    requested = kid_subset_size or DEFAULT_KID_SUBSET_SIZE
    size = min(requested, smallest)
    subsets = 1 if size == n_syn == n_ref else kid_subsets
    if size < requested:
        notes.append(f"KID subset size {size} (the smaller set), not {requested}")
    mean, std = kernel_distance(reference, synthetic, size, subsets, seed)
    entry.update(kid_mean=_round(mean), kid_std=_round(std), kid_subset_size=size)
    entry.update(kid_subsets=subsets, preferred="fid" if entry["fid_reliable"] else "kid")
    entry["notes"] = notes
    return entry


# ----------------------------------------------------------------------------- memorization


def nearest_by_cosine(query: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine similarity of each query row's most similar bank row."""
    q, b = _unit_rows(query), _unit_rows(bank)
    index = np.empty(len(q), dtype=np.int64)
    value = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), 1024):
        sim = q[start : start + 1024] @ b.T
        index[start : start + 1024] = sim.argmax(axis=1)
        value[start : start + 1024] = sim.max(axis=1)
    return index, np.clip(value, -1.0, 1.0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class SSIMBank:
    """SSIM of query images against every image of a bank, batched.

    The same index as torchmetrics' ``structural_similarity_index_measure`` with its
    defaults (11-tap Gaussian window, sigma 1.5, reflect padding, mean over the whole
    image, ``k1=0.01``, ``k2=0.03``) on images scaled to [0, 1]. Its one-pair-at-a-time
    convolutions take milliseconds per pair on a CPU; here the Gaussian window is a band
    matrix ``A`` (a local mean is ``A @ X @ A.T``), each image's local means and variances
    are computed once, and only the cross term is computed per pair.

    Args:
        images: the bank, ``[H, W]`` uint8 each (padded to square, resized to ``size``).
        size: the common side.
        pairs_per_batch: image pairs per batched product.
    """

    def __init__(
        self, images: Sequence[np.ndarray], size: int = SSIM_SIZE, pairs_per_batch: int = 1024
    ) -> None:
        self.size = size
        self.pairs_per_batch = pairs_per_batch
        self.window = _gaussian_band(size)
        self.padded, self.mu, self.var = self._prepare(images)

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, ...]:
        x = square_batch(images, self.size).float().div(255.0)
        pad = (self.window.shape[1] - self.size) // 2
        padded = torch.nn.functional.pad(x[:, None], (pad,) * 4, mode="reflect")[:, 0]
        mu = self._filter(padded)
        var = (self._filter(padded * padded) - mu * mu).clamp(min=0.0)
        return padded, mu, var

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        return self.window @ x @ self.window.T

    def nearest(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Index and SSIM of each image's most similar bank image."""
        from tqdm.auto import tqdm

        qp, qmu, qvar = self._prepare(images)
        n_bank = len(self.padded)
        index = np.empty(len(qp), dtype=np.int64)
        value = np.empty(len(qp), dtype=np.float64)
        for i in tqdm(range(len(qp)), desc="SSIM", unit="img", disable=None, leave=False):
            value[i] = -math.inf
            for start in range(0, n_bank, self.pairs_per_batch):
                part = slice(start, start + self.pairs_per_batch)
                s = self._ssim(qp[i], qmu[i], qvar[i], part)
                j = int(s.argmax())
                if float(s[j]) > value[i]:
                    value[i], index[i] = float(s[j]), start + j
        return index, np.clip(value, -1.0, 1.0)

    def _ssim(
        self, padded: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, part: slice
    ) -> torch.Tensor:
        c1, c2 = 0.01**2, 0.03**2
        mu_b, var_b = self.mu[part], self.var[part]
        cov = self._filter(padded * self.padded[part]) - mu * mu_b
        num = (2 * mu * mu_b + c1) * (2 * cov + c2)
        den = (mu * mu + mu_b * mu_b + c1) * (var + var_b + c2)
        return (num / den).flatten(1).mean(1)


def _gaussian_band(size: int, taps: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``[size, size + taps - 1]`` matrix applying a normalised 1-D Gaussian (valid)."""
    d = torch.arange((1 - taps) / 2, (1 + taps) / 2, 1.0, dtype=torch.float64)
    g = torch.exp(-((d / sigma) ** 2) / 2)
    g = g / g.sum()
    band = torch.zeros(size, size + taps - 1, dtype=torch.float64)
    for i in range(size):
        band[i, i : i + taps] = g
    return band.float()


def memorization_rows(
    cohort: ViewSet,
    training: ViewSet,
    cohort_features: np.ndarray,
    training_features: np.ndarray,
    cosine_threshold: float,
    ssim_threshold: float,
) -> list[dict[str, Any]]:
    """One row per synthetic sample: its nearest training image by cosine and by SSIM.

    Keys starting with ``_`` are for the montage and the summary, not the CSV: the
    training index of the SSIM-nearest image and the cosine similarity of that pair.
    """
    cos_idx, cos_val = nearest_by_cosine(cohort_features, training_features)
    ssim_idx, ssim_val = SSIMBank(training.images).nearest(cohort.images)
    unit_c, unit_t = _unit_rows(cohort_features), _unit_rows(training_features)
    rows = []
    for i in range(len(cohort)):
        c, s = int(cos_idx[i]), int(ssim_idx[i])
        rows.append(
            {
                "index": i,
                "synthetic": cohort.keys[i],
                "view": cohort.views[i],
                "nearest_cosine": training.keys[c],
                "nearest_cosine_view": training.views[c],
                "cosine": float(cos_val[i]),
                "nearest_ssim": training.keys[s],
                "nearest_ssim_view": training.views[s],
                "ssim": float(ssim_val[i]),
                "flagged": bool(cos_val[i] >= cosine_threshold or ssim_val[i] >= ssim_threshold),
                "_ssim_index": s,
                "_ssim_pair_cosine": float(np.clip(unit_c[i] @ unit_t[s], -1.0, 1.0)),
            }
        )
    return rows


def _memorization_stats(
    rows: list[dict[str, Any]], cosine_threshold: float, ssim_threshold: float
) -> dict[str, Any]:
    cos = np.array([r["cosine"] for r in rows])
    ssim = np.array([r["ssim"] for r in rows])
    flagged = sum(r["flagged"] for r in rows)
    return {
        "n": len(rows),
        "flagged": flagged,
        "share_flagged": _round(flagged / len(rows)),
        "over_cosine_threshold": int((cos >= cosine_threshold).sum()),
        "over_ssim_threshold": int((ssim >= ssim_threshold).sum()),
        "cosine": {"median": _round(np.median(cos)), "max": _round(cos.max())},
        "ssim": {"median": _round(np.median(ssim)), "max": _round(ssim.max())},
    }


def closest_pairs(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` rows with the highest SSIM (ties in cohort order)."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["ssim"], i))
    return [rows[i] for i in order[:n]]


def memorization_csv(rows: list[dict[str, Any]]) -> bytes:
    """The per-sample table (similarities with 6 decimals)."""
    columns = [k for k in rows[0] if not k.startswith("_")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue().encode()


# ----------------------------------------------------------------------------- the audit


def audit_cohort(
    cohort: str | os.PathLike,
    reference: str | os.PathLike,
    encoder: str = "pixels",
    training: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    cosine_threshold: float = 0.95,
    ssim_threshold: float = 0.9,
    n_montage: int = 8,
    seed: int = 0,
    overlays: bool = False,
) -> dict[str, Any]:
    """FID/KID against a reference and a memorization search against the training set.

    Args:
        cohort: a cohort (or any prepared dataset), ``DIR[:split]``.
        reference: real images to compare with, ``DIR[:split]``.
        encoder: ``pixels``, ``clip:NAME[@PRETRAINED]``, ``ssl:DIR`` or ``inception:PATH``.
        training: the images the generator was trained on, ``DIR[:split]`` (default:
            the reference).
        out: the report folder (default ``COHORT/audit``).
        kid_subset_size: KID subset size (default 1000), capped at the smaller set.
        kid_subsets: number of KID subsets.
        cosine_threshold: flag a sample whose nearest training image has at least this
            cosine similarity in the encoder's space.
        ssim_threshold: flag a sample whose nearest training image has at least this SSIM.
        n_montage: closest pairs (by SSIM) in ``closest_pairs.png``.
        seed: seed of KID's subset sampling.
        overlays: also count the synthetic images showing calipers or text
            (:func:`fusynth.data.clean.overlay_share`).

    Returns:
        The summary written to ``cohort_audit.json``, plus ``report`` (the folder).

    Raises:
        UserInputError: a bad dataset, encoder or setting (naming the flag or file), or
            no view shared by the cohort and the reference.
    """
    from fusynth.data.schema import parse_data_spec

    _check_settings(kid_subset_size, kid_subsets, cosine_threshold, ssim_threshold, n_montage)
    syn = load_view_set(str(cohort), "COHORT")
    traps = [f"WARNING: {w}" for w in emit(log, [reference_is_training(str(reference))])]
    ref = load_view_set(str(reference), "--reference")
    train = load_view_set(str(training), "--training") if training is not None else ref
    shared = [v for v in syn.view_counts if v in ref.view_counts]
    if not shared:
        raise UserInputError(
            f"--reference: {reference} has none of the cohort's views "
            f"(cohort: {', '.join(syn.view_counts)}; reference: {', '.join(ref.view_counts)})"
        )
    from fusynth.embed.registry import embedder_from_spec

    embedder = embedder_from_spec(encoder, "--encoder")
    syn_f, ref_f = embed(embedder, syn.images), embed(embedder, ref.images)
    train_f = ref_f if training is None else embed(embedder, train.images)
    distance = _distances(syn, ref, syn_f, ref_f, shared, kid_subset_size, kid_subsets, seed)
    rows = memorization_rows(syn, train, syn_f, train_f, cosine_threshold, ssim_threshold)
    pairs = closest_pairs(rows, n_montage)
    summary = {
        "cohort": str(cohort),
        "reference": str(reference),
        "training": str(training if training is not None else reference),
        "encoder": {"spec": encoder, "name": embedder.name, "dim": embedder.dim},
        "counts": {
            "cohort": _counts(syn),
            "reference": _counts(ref),
            "training": _counts(train),
            "cohort_not_marked_synthetic": sum(not s for s in syn.synthetic),
        },
        "distance": distance,
        "memorization": _memorization_summary(rows, pairs, train, cosine_threshold, ssim_threshold),
        "files": {"memorization": MEMORIZATION_FILE, "montage": MONTAGE_FILE},
        "notes": _notes(encoder, syn) + traps,
        "fusynth_version": __version__,
    }
    if overlays:
        from fusynth.data.clean import overlay_share

        summary["overlays"] = overlay_share(syn.images, syn.views, syn.keys)
    target = Path(out) if out is not None else parse_data_spec(str(cohort))[0] / AUDIT_DIR
    atomic_write_bytes(target / MEMORIZATION_FILE, memorization_csv(rows))
    write_montage(target / MONTAGE_FILE, pairs, syn, train, cosine_threshold, ssim_threshold)
    atomic_write_bytes(target / AUDIT_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    summary["report"] = str(target)
    return summary


def reference_is_training(reference: str) -> str | None:
    """The warning for a ``--reference`` that is (or holds) a training split.

    FID/KID against the images a generator learned from rewards copying them: the
    reference should be held-out real data, the training split going to ``--training``.
    """
    from fusynth.data.schema import parse_data_spec

    path, split = parse_data_spec(reference)
    fix = (
        "compare with held-out real images (e.g. --reference DIR:test) and give the "
        "training split as --training for the memorization search"
    )
    if split == "train":
        return (
            f"--reference {reference} is a training split: FID/KID against the images the "
            f"generator was trained on reward copying them; {fix}"
        )
    if split is None and (Path(path) / "train").is_dir():
        return (
            f"--reference {reference} names no split, so its training split is compared "
            f"too: FID/KID against training images reward copying them; {fix}"
        )
    return None


def _check_settings(
    kid_subset_size: int | None,
    kid_subsets: int,
    cosine_threshold: float,
    ssim_threshold: float,
    n_montage: int,
) -> None:
    if kid_subset_size is not None and kid_subset_size < 2:
        raise UserInputError(f"--kid_subset_size: must be at least 2, got {kid_subset_size}")
    if kid_subsets < 1:
        raise UserInputError(f"--kid_subsets: must be at least 1, got {kid_subsets}")
    for flag, value in (
        ("--cosine_threshold", cosine_threshold),
        ("--ssim_threshold", ssim_threshold),
    ):
        if not 0 < value <= 1:
            raise UserInputError(f"{flag}: must be in (0, 1], got {value}")
    if n_montage < 1:
        raise UserInputError(f"--n_montage: must be at least 1, got {n_montage}")


def _distances(
    syn: ViewSet,
    ref: ViewSet,
    syn_f: np.ndarray,
    ref_f: np.ndarray,
    shared: list[str],
    kid_subset_size: int | None,
    kid_subsets: int,
    seed: int,
) -> dict[str, Any]:
    """FID/KID per shared view and over the shared views together."""

    def rows_of(views: list[str], chosen: list[str]) -> np.ndarray:
        return np.array([i for i, v in enumerate(views) if v in chosen], dtype=np.int64)

    def compare(chosen: list[str]) -> dict[str, Any]:
        a, b = rows_of(syn.views, chosen), rows_of(ref.views, chosen)
        return compare_sets(syn_f[a], ref_f[b], kid_subset_size, kid_subsets, seed)

    return {
        "views": shared,
        "views_without_reference": [v for v in syn.view_counts if v not in shared],
        "kid": {
            "subset_size_requested": kid_subset_size or DEFAULT_KID_SUBSET_SIZE,
            "subsets": kid_subsets,
            "kernel": "polynomial, degree 3, gamma 1/dim, coef 1",
            "seed": seed,
        },
        "overall": compare(shared),
        "by_view": {v: compare([v]) for v in shared},
    }


def _memorization_summary(
    rows: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    training: ViewSet,
    cosine_threshold: float,
    ssim_threshold: float,
) -> dict[str, Any]:
    views = list(dict.fromkeys(r["view"] for r in rows))
    return {
        "thresholds": {"cosine": cosine_threshold, "ssim": ssim_threshold},
        "ssim_image_size": SSIM_SIZE,
        "searched": f"all {len(training)} training images, any view",
        "overall": _memorization_stats(rows, cosine_threshold, ssim_threshold),
        "by_view": {
            v: _memorization_stats(
                [r for r in rows if r["view"] == v], cosine_threshold, ssim_threshold
            )
            for v in views
        },
        "closest_pairs": [
            {
                "synthetic": r["synthetic"],
                "view": r["view"],
                "training": r["nearest_ssim"],
                "training_view": r["nearest_ssim_view"],
                "ssim": _round(r["ssim"]),
                "cosine": _round(r["_ssim_pair_cosine"]),
                "flagged": r["flagged"],
            }
            for r in pairs
        ],
    }


def _counts(vs: ViewSet) -> dict[str, Any]:
    return {"total": len(vs), "by_view": vs.view_counts}


def _notes(encoder: str, syn: ViewSet) -> list[str]:
    notes = []
    if encoder.startswith("inception:"):
        notes.append(
            "Inception-v3 features from torchvision's model, not the TensorFlow FID graph: "
            "close to, but not the same as, published FIDs"
        )
    else:
        notes.append(
            f"{encoder} features are not Inception features: these FID/KID values are "
            "comparable only with others computed with the same encoder, not with published FIDs"
        )
    unmarked = sum(not s for s in syn.synthetic)
    if unmarked:
        notes.append(f"{unmarked} of {len(syn)} cohort samples are not marked synthetic")
    return notes


def _round(x: float) -> float | None:
    """``x`` to 6 significant digits (stable across reruns), None when not finite."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None
