"""``fusynth evaluate clustering``: embed, cluster (k-means and SCAN), score, draw.

The algorithms are in :mod:`fusynth.cluster.algorithms`, the metrics and their definitions
in :mod:`fusynth.cluster.metrics`. This module runs them on a prepared dataset (and an
optional synthetic cohort clustered together with it) and writes the report, per-sample
assignments, cluster montages and a 2-D embedding plot.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusynth.cluster.algorithms import (
    kmeans,
    nearest_neighbors,
    neighbour_consistency,
    scan_cluster,
)
from fusynth.cluster.metrics import cluster_metrics, cluster_table, semantic_fidelity, view_rank
from fusynth.core.errors import UserInputError
from fusynth.core.io import atomic_dir, check_output_dir
from fusynth.core.loop import positive
from fusynth.data.transforms import square_resize
from fusynth.data.views import ViewSet, load_view_set

MONTAGE_IMAGES = 16
MONTAGE_COLUMNS = 4
THUMBNAIL = 64


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

    rgba = matplotlib.colormaps["tab10"](view_rank(view)[0] % 10)
    return rgba[:3]


def embedding_plot(
    path: Path, xy: np.ndarray, shares: list[float], views: list[str], synthetic: list[bool]
) -> Path:
    """Two panels of the 2-D PCA: coloured by view, and by real/synthetic."""
    from fusynth.core.style import blank_figure, style, write_figure

    with style():
        fig = blank_figure(11, 4.8)
        by_view, by_origin = fig.subplots(1, 2)
        v_arr, s_arr = np.array(views), np.array(synthetic, dtype=bool)
        for view in sorted(set(views), key=view_rank):
            m = v_arr == view
            by_view.scatter(*xy[m].T, s=14, color=view_color(view), label=f"{view} ({m.sum()})")
        for name, m, kw in (
            ("real", ~s_arr, {"color": "0.45", "marker": "o"}),
            ("synthetic", s_arr, {"color": "tab:orange", "marker": "x"}),
        ):
            if m.any():
                by_origin.scatter(*xy[m].T, s=14, label=f"{name} ({m.sum()})", **kw)
        for ax, title in ((by_view, "coloured by view"), (by_origin, "real / synthetic")):
            ax.set_title(title)
            ax.set_xlabel(f"PC1 ({100 * shares[0]:.1f}% of variance)")
            ax.set_ylabel(f"PC2 ({100 * shares[1]:.1f}% of variance)")
            ax.legend(fontsize=9, title="images (count)")
        fig.suptitle(f"The embedding of {len(views)} images, first two principal components")
        return write_figure(fig, path)


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """A square grayscale thumbnail (padded, resized) of one member."""
    return square_resize(image, size)


def montage_members(feats: np.ndarray, members: np.ndarray, n: int = MONTAGE_IMAGES) -> np.ndarray:
    """Up to ``n`` members nearest the cluster's mean feature, nearest first."""
    centre = feats[members].mean(0)
    dist = ((feats[members] - centre) ** 2).sum(1)
    return members[np.argsort(dist, kind="stable")[:n]]


def cluster_montage(
    path: Path,
    set_: ViewSet,
    members: np.ndarray,
    feats: np.ndarray,
    cluster: int,
    clustering: str,
    n: int = MONTAGE_IMAGES,
) -> list[str]:
    """Write a labelled montage of one cluster: its members nearest the mean feature,
    each framed in its view's colour and captioned "view · real|synthetic"; the title
    gives the cluster id, its size, its majority view and purity (share of that view).

    Returns:
        The figure's labels (see :func:`fusynth.core.gallery.image_grid`).
    """
    from collections import Counter

    from fusynth.core.gallery import Tile, image_grid

    chosen = montage_members(feats, members, n)
    views = [set_.views[i] for i in members]
    majority, top = Counter(views).most_common(1)[0]
    n_syn = int(sum(set_.synthetic[i] for i in members))
    tiles = [
        Tile(
            thumbnail(set_.images[i]),
            f"{set_.views[i]} · {'synthetic' if set_.synthetic[i] else 'real'}",
            frame=view_color(set_.views[i]),
        )
        for i in chosen
    ]
    shown = sorted({set_.views[i] for i in chosen}, key=view_rank)
    return image_grid(
        path,
        tiles,
        f"{clustering}, cluster {cluster}: {len(members)} images ({n_syn} synthetic); "
        f"majority view {majority}, purity {top / len(members):.0%}",
        cols=MONTAGE_COLUMNS,
        legend=[(f"frame: {v}", view_color(v)) for v in shown],
        legend_kind="line",
        footnote=f"the {len(chosen)} members nearest the cluster's mean feature, nearest first",
    )


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
    from fusynth.embed.registry import embedder_from_spec

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
    with atomic_dir(out, overwrite=overwrite, kind="evaluation") as tmp:
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
            cluster_montage(
                folder / f"cluster-{cluster:02d}.png", samples, members, feats, cluster, c.name
            )
