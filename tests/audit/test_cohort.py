"""fusynth audit cohort: FID/KID with their counts, the memorization search, bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusynth.audit.cohort import (
    AUDIT_FILE,
    MEMORIZATION_FILE,
    MONTAGE_FILE,
    SSIMBank,
    audit_cohort,
    compare_sets,
    embed,
    frechet_distance,
    kernel_distance,
)
from fusynth.cli.audit import add_audit_cohort_parser
from fusynth.core.errors import UserInputError
from fusynth.core.style import png_text
from fusynth.data.schema import VIEWS
from fusynth.data.transforms import square_resize
from fusynth.data.views import load_view_set
from fusynth.embed.base import pixel_embedder
from fusynth.embed.registry import embedder_from_spec
from tests.conftest import write_prepared

N_COPIES = 4


def _row(image: np.ndarray, view: str, subject: str, synthetic: bool) -> dict:
    return {
        "image": image,
        "view": VIEWS.index(view),
        "subject_id": subject,
        "cohort": "synthetic" if synthetic else "real",
        "synthetic": synthetic,
        "provenance": json.dumps({"source": subject}),
    }


def _save(rows: list[dict], out) -> str:
    return str(write_prepared(out, rows))


@pytest.fixture(scope="module")
def copies_cohort(phantom_prepared, tmp_path_factory):
    """A 'cohort' of exact copies of training images followed by as many noise frames."""
    train = load_view_set(f"{phantom_prepared}:train", "train")
    rng = np.random.default_rng(0)
    picks = range(0, len(train), len(train) // N_COPIES)
    rows = [
        _row(train.images[i], train.views[i], f"copy-{k}", True)
        for k, i in enumerate(list(picks)[:N_COPIES])
    ]
    rows += [
        _row(rng.integers(0, 256, (64, 64), dtype=np.uint8), train.views[k], f"noise-{k}", True)
        for k in range(N_COPIES)
    ]
    return _save(rows, tmp_path_factory.mktemp("copies") / "cohort")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fusynth audit")
    add_audit_cohort_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ----------------------------------------------------------------------------- FID / KID


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_a_shift(phantom_prepared):
    images = load_view_set(f"{phantom_prepared}:train", "train").images
    embedder = pixel_embedder()
    real = embed(embedder, images)
    near = embed(embedder, [np.clip(im.astype(int) + 20, 0, 255).astype(np.uint8) for im in images])
    far = embed(embedder, [np.clip(im.astype(int) + 80, 0, 255).astype(np.uint8) for im in images])
    assert abs(frechet_distance(real, real)) < 1e-6
    assert 0 < frechet_distance(real, near) < frechet_distance(real, far)


def test_fid_in_the_span_of_the_samples_equals_torchmetrics_in_full():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from fusynth.audit.cohort import Precomputed

    rng = np.random.default_rng(1)
    real, fake = rng.random((7, 48)), rng.random((11, 48)) + 0.2
    metric = FrechetInceptionDistance(feature=Precomputed(48))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_kid_subset_size_follows_the_smaller_set_and_says_so():
    rng = np.random.default_rng(2)
    syn, ref = rng.random((5, 16)), rng.random((9, 16))
    entry = compare_sets(syn, ref, kid_subset_size=None, kid_subsets=20, seed=0)
    assert (entry["n_synthetic"], entry["n_reference"], entry["feature_dim"]) == (5, 9, 16)
    assert entry["kid_subset_size"] == 5 and entry["kid_subsets"] == 20
    assert any("KID subset size 5 (the smaller set), not 1000" in n for n in entry["notes"])
    assert entry["fid"] is not None and entry["fid_reliable"] is False
    assert entry["preferred"] == "kid"
    asked = compare_sets(syn, ref, kid_subset_size=3, kid_subsets=20, seed=0)
    assert asked["kid_subset_size"] == 3 and not any("KID subset" in n for n in asked["notes"])
    same_size = compare_sets(syn, rng.random((5, 16)), None, 20, 0)
    assert same_size["kid_subsets"] == 1  # every subset would be the whole of both sets
    big = compare_sets(rng.random((40, 4)), rng.random((30, 4)), None, 20, 0)
    assert big["fid_reliable"] is True and big["preferred"] == "fid"
    lone = compare_sets(syn[:1], ref, None, 20, 0)
    assert lone["fid"] is None and lone["kid_mean"] is None and "at least 2" in lone["notes"][0]


def test_kid_is_reproducible_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(3)
    real, fake = rng.random((30, 8)), rng.random((25, 8))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = kernel_distance(real, fake, 10, 50, seed=7)
    assert torch.rand(1) == before
    assert kernel_distance(real, fake, 10, 50, seed=7) == first
    assert kernel_distance(real, fake, 10, 50, seed=8) != first


# ----------------------------------------------------------------------------- memorization


def test_ssim_bank_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    rng = np.random.default_rng(4)
    queries = [rng.integers(0, 256, (50, 70), dtype=np.uint8) for _ in range(3)]
    bank = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(4)] + [queries[1]]
    index, value = SSIMBank(bank, size=32, pairs_per_batch=2).nearest(queries)
    assert index[1] == 4 and value[1] == pytest.approx(1.0, abs=1e-6)

    def as_tensor(ims):
        return torch.from_numpy(np.stack([square_resize(im, 32) for im in ims])).float()[:, None]

    expected = torch.stack(
        [
            structural_similarity_index_measure(
                as_tensor([q] * len(bank)) / 255,
                as_tensor(bank) / 255,
                data_range=1.0,
                reduction="none",
            )
            for q in queries
        ]
    )
    assert np.array_equal(index, expected.argmax(1).numpy())
    np.testing.assert_allclose(value, expected.max(1).values.numpy(), atol=1e-5)


def test_audit_flags_copies_and_not_noise(copies_cohort, phantom_prepared, capsys):
    argv = [
        "cohort",
        copies_cohort,
        "--reference",
        f"{phantom_prepared}:test",
        "--training",
        f"{phantom_prepared}:train",
        "--n_montage",
        "3",
        "--kid-subset-size",
        "4",
    ]
    assert _run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "memorization: 4 of 8 synthetic samples flagged" in printed
    report = Path(copies_cohort) / "audit"
    summary = json.loads((report / AUDIT_FILE).read_text())
    assert summary["counts"]["cohort"]["total"] == 2 * N_COPIES
    assert summary["counts"]["training"]["total"] == len(
        load_view_set(f"{phantom_prepared}:train", "t")
    )
    overall = summary["distance"]["overall"]
    assert overall["n_synthetic"] == 2 * N_COPIES and overall["feature_dim"] == 1024
    assert overall["kid_subset_size"] == 4 and overall["kid_mean"] is not None
    for view, entry in summary["distance"]["by_view"].items():
        assert entry["n_synthetic"] == summary["counts"]["cohort"]["by_view"][view]
        assert entry["n_reference"] == summary["counts"]["reference"]["by_view"][view]
    memo = summary["memorization"]
    assert memo["overall"]["flagged"] == N_COPIES and memo["overall"]["share_flagged"] == 0.5
    assert sum(v["flagged"] for v in memo["by_view"].values()) == N_COPIES

    rows = list(csv.DictReader(io.StringIO((report / MEMORIZATION_FILE).read_text())))
    copies, noise = rows[:N_COPIES], rows[N_COPIES:]
    assert all(r["flagged"] == "True" for r in copies)
    assert all(float(r["cosine"]) > 0.9999 and float(r["ssim"]) > 0.9999 for r in copies)
    assert all(r["nearest_ssim"] == r["nearest_cosine"] for r in copies)
    assert all(r["flagged"] == "False" and float(r["ssim"]) < 0.5 for r in noise)

    with Image.open(report / MONTAGE_FILE) as im:
        im.load()
        # Two tiles of at least 180 px a row, one row per pair.
        assert im.width >= 2 * 180 and im.height >= 3 * 180
    text = png_text(report / MONTAGE_FILE)
    assert "nearest training image" in text["Title"]
    for entry in ("flagged: SSIM >= 0.9 or cosine >= 0.95", "not flagged", "SSIM 1.000"):
        assert entry in text["Description"]
    assert copies[0]["synthetic"] in text["Description"]  # each pair names its sample
    assert [p["synthetic"] for p in memo["closest_pairs"]] == [r["synthetic"] for r in copies[:3]]

    first = [(report / name).read_bytes() for name in (AUDIT_FILE, MEMORIZATION_FILE)]
    assert _run_cli(argv) == 0
    again = [(report / name).read_bytes() for name in (AUDIT_FILE, MEMORIZATION_FILE)]
    assert again == first  # reruns replace the report with the same bytes


def test_training_defaults_to_the_reference_and_out_is_honoured(
    copies_cohort, phantom_prepared, tmp_path
):
    summary = audit_cohort(
        copies_cohort, f"{phantom_prepared}:train", out=tmp_path / "r", n_montage=1
    )
    assert summary["training"] == f"{phantom_prepared}:train"
    assert summary["memorization"]["overall"]["flagged"] == N_COPIES
    assert summary["report"] == str(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(
        [AUDIT_FILE, MEMORIZATION_FILE, MONTAGE_FILE]
    )
    assert any("not Inception features" in n for n in summary["notes"])


# ----------------------------------------------------------------------------- bad input


def test_encoder_specs_that_cannot_be_loaded_name_the_file(tmp_path):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(UserInputError, match=rf"--encoder: {missing}: no such file"):
        embedder_from_spec(f"inception:{missing}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match=rf"{garbage}: cannot be loaded"):
        embedder_from_spec(f"inception:{garbage}")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UserInputError, match=rf"{other}: not inception_v3 weights"):
        embedder_from_spec(f"inception:{other}")
    with pytest.raises(UserInputError, match="inception:PATH"):
        embedder_from_spec("inception")
    with pytest.raises(
        UserInputError, match=r"--encoder: 'vgg:x' is not an encoder; .*ssl:DIR or inception:PATH"
    ):
        embedder_from_spec("vgg:x")


def test_inception_weights_from_a_local_file(tmp_path):
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(model.state_dict(), path)  # with the classifiers, as torchvision ships it
    embedder = embedder_from_spec(f"inception:{path}")
    rng = np.random.default_rng(5)
    features = embedder([rng.integers(0, 256, (40, 60), dtype=np.uint8) for _ in range(2)])
    assert features.shape == (2, 2048) and np.isfinite(features).all()


def test_bad_settings_and_datasets_name_the_flag(copies_cohort, phantom_prepared, tmp_path, capsys):
    ref = f"{phantom_prepared}:test"
    for kwargs, flag in [
        ({"kid_subset_size": 1}, "--kid_subset_size"),
        ({"cosine_threshold": 1.5}, "--cosine_threshold"),
        ({"ssim_threshold": 0}, "--ssim_threshold"),
        ({"n_montage": 0}, "--n_montage"),
        ({"encoder": "nope"}, "--encoder"),
        ({"training": str(tmp_path / "missing")}, "--training"),
    ]:
        with pytest.raises(UserInputError, match=flag):
            audit_cohort(copies_cohort, ref, out=tmp_path / "r", **kwargs)
    with pytest.raises(UserInputError, match="--reference"):
        audit_cohort(copies_cohort, str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="^COHORT"):
        audit_cohort(str(tmp_path / "missing"), ref)
    brain_only = _save(
        [_row(np.zeros((8, 8), np.uint8), "brain", "b", False)], tmp_path / "brain_only"
    )
    with pytest.raises(UserInputError, match="--reference: .* has none of the cohort's views"):
        audit_cohort(copies_cohort, brain_only)
