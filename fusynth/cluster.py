"""Clustering fetal views from image embeddings: k-means, a SCAN-style head, metrics.

What ``fusynth evaluate clustering`` computes, and how each number is defined:

* **k-means**: Lloyd's algorithm with k-means++ seeding, ``n_init`` restarts (seeded), the
  run with the lowest inertia kept; on the embedder's output as it is.
* **SCAN-style head**: a linear softmax head trained on the fixed embeddings (centred and
  L2-normalised) with SCAN's loss: ``-log <p_i, p_j>`` averaged over each sample's
  ``n_neighbors`` nearest neighbours (cosine), minus ``entropy_weight`` times the entropy
  of the mean assignment. Several heads train from different seeded inits and the one
  with the lowest loss is kept. It is SCAN's clustering step only: no self-labelling
  step, and the encoder is not trained.
* **purity**: each cluster votes for its majority view; the share of samples whose view
  is their cluster's vote. Defined for any k, also k larger than the number of views
  (where it is optimistic: k = N gives 1).
* **Hungarian accuracy**: clusters and views matched one-to-one to maximise agreement
  (:func:`scipy.optimize.linear_sum_assignment` on the k x views contingency table); the
  share of samples in a matched cluster with the matched view. With k > #views the
  unmatched clusters count as wrong; with k < #views so do the unmatched views.
* **NMI** (arithmetic normalisation) and **ARI**: torchmetrics' definitions.
* **neighbour consistency**: the share of (sample, nearest neighbour) pairs in the same
  cluster; what the SCAN loss maximises.
* **semantic fidelity** (when synthetic samples are clustered together with real ones):
  the share of synthetic samples whose cluster's majority view *among its real samples*
  is the view they were generated for. A cluster without real samples matches nothing;
  how many synthetic samples land in one is reported. Ties between real majority views
  go to the first in the canonical view order.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusynth.data.images import save_png, tile_images
from fusynth.data.schema import VIEWS
from fusynth.data.transforms import square_resize
from fusynth.data.views import ViewSet, load_view_set
from fusynth.errors import UserInputError
from fusynth.io import atomic_dir, check_output_dir
from fusynth.loop import positive

MONTAGE_IMAGES = 16
MONTAGE_COLUMNS = 4
THUMBNAIL = 64

# ----------------------------------------------------------------------------- k-means


@dataclass
class KMeansResult:
    """Labels ``[N]`` (clusters numbered by size, largest first), centres ``[k, D]`` and
    the sum of squared distances to the assigned centre."""

    labels: np.ndarray
    centers: np.ndarray
    inertia: float


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``[N, k]`` squared Euclidean distances (float64, never negative)."""
    d = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None]
    return np.maximum(d, 0.0)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centers = [x[rng.integers(len(x))]]
    closest = squared_distances(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        i = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
        centers.append(x[i])
        closest = np.minimum(closest, squared_distances(x, x[i][None])[:, 0])
    return np.stack(centers)


def _lloyd(
    x: np.ndarray, centers: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations; an empty cluster takes the point farthest from its centre."""
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(max_iter):
        d = squared_distances(x, centers)
        labels = d.argmin(1)
        new = np.empty_like(centers)
        far = np.argsort(-d[np.arange(len(x)), labels], kind="stable")
        taken = 0
        for c in range(len(centers)):
            members = labels == c
            if members.any():
                new[c] = x[members].mean(0)
            else:
                new[c] = x[far[taken]]
                taken += 1
        shift = ((new - centers) ** 2).sum()
        centers = new
        if shift <= tol:
            break
    d = squared_distances(x, centers)
    labels = d.argmin(1)
    return labels, centers, float(d[np.arange(len(x)), labels].sum())


def size_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Old cluster numbers sorted by size, largest first (ties: lower number first)."""
    return np.argsort(-np.bincount(labels, minlength=k), kind="stable")


def renumber(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Labels renumbered so that old cluster ``order[j]`` becomes ``j``."""
    new = np.empty(len(order), dtype=np.int64)
    new[order] = np.arange(len(order))
    return new[labels]


def kmeans(
    x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300
) -> KMeansResult:
    """k-means with k-means++ seeding and ``n_init`` seeded restarts; the lowest inertia wins.

    Args:
        x: ``[N, D]`` features.
        k: clusters, at most N.
        seed: seed of the seeding (restart ``r`` uses ``default_rng([seed, r])``).
        n_init: restarts.
        max_iter: Lloyd iterations per restart.

    Raises:
        ValueError: k outside [1, N].
    """
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k} clusters for {len(x)} samples")
    tol = 1e-8 * float(x.var(0).sum()) * k
    best = None
    for r in range(n_init):
        start = kmeans_plus_plus(x, k, np.random.default_rng([seed, r]))
        labels, centers, inertia = _lloyd(x, start, max_iter, tol)
        if best is None or inertia < best[2] - 1e-12:
            best = (labels, centers, inertia)
    labels, centers, inertia = best
    order = size_order(labels, k)
    return KMeansResult(renumber(labels, order), centers[order], inertia)


# ----------------------------------------------------------------------------- SCAN-style head


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Features centred on their mean and scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    x = x - x.mean(0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbors(x: np.ndarray, n_neighbors: int, block: int = 1024) -> np.ndarray:
    """``[N, n]`` indices of each row's nearest other rows by cosine similarity."""
    t = torch.from_numpy(unit_rows(x))
    n = min(n_neighbors, len(t) - 1)
    out = []
    for start in range(0, len(t), block):
        sim = t[start : start + block] @ t.T
        rows = torch.arange(start, min(start + block, len(t)))
        sim[torch.arange(len(rows)), rows] = -math.inf
        out.append(sim.topk(n, dim=1).indices)
    return torch.cat(out).numpy()


def neighbour_consistency(labels: np.ndarray, neighbors: np.ndarray) -> float:
    """Share of (sample, neighbour) pairs that share a cluster."""
    if neighbors.size == 0:
        return math.nan
    return float((labels[:, None] == labels[neighbors]).mean())


def scan_loss(
    probs: torch.Tensor, neighbors: torch.Tensor, entropy_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SCAN's clustering loss per head.

    Args:
        probs: ``[H, N, k]`` softmax outputs of ``H`` heads.
        neighbors: ``[N, n]`` neighbour indices.
        entropy_weight: weight of the entropy of the mean assignment.

    Returns:
        ``(total, consistency)``, each ``[H]``.
    """
    anchor = probs[:, :, None, :]  # [H, N, 1, k]
    near = probs[:, neighbors, :]  # [H, N, n, k]
    dot = (anchor * near).sum(-1).clamp(min=1e-8)
    consistency = -dot.log().mean(dim=(1, 2))
    mean = probs.mean(1).clamp(min=1e-8)
    entropy = -(mean * mean.log()).sum(-1)
    return consistency - entropy_weight * entropy, consistency


@dataclass
class ScanResult:
    """Labels ``[N]`` (numbered by size), probabilities ``[N, k]`` and the kept head's loss."""

    labels: np.ndarray
    probs: np.ndarray
    loss: float


def scan_cluster(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    n_neighbors: int = 20,
    entropy_weight: float = 5.0,
    steps: int = 300,
    n_heads: int = 5,
    lr: float = 0.05,
) -> ScanResult:
    """Train SCAN-style linear heads on fixed features and keep the lowest-loss one.

    Args:
        x: ``[N, D]`` features (centred and L2-normalised here).
        k: clusters.
        seed: seed of the heads' init.
        n_neighbors: neighbours per sample (at most N - 1).
        entropy_weight: weight of the entropy term (SCAN's default is 5).
        steps: full-batch Adam steps.
        n_heads: heads trained side by side.
        lr: Adam learning rate.

    Raises:
        ValueError: k outside [1, N] or fewer than 2 samples.
    """
    if len(x) < 2 or not 1 <= k <= len(x):
        raise ValueError(f"k={k} clusters for {len(x)} samples")
    feats = torch.from_numpy(unit_rows(x))
    neighbors = torch.from_numpy(nearest_neighbors(x, n_neighbors))
    gen = torch.Generator().manual_seed(seed)
    dim = feats.shape[1]
    weight = (torch.randn(n_heads, dim, k, generator=gen) / math.sqrt(dim)).requires_grad_()
    bias = torch.zeros(n_heads, 1, k, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(steps):
        probs = F.softmax(torch.einsum("nd,hdk->hnk", feats, weight) + bias, dim=-1)
        total, _ = scan_loss(probs, neighbors, entropy_weight)
        optimizer.zero_grad()
        total.sum().backward()
        optimizer.step()
    with torch.no_grad():
        probs = F.softmax(torch.einsum("nd,hdk->hnk", feats, weight) + bias, dim=-1)
        total, _ = scan_loss(probs, neighbors, entropy_weight)
        best = int(total.argmin())
        kept = probs[best].numpy()
    labels = kept.argmax(1)
    order = size_order(labels, k)
    return ScanResult(renumber(labels, order), kept[:, order], float(total[best]))


# ----------------------------------------------------------------------------- metrics


def contingency(labels: np.ndarray, views: list[str], k: int) -> tuple[np.ndarray, list[str]]:
    """``[k, V]`` counts of each view in each cluster, and the views (canonical order)."""
    names = [v for v in VIEWS if v in set(views)] + sorted(set(views) - set(VIEWS))
    col = {v: i for i, v in enumerate(names)}
    table = np.zeros((k, len(names)), dtype=np.int64)
    for c, v in zip(labels, views, strict=True):
        table[c, col[v]] += 1
    return table, names


def purity(table: np.ndarray) -> float:
    """Share of samples whose view is their cluster's majority view."""
    return float(table.max(1).sum() / table.sum()) if table.sum() else math.nan


def hungarian(table: np.ndarray, names: list[str]) -> tuple[float, dict[int, str]]:
    """One-to-one cluster -> view matching maximising agreement; its accuracy and map."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table, maximize=True)
    accuracy = float(table[rows, cols].sum() / table.sum()) if table.sum() else math.nan
    return accuracy, {int(r): names[c] for r, c in zip(rows, cols, strict=True)}


def nmi_ari(labels: np.ndarray, views: list[str]) -> tuple[float, float]:
    """Normalised mutual information (arithmetic) and adjusted Rand index."""
    from torchmetrics.functional.clustering import (
        adjusted_rand_score,
        normalized_mutual_info_score,
    )

    names = sorted(set(views))
    target = torch.tensor([names.index(v) for v in views])
    preds = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics' sparse-tensor notice
        nmi = float(normalized_mutual_info_score(preds, target, average_method="arithmetic"))
        ari = float(adjusted_rand_score(preds, target))
    return nmi, ari


def cluster_metrics(labels: np.ndarray, views: list[str], k: int) -> dict[str, Any]:
    """Purity, Hungarian accuracy (with its cluster -> view map), NMI and ARI."""
    table, names = contingency(labels, views, k)
    acc, mapping = hungarian(table, names)
    nmi, ari = nmi_ari(labels, views)
    return {
        "n": int(len(labels)),
        "purity": purity(table),
        "hungarian_accuracy": acc,
        "nmi": nmi,
        "ari": ari,
        "hungarian_map": {str(c): v for c, v in sorted(mapping.items())},
    }


def real_majority(labels: np.ndarray, views: list[str], synthetic: list[bool], k: int) -> list:
    """Each cluster's most frequent view among its real samples (None without real ones;
    ties go to the first in canonical view order)."""
    rank = {v: i for i, v in enumerate(VIEWS)}
    counts = [Counter() for _ in range(k)]
    for c, v, s in zip(labels, views, synthetic, strict=True):
        if not s:
            counts[c][v] += 1
    return [
        min(cnt, key=lambda v, cnt=cnt: (-cnt[v], rank.get(v, len(VIEWS)), v)) if cnt else None
        for cnt in counts
    ]


def semantic_fidelity(
    labels: np.ndarray, views: list[str], synthetic: list[bool], k: int
) -> dict[str, Any] | None:
    """Share of synthetic samples in a cluster whose real majority view is their view.

    Returns:
        None without synthetic samples; else counts, the share, how many synthetic
        samples sit in clusters without a real sample, and the same per intended view.
    """
    majority = real_majority(labels, views, synthetic, k)
    per_view: dict[str, list[int]] = {}
    no_real = 0
    for c, v, s in zip(labels, views, synthetic, strict=True):
        if not s:
            continue
        hit = per_view.setdefault(v, [0, 0])
        hit[0] += 1
        hit[1] += int(majority[c] == v)
        no_real += int(majority[c] is None)
    if not per_view:
        return None
    n = sum(h[0] for h in per_view.values())
    matching = sum(h[1] for h in per_view.values())
    return {
        "n_synthetic": n,
        "n_matching": matching,
        "share": matching / n,
        "n_in_clusters_without_real": no_real,
        "by_view": {
            v: {"n": h[0], "n_matching": h[1], "share": h[1] / h[0]}
            for v, h in sorted(per_view.items(), key=lambda kv: VIEWS.index(kv[0]))
        },
    }


def cluster_table(
    labels: np.ndarray, views: list[str], synthetic: list[bool], k: int
) -> list[dict[str, Any]]:
    """Per cluster: size, real and synthetic counts, views, and the real majority view."""
    majority = real_majority(labels, views, synthetic, k)
    out = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        counts = Counter(views[i] for i in members)
        out.append(
            {
                "cluster": c,
                "size": int(len(members)),
                "n_real": int(sum(not synthetic[i] for i in members)),
                "n_synthetic": int(sum(synthetic[i] for i in members)),
                "views": {v: counts[v] for v in sorted(counts, key=_view_rank)},
                "real_majority": majority[c],
            }
        )
    return out


def _view_rank(view: str) -> tuple[int, str]:
    return (VIEWS.index(view) if view in VIEWS else len(VIEWS), view)


# ----------------------------------------------------------------------------- figures


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The first two principal components ``[N, 2]`` (sign fixed) and their share of
    variance."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = np.zeros((len(x), 2))
    total = float((s**2).sum())
    shares = [0.0, 0.0]
    for i in range(min(2, len(s))):
        sign = 1.0 if vt[i][np.abs(vt[i]).argmax()] >= 0 else -1.0
        comps[:, i] = u[:, i] * s[i] * sign
        shares[i] = float(s[i] ** 2 / total) if total > 0 else 0.0
    return comps, shares


def view_color(view: str) -> tuple[float, float, float]:
    """A fixed colour per view (matplotlib's tab10, by canonical view order)."""
    import matplotlib

    rgba = matplotlib.colormaps["tab10"](_view_rank(view)[0] % 10)
    return rgba[:3]


def embedding_plot(
    path: Path, xy: np.ndarray, shares: list[float], views: list[str], synthetic: list[bool]
) -> Path:
    """Two panels of the 2-D PCA: coloured by view, and by real/synthetic."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fusynth.io import atomic_write_bytes

    fig = Figure(figsize=(11, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    by_view, by_origin = fig.subplots(1, 2)
    v_arr, s_arr = np.array(views), np.array(synthetic, dtype=bool)
    for view in sorted(set(views), key=_view_rank):
        m = v_arr == view
        by_view.scatter(*xy[m].T, s=14, color=view_color(view), label=f"{view} ({m.sum()})")
    for name, m, style in (
        ("real", ~s_arr, {"color": "0.45", "marker": "o"}),
        ("synthetic", s_arr, {"color": "tab:orange", "marker": "x"}),
    ):
        if m.any():
            by_origin.scatter(*xy[m].T, s=14, label=f"{name} ({m.sum()})", **style)
    for ax, title in ((by_view, "by view"), (by_origin, "real / synthetic")):
        ax.set_title(title)
        ax.set_xlabel(f"PC1 ({100 * shares[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * shares[1]:.1f}% of variance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def thumbnail(image: np.ndarray, view: str, synthetic: bool, size: int = THUMBNAIL) -> np.ndarray:
    """An RGB thumbnail framed in its view's colour; synthetic ones get a white corner."""
    gray = square_resize(image, size)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    color = (np.array(view_color(view)) * 255).astype(np.uint8)
    rgb[:2], rgb[-2:], rgb[:, :2], rgb[:, -2:] = color, color, color, color
    if synthetic:
        rgb[2:8, -8:-2] = 255
    return rgb


def cluster_montage(
    set_: ViewSet, members: np.ndarray, feats: np.ndarray, n: int = MONTAGE_IMAGES
) -> np.ndarray:
    """Up to ``n`` members nearest the cluster's mean feature, tiled 4 per row."""
    centre = feats[members].mean(0)
    dist = ((feats[members] - centre) ** 2).sum(1)
    chosen = members[np.argsort(dist, kind="stable")[:n]]
    thumbs = [thumbnail(set_.images[i], set_.views[i], set_.synthetic[i]) for i in chosen]
    return tile_images(thumbs, MONTAGE_COLUMNS)


# ----------------------------------------------------------------------------- the command


def concat_view_sets(sets: list[ViewSet]) -> ViewSet:
    """One ViewSet of several, in order, its source theirs joined by ``+``."""
    return sets[0].concat(*sets[1:], source="+".join(s.source for s in sets))


def _check_k(k: int, n: int, flag: str, what: str) -> None:
    positive(k, flag)
    if k > n:
        raise UserInputError(f"{flag}: {k} clusters for {n} samples in {what}; give at most {n}")


@dataclass
class Clustering:
    """One clustering of the samples."""

    name: str
    method: str
    k: int
    labels: np.ndarray
    extra: dict[str, Any]


def run_clusterings(
    feats: np.ndarray,
    ks: list[int],
    scan: bool,
    seed: int,
    n_init: int,
    scan_neighbors: int,
    scan_entropy_weight: float,
) -> list[Clustering]:
    """k-means (and the SCAN-style head) for each k."""
    out = []
    for k in ks:
        km = kmeans(feats, k, seed=seed, n_init=n_init)
        out.append(Clustering(f"kmeans_k{k}", "kmeans", k, km.labels, {"inertia": km.inertia}))
        if scan:
            sc = scan_cluster(
                feats,
                k,
                seed=seed,
                n_neighbors=scan_neighbors,
                entropy_weight=scan_entropy_weight,
            )
            out.append(Clustering(f"scan_k{k}", "scan", k, sc.labels, {"scan_loss": sc.loss}))
    return out


def describe(c: Clustering, samples: ViewSet, neighbors: np.ndarray) -> dict[str, Any]:
    """The metrics.json entry of one clustering."""
    synthetic = samples.synthetic
    entry: dict[str, Any] = {"method": c.method, "k": c.k, **c.extra}
    entry.update(cluster_metrics(c.labels, samples.views, c.k))
    entry["neighbour_consistency"] = neighbour_consistency(c.labels, neighbors)
    if any(synthetic) and not all(synthetic):
        real = np.flatnonzero(~np.array(synthetic, dtype=bool))
        entry["real_only"] = cluster_metrics(c.labels[real], [samples.views[i] for i in real], c.k)
    entry["semantic_fidelity"] = semantic_fidelity(c.labels, samples.views, synthetic, c.k)
    entry["clusters"] = cluster_table(c.labels, samples.views, synthetic, c.k)
    return entry


def evaluate_clustering(
    embed_spec: str,
    data: str,
    out: str | os.PathLike,
    k: int = 5,
    overcluster: int | None = None,
    scan: bool = False,
    extra: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    views: list[str] | None = None,
    n_init: int = 10,
    scan_neighbors: int = 20,
    scan_entropy_weight: float = 5.0,
) -> dict[str, Any]:
    """Cluster ``data`` (plus ``extra``) in an embedding and write the report folder.

    Writes ``metrics.json``, ``assignments.csv``, ``montages/cluster-XX.png`` (the main
    clustering: SCAN with ``scan``, else k-means, at ``k``),
    ``montages/overcluster/cluster-XX.png`` with ``overcluster``, and
    ``embedding_2d.png``.

    Args:
        embed_spec: ``pixels``, ``clip:NAME[@PRETRAINED]`` or ``ssl:DIR``.
        data: ``DIR[:split]``.
        out: the report folder (written atomically).
        k: clusters.
        overcluster: a second, larger number of clusters.
        scan: also train the SCAN-style head at each k.
        extra: a cohort (or dataset) clustered together with ``data``, for semantic
            fidelity.
        seed: seed of k-means and the SCAN heads.
        overwrite: replace an existing ``out``.
        views: keep only these views.
        n_init: k-means restarts.
        scan_neighbors: neighbours per sample for SCAN and neighbour consistency.
        scan_entropy_weight: weight of SCAN's entropy term.

    Returns:
        The metrics (as written to ``metrics.json``).

    Raises:
        UserInputError: a bad flag, embedder or dataset, or more clusters than samples.
    """
    from fusynth.embed import embedder_from_spec

    positive(k, "--k")
    if overcluster is not None:
        positive(overcluster, "--overcluster")
    positive(n_init, "--n_init")
    positive(scan_neighbors, "--scan_neighbors")
    positive(scan_entropy_weight, "--scan_entropy_weight", allow_zero=True)
    out = check_output_dir(out, overwrite)
    embedder = embedder_from_spec(embed_spec, "--embed")
    sets = [load_view_set(data, "--data", views)]
    if extra:
        sets.append(load_view_set(extra, "--extra", views))
    samples = concat_view_sets(sets)
    what = f"{data}{' + ' + extra if extra else ''}"
    if len(samples) < 2:
        raise UserInputError(f"--data: {what} has {len(samples)} sample; clustering needs 2")
    _check_k(k, len(samples), "--k", what)
    if overcluster is not None:
        _check_k(overcluster, len(samples), "--overcluster", what)
    feats = embedder(samples.images)
    ks = [k] + ([overcluster] if overcluster is not None else [])
    clusterings = run_clusterings(
        feats, ks, scan, seed, n_init, scan_neighbors, scan_entropy_weight
    )
    neighbors = nearest_neighbors(feats, scan_neighbors)
    xy, shares = pca_2d(feats)
    main = clusterings[1] if scan else clusterings[0]
    metrics = {
        "embed": embed_spec,
        "embedding_dim": int(feats.shape[1]),
        "data": data,
        "extra": extra,
        "views": views,
        "seed": seed,
        "n_init": n_init,
        "scan_neighbors": min(scan_neighbors, len(samples) - 1),
        "scan_entropy_weight": scan_entropy_weight if scan else None,
        "n_samples": len(samples),
        "n_real": int(sum(not s for s in samples.synthetic)),
        "n_synthetic": int(sum(samples.synthetic)),
        "view_counts": samples.view_counts,
        "pca_variance_share": shares,
        "montages": main.name,
        "montages_overcluster": clusterings[-1].name if overcluster is not None else None,
        "clusterings": {c.name: describe(c, samples, neighbors) for c in clusterings},
    }
    sources = ["data"] * len(sets[0]) + ["extra"] * (len(sets[1]) if extra else 0)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _write_assignments(tmp / "assignments.csv", samples, sources, xy, clusterings)
        _write_montages(tmp / "montages", samples, feats, main)
        if overcluster is not None:
            _write_montages(tmp / "montages" / "overcluster", samples, feats, clusterings[-1])
        embedding_plot(tmp / "embedding_2d.png", xy, shares, samples.views, samples.synthetic)
    return metrics


def _write_assignments(
    path: Path,
    samples: ViewSet,
    sources: list[str],
    xy: np.ndarray,
    clusterings: list[Clustering],
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["key", "source", "view", "synthetic", "subject_id", "center", "pc1", "pc2"]
        + [c.name for c in clusterings]
    )
    for i in range(len(samples)):
        writer.writerow(
            [
                samples.keys[i],
                sources[i],
                samples.views[i],
                int(samples.synthetic[i]),
                samples.subjects[i],
                samples.centers[i],
                f"{xy[i, 0]:.6g}",
                f"{xy[i, 1]:.6g}",
            ]
            + [int(c.labels[i]) for c in clusterings]
        )
    path.write_text(buf.getvalue())


def _write_montages(folder: Path, samples: ViewSet, feats: np.ndarray, c: Clustering) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for cluster in range(c.k):
        members = np.flatnonzero(c.labels == cluster)
        if len(members):
            save_png(
                folder / f"cluster-{cluster:02d}.png", cluster_montage(samples, members, feats)
            )
