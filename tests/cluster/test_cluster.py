"""Clustering: k-means, the SCAN-style head, the metrics, and the report end to end."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from fusynth.cli.evaluate import add_evaluate_clustering_parser
from fusynth.cluster.algorithms import (
    kmeans,
    nearest_neighbors,
    neighbour_consistency,
    scan_cluster,
)
from fusynth.cluster.evaluate import evaluate_clustering
from fusynth.cluster.metrics import (
    cluster_metrics,
    contingency,
    hungarian,
    purity,
    semantic_fidelity,
)
from fusynth.core.errors import UserInputError
from fusynth.data.schema import load_prepared, save_prepared
from tests.conftest import SHARED_DATA, requires_shared_data


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids oversubscription when the suite runs beside other
    jobs on two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(seed: int = 0, per: int = 25, k: int = 4, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 10
    truth = np.repeat(np.arange(k), per)
    return centres[truth] + rng.normal(size=(len(truth), dim)), truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# ----------------------------------------------------------------------------- k-means


def test_kmeans_recovers_well_separated_blobs_deterministically():
    x, truth = blobs()
    a, b = kmeans(x, 4, seed=0), kmeans(x, 4, seed=0)
    assert same_partition(a.labels, truth)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.centers.shape == (4, 16)
    for c in range(4):  # each centre is the mean of its cluster
        np.testing.assert_allclose(a.centers[c], x[a.labels == c].mean(0))
    assert a.inertia == pytest.approx(((x - a.centers[a.labels]) ** 2).sum())


def test_kmeans_numbers_clusters_by_size_and_handles_k_equal_n():
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [50.0]])
    result = kmeans(x, 3, seed=1)
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert sorted(kmeans(x, 6).labels.tolist()) == list(range(6))
    with pytest.raises(ValueError):
        kmeans(x, 7)


# ----------------------------------------------------------------------------- metrics


def brute_force_ari(a: list, b: list) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    same_a = [a[i] == a[j] for i, j in pairs]
    same_b = [b[i] == b[j] for i, j in pairs]
    n11 = sum(x and y for x, y in zip(same_a, same_b, strict=True))
    sa, sb, total = sum(same_a), sum(same_b), len(pairs)
    expected = sa * sb / total
    return (n11 - expected) / ((sa + sb) / 2 - expected)


def brute_force_nmi(a: list, b: list) -> float:
    n = len(a)

    def entropy(labels):
        return -sum(c / n * math.log(c / n) for c in Counter(labels).values())

    joint = Counter(zip(a, b, strict=True))
    ca, cb = Counter(a), Counter(b)
    mi = sum(c / n * math.log(c * n / (ca[x] * cb[y])) for (x, y), c in joint.items())
    return mi / ((entropy(a) + entropy(b)) / 2)


def test_metrics_on_a_hand_made_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    views = ["head", "head", "femur", "femur", "femur", "thorax"]
    table, names = contingency(labels, views, 3)
    assert names == ["femur", "thorax", "head"]  # canonical view order
    assert table.tolist() == [[1, 0, 2], [2, 0, 0], [0, 1, 0]]
    m = cluster_metrics(labels, views, 3)
    assert m["purity"] == pytest.approx(5 / 6)
    assert m["hungarian_accuracy"] == pytest.approx(5 / 6)
    assert m["hungarian_map"] == {"0": "head", "1": "femur", "2": "thorax"}
    assert m["ari"] == pytest.approx(brute_force_ari(labels.tolist(), views), abs=1e-5)
    assert m["nmi"] == pytest.approx(brute_force_nmi(labels.tolist(), views), abs=1e-5)


def test_more_clusters_than_views_purity_votes_hungarian_leaves_clusters_unmatched():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    views = ["head"] * 4 + ["abdomen"] * 4
    m = cluster_metrics(labels, views, 4)
    assert m["purity"] == 1.0  # every cluster is pure
    assert m["hungarian_accuracy"] == pytest.approx(5 / 8)  # 2 head + 3 abdomen matched
    assert len(m["hungarian_map"]) == 2
    assert m["ari"] == pytest.approx(brute_force_ari(labels.tolist(), views), abs=1e-5)
    assert m["nmi"] == pytest.approx(brute_force_nmi(labels.tolist(), views), abs=1e-5)


def test_fewer_clusters_than_views_and_a_perfect_relabelled_partition():
    table, names = contingency(np.array([0, 0, 0, 0]), ["head", "head", "femur", "thorax"], 1)
    assert purity(table) == 0.5
    assert hungarian(table, names)[0] == 0.5
    m = cluster_metrics(np.array([2, 2, 0, 1]), ["head", "head", "femur", "thorax"], 3)
    assert (m["purity"], m["hungarian_accuracy"]) == (1.0, 1.0)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)


def test_semantic_fidelity_on_a_hand_made_case():
    rows = [
        # cluster, view, synthetic
        (0, "head", False),
        (0, "head", False),
        (0, "abdomen", False),
        (0, "head", True),  # real majority head: matches
        (0, "abdomen", True),  # does not
        (1, "femur", False),
        (1, "femur", True),  # matches
        (2, "thorax", True),  # a cluster without real samples: no match
        (3, "head", False),
        (3, "abdomen", False),
        (3, "abdomen", True),  # tie head/abdomen goes to abdomen (canonical order): matches
    ]
    labels = np.array([r[0] for r in rows])
    f = semantic_fidelity(labels, [r[1] for r in rows], [r[2] for r in rows], 4)
    assert (f["n_synthetic"], f["n_matching"], f["n_in_clusters_without_real"]) == (5, 3, 1)
    assert f["share"] == pytest.approx(0.6)
    assert f["by_view"]["abdomen"] == {"n": 2, "n_matching": 1, "share": 0.5}
    assert f["by_view"]["thorax"]["n_matching"] == 0
    assert semantic_fidelity(labels, [r[1] for r in rows], [False] * len(rows), 4) is None


# ----------------------------------------------------------------------------- SCAN


def test_scan_head_recovers_blobs_and_keeps_neighbour_consistency():
    x, truth = blobs(seed=2)
    neighbors = nearest_neighbors(x, 10)
    assert neighbors.shape == (100, 10)
    assert not (neighbors == np.arange(100)[:, None]).any()  # never its own neighbour
    km = kmeans(x, 4, seed=0)
    scan = scan_cluster(x, 4, seed=0, n_neighbors=10)
    assert neighbour_consistency(scan.labels, neighbors) >= neighbour_consistency(
        km.labels, neighbors
    )
    assert cluster_metrics(scan.labels, truth.astype(str).tolist(), 4)["ari"] > 0.95
    assert scan.probs.shape == (100, 4)
    np.testing.assert_allclose(scan.probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(scan.labels, scan.probs.argmax(1))
    again = scan_cluster(x, 4, seed=0, n_neighbors=10)
    np.testing.assert_array_equal(scan.labels, again.labels)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def phantom_cohort(phantom_prepared, tmp_path_factory):
    """The phantom's test split marked synthetic, standing in for a generated cohort."""
    dsd = load_prepared(phantom_prepared)
    test = dsd["test"].map(lambda row: {"synthetic": True})
    out = tmp_path_factory.mktemp("cohort") / "cohort"
    save_prepared(datasets.DatasetDict({"train": test}), out)
    return out


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fusynth evaluate")
    add_evaluate_clustering_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _decodes(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def test_evaluate_clustering_with_pixels_writes_every_file(
    phantom_prepared, phantom_cohort, tmp_path, capsys
):
    out = tmp_path / "report"
    argv = ["clustering", "--embed", "pixels", "--data", f"{phantom_prepared}:train"]
    argv += ["--extra", str(phantom_cohort), "--out", str(out), "--k", "4"]
    assert _cli([*argv, "--overcluster", "6", "--scan", "--scan_neighbors", "5"]) == 0
    printed = capsys.readouterr().out
    assert "kmeans_k4: purity" in printed and "scan_k6" in printed
    assert "semantic fidelity" in printed and f"report in {out}" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_samples"], metrics["n_real"], metrics["n_synthetic"]) == (26, 20, 6)
    assert set(metrics["clusterings"]) == {"kmeans_k4", "scan_k4", "kmeans_k6", "scan_k6"}
    assert metrics["montages"] == "scan_k4" and metrics["montages_overcluster"] == "scan_k6"
    for entry in metrics["clusterings"].values():
        for key in ("purity", "hungarian_accuracy", "nmi", "ari", "neighbour_consistency"):
            assert 0 <= entry[key] <= 1 or key == "ari"
        assert entry["semantic_fidelity"]["n_synthetic"] == 6
        assert entry["real_only"]["n"] == 20
        assert sum(c["size"] for c in entry["clusters"]) == 26

    with (out / "assignments.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 26
    assert Counter(r["source"] for r in rows) == {"data": 20, "extra": 6}
    assert {"kmeans_k4", "scan_k4", "kmeans_k6", "scan_k6", "pc1", "view"} <= set(rows[0])

    scan4 = Counter(int(r["scan_k4"]) for r in rows)
    montages = sorted((out / "montages").glob("cluster-*.png"))
    assert [p.name for p in montages] == [f"cluster-{c:02d}.png" for c in sorted(scan4)]
    from fusynth.core.style import png_text

    for p in montages:
        w, h = _decodes(p)
        assert w >= 2 * 180 and h >= 180  # tiles shown large enough to read
        cluster = int(p.stem.split("-")[1])
        entry = metrics["clusterings"]["scan_k4"]["clusters"][cluster]
        text = png_text(p)
        # The title names the cluster, its size and its majority view with its purity.
        assert text["Title"].startswith(f"scan_k4, cluster {cluster}: {entry['size']} images")
        views = entry["views"]
        top = max(views.values())
        assert f"purity {top / entry['size']:.0%}" in text["Title"]
        assert any(f"majority view {v}" in text["Title"] for v, n in views.items() if n == top)
        # What the frame colours mean, and what each tile is.
        assert "frame: " in text["Description"] and (
            " · real" in text["Description"] or " · synthetic" in text["Description"]
        )
    assert len(list((out / "montages" / "overcluster").glob("cluster-*.png"))) >= 1
    assert _decodes(out / "embedding_2d.png")[0] > 500


def test_evaluate_clustering_is_deterministic_and_refuses_an_existing_out(
    phantom_prepared, tmp_path
):
    a = evaluate_clustering("pixels", f"{phantom_prepared}:train", tmp_path / "a", k=3, seed=2)
    b = evaluate_clustering("pixels", f"{phantom_prepared}:train", tmp_path / "b", k=3, seed=2)
    assert a["clusterings"] == b["clusterings"]
    assert a["clusterings"]["kmeans_k3"]["semantic_fidelity"] is None
    with pytest.raises(UserInputError, match="--overwrite"):
        evaluate_clustering("pixels", f"{phantom_prepared}:train", tmp_path / "a", k=3)


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"k": 7}, r"--k: 7 clusters for 6 samples"),
        ({"k": 3, "overcluster": 9}, r"--overcluster: 9 clusters for 6 samples"),
        ({"k": 0}, r"--k: must be positive"),
        ({"embed_spec": "ssl:/no/such/dir"}, r"--embed: .*not a folder"),
        ({"embed_spec": "pixel"}, r"--embed: 'pixel' is not an embedder"),
        ({"views": ["brian"]}, r"--data: unknown view 'brian'"),
    ],
)
def test_bad_input_names_the_flag(phantom_prepared, tmp_path, kw, pattern):
    args = {"embed_spec": "pixels", "data": f"{phantom_prepared}:test", "out": tmp_path / "o"}
    with pytest.raises(UserInputError, match=pattern):
        evaluate_clustering(**{**args, **kw})
    assert not (tmp_path / "o").exists()


@requires_shared_data
def test_clustering_fetal_planes_db_sample_with_pixels(tmp_path):
    from fusynth.cli.main import main

    prepared = tmp_path / "fpdb"
    source = SHARED_DATA / "fetal_planes_db"
    assert main(["data", "prepare", "--format", "fetal_planes_db", str(source), str(prepared)]) == 0
    metrics = evaluate_clustering("pixels", str(prepared), tmp_path / "report", k=5, overcluster=20)
    assert metrics["n_samples"] == 100
    assert set(metrics["view_counts"]) == {"abdomen", "brain", "femur", "thorax", "other"}
    k5, k20 = metrics["clusterings"]["kmeans_k5"], metrics["clusterings"]["kmeans_k20"]
    # Purity is never below the largest view's share (20 of 100).
    assert k5["purity"] >= 0.2 and k20["purity"] >= 0.2
    assert len(list((tmp_path / "report" / "montages").glob("cluster-*.png"))) == 5
    assert len(list((tmp_path / "report" / "montages" / "overcluster").glob("*.png"))) == 20
