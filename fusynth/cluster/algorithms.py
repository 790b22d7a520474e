"""Clustering algorithms on fixed embeddings: k-means and a SCAN-style head.

* **k-means**: Lloyd's algorithm with k-means++ seeding, ``n_init`` restarts (seeded), the
  run with the lowest inertia kept; on the embedder's output as it is.
* **SCAN-style head**: a linear softmax head trained on the fixed embeddings (centred and
  L2-normalised) with SCAN's loss: ``-log <p_i, p_j>`` averaged over each sample's
  ``n_neighbors`` nearest neighbours (cosine), minus ``entropy_weight`` times the entropy
  of the mean assignment. Several heads train from different seeded inits and the one
  with the lowest loss is kept. It is SCAN's clustering step only: no self-labelling
  step, and the encoder is not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
