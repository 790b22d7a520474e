"""How a clustering is scored against the views, and how each number is defined.

* **purity**: each cluster votes for its majority view; the share of samples whose view
  is their cluster's vote. Defined for any k, also k larger than the number of views
  (where it is optimistic: k = N gives 1).
* **Hungarian accuracy**: clusters and views matched one-to-one to maximise agreement
  (:func:`scipy.optimize.linear_sum_assignment` on the k x views contingency table); the
  share of samples in a matched cluster with the matched view. With k > #views the
  unmatched clusters count as wrong; with k < #views so do the unmatched views.
* **NMI** (arithmetic normalisation) and **ARI**: torchmetrics' definitions.
* **neighbour consistency** (in :mod:`.algorithms`): the share of (sample, nearest
  neighbour) pairs in the same cluster; what the SCAN loss maximises.
* **semantic fidelity** (when synthetic samples are clustered together with real ones):
  the share of synthetic samples whose cluster's majority view *among its real samples*
  is the view they were generated for. A cluster without real samples matches nothing;
  how many synthetic samples land in one is reported. Ties between real majority views
  go to the first in the canonical view order.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch

from fusynth.data.schema import VIEWS

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
                "views": {v: counts[v] for v in sorted(counts, key=view_rank)},
                "real_majority": majority[c],
            }
        )
    return out


def view_rank(view: str) -> tuple[int, str]:
    return (VIEWS.index(view) if view in VIEWS else len(VIEWS), view)


# ----------------------------------------------------------------------------- figures
