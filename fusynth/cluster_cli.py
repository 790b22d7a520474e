"""``fusynth evaluate clustering``: its flags and what it prints."""

from __future__ import annotations

import argparse
from typing import Any


def add_evaluate_clustering_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``clustering`` to the ``fusynth evaluate`` subcommands.

    Args:
        subparsers: what ``add_subparsers`` returned for ``fusynth evaluate``.

    Returns:
        The new parser.
    """
    p = subparsers.add_parser(
        "clustering",
        help="cluster views in an embedding: purity, Hungarian accuracy, NMI, ARI, fidelity",
    )
    p.add_argument(
        "--embed",
        required=True,
        help="embedder: pixels, clip:NAME[@PRETRAINED] or ssl:DIR (a train_ssl.py output)",
    )
    p.add_argument("--data", required=True, help="prepared dataset or cohort, DIR[:split]")
    p.add_argument(
        "--extra",
        help="a cohort (or dataset) DIR[:split] clustered together with --data, for the "
        "semantic fidelity of its synthetic samples",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--k", type=int, default=5, help="clusters (5)")
    p.add_argument(
        "--overcluster", type=int, help="also cluster into this many clusters, e.g. 20 (off)"
    )
    p.add_argument(
        "--scan",
        action="store_true",
        help="also train a SCAN-style clustering head on the fixed embeddings",
    )
    p.add_argument("--views", help="comma-separated views to keep (all)")
    p.add_argument("--n_init", type=int, default=10, help="k-means restarts (10)")
    p.add_argument(
        "--scan_neighbors",
        type=int,
        default=20,
        help="nearest neighbours per sample for SCAN and neighbour consistency (20)",
    )
    p.add_argument(
        "--scan_entropy_weight", type=float, default=5.0, help="SCAN's entropy weight (5.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and SCAN (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=evaluate_clustering_command)
    return p


def evaluate_clustering_command(args: argparse.Namespace) -> int:
    """Run the evaluation and print one line per clustering; returns 0."""
    from fusynth.cluster import evaluate_clustering
    from fusynth.data.views import parse_view_list

    metrics = evaluate_clustering(
        args.embed,
        args.data,
        args.out,
        k=args.k,
        overcluster=args.overcluster,
        scan=args.scan,
        extra=args.extra,
        seed=args.seed,
        overwrite=args.overwrite,
        views=parse_view_list(args.views, "--views"),
        n_init=args.n_init,
        scan_neighbors=args.scan_neighbors,
        scan_entropy_weight=args.scan_entropy_weight,
    )
    for name, m in metrics["clusterings"].items():
        print(
            f"{name}: purity {m['purity']:.3f}, Hungarian accuracy "
            f"{m['hungarian_accuracy']:.3f}, NMI {m['nmi']:.3f}, ARI {m['ari']:.3f}"
        )
        if m["semantic_fidelity"]:
            print(f"  {fidelity_line(m['semantic_fidelity'])}")
    print(
        f"{metrics['n_samples']} samples ({metrics['n_synthetic']} synthetic); report in {args.out}"
    )
    return 0


def fidelity_line(f: dict[str, Any]) -> str:
    """One line summarising semantic fidelity."""
    line = (
        f"semantic fidelity {f['share']:.3f}: {f['n_matching']} of {f['n_synthetic']} synthetic "
        "samples in a cluster whose real majority is their view"
    )
    if f["n_in_clusters_without_real"]:
        line += f" ({f['n_in_clusters_without_real']} in clusters without real samples)"
    return line
