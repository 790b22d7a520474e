"""SimCLR: the loss, the augmentations, a short run, exact resume, the ssl:DIR embedder."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusynth.core.errors import UserInputError
from fusynth.embed.registry import embedder_from_spec
from fusynth.embed.ssl import ENCODER_FILE, SSL_CONFIG_FILE, load_ssl_encoder, ssl_embedder
from fusynth.ssl.augment import augment
from fusynth.ssl.model import build_simclr, nt_xent
from fusynth.ssl.train import SslConfig, train_ssl
from tests.conftest import SSL_RUN, run_recipe


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids oversubscription when the suite runs beside other
    jobs on two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_a_brute_force_computation(t):
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    assert nt_xent(z1, z2, t).item() == pytest.approx(brute_force_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones():
    z = torch.eye(4) * 3
    assert nt_xent(z, z, 0.1) < 1e-3
    assert nt_xent(z, z[[1, 2, 3, 0]], 0.1) > 5


def _images(n: int = 4, side: int = 64) -> torch.Tensor:
    x = torch.zeros(n, 1, side, side)
    x[:, :, side // 4 : 3 * side // 4, side // 3 : 2 * side // 3] = torch.linspace(0.2, 0.9, n)[
        :, None, None, None
    ]
    return x


def test_augmentations_are_a_function_of_the_generator():
    x = _images()
    a = augment(x, 32, torch.Generator().manual_seed(3))
    b = augment(x, 32, torch.Generator().manual_seed(3))
    c = augment(x, 32, torch.Generator().manual_seed(4))
    assert a.shape == (4, 1, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # Two draws from one generator are two different views of the same image.
    gen = torch.Generator().manual_seed(3)
    assert not torch.equal(augment(x, 32, gen), augment(x, 32, gen))


def test_augmentations_keep_a_black_frame_black_and_a_single_channel():
    black = torch.zeros(3, 1, 48, 48)
    out = augment(black, 24, torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 24, 24)
    assert torch.equal(out, torch.zeros_like(out))


def _config(data, out, **kw) -> SslConfig:
    """The settings of the ``ssl_run`` fixture (``SSL_RUN``), on ``data``, into ``out``."""
    base = dict(train=f"{data}:train", output_dir=str(out), **SSL_RUN)
    return SslConfig(**{**base, **kw})


def test_a_short_run_writes_a_loadable_encoder_config_and_card(ssl_run):
    names = {p.name for p in ssl_run.iterdir()}
    assert {
        ENCODER_FILE,
        SSL_CONFIG_FILE,
        "config.json",
        "train_log.json",
        "README.md",
        "checkpoint-2",
        "checkpoint-4",
    } <= names
    cfg = json.loads((ssl_run / SSL_CONFIG_FILE).read_text())
    assert cfg["architecture"] == "resnet18" and cfg["resolution"] == 32
    assert cfg["normalization"] == {"mean": [0.5], "std": [0.5]}
    log = json.loads((ssl_run / "train_log.json").read_text())
    assert log["global_step"] == 4 and len(log["losses"]) == 4
    assert all(math.isfinite(v) for v in log["losses"])
    state = load_file(str(ssl_run / ENCODER_FILE))
    assert not any(k.startswith(("fc.", "projector.")) for k in state)
    init = build_simclr(128, 0).encoder.state_dict()
    assert not torch.equal(state["conv1.weight"], init["conv1.weight"])  # it trained
    encoder, loaded = load_ssl_encoder(ssl_run, "--embed")
    assert loaded == cfg and not encoder.training
    card = (ssl_run / "README.md").read_text()
    assert "random init" in card and "Not for clinical use" in card


def test_resume_from_a_checkpoint_gives_the_same_weights(ssl_run, phantom_prepared, tmp_path):
    trained = json.loads((ssl_run / "config.json").read_text())
    assert {k: trained[k] for k in SSL_RUN} == SSL_RUN  # resumed with the run's own settings
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(ssl_run / "checkpoint-2", out / "checkpoint-2")
    resumed = train_ssl(_config(phantom_prepared, out, resume_from_checkpoint="latest"))
    straight = json.loads((ssl_run / "train_log.json").read_text())["losses"]
    assert resumed.global_step == 4
    assert resumed.losses == straight  # the checkpoint carried steps 1-2 of the log
    assert (out / "train_log.json").read_text() == (ssl_run / "train_log.json").read_text()
    a = load_file(str(ssl_run / ENCODER_FILE))
    b = load_file(str(out / ENCODER_FILE))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_temperature_is_refused(ssl_run, phantom_prepared, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    shutil.copytree(ssl_run / "checkpoint-2", out / "checkpoint-2")
    config = _config(phantom_prepared, out, resume_from_checkpoint="latest", temperature=0.2)
    with pytest.raises(UserInputError, match="--temperature"):
        train_ssl(config)


def test_ssl_embedder_gives_unit_512_d_features(ssl_run):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 70), dtype=np.uint8) for _ in range(3)]
    for embedder in (ssl_embedder(ssl_run, "--embed"), embedder_from_spec(f"ssl:{ssl_run}", "e")):
        feats = embedder(images)
        assert feats.shape == (3, 512) and feats.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(feats, embedder(images))


def test_a_folder_that_is_not_an_ssl_output_names_the_missing_file(ssl_run, tmp_path):
    with pytest.raises(UserInputError, match=f"--embed: .*{SSL_CONFIG_FILE} missing"):
        embedder_from_spec(f"ssl:{tmp_path}", "--embed")
    with pytest.raises(UserInputError, match="--embed: .* is not a folder"):
        ssl_embedder(tmp_path / "nope", "--embed")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(ssl_run / SSL_CONFIG_FILE, partial)
    with pytest.raises(UserInputError, match=f"{ENCODER_FILE} missing"):
        ssl_embedder(partial, "--embed")
    (partial / ENCODER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="cannot be read"):
        ssl_embedder(partial, "--embed")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--temperature", "0"], "--temperature"),
        (["--resolution", "16"], "--resolution"),
        (["--lr_scheduler", "cosin"], "invalid choice"),
        (["--train", "/no/such/folder"], "--train"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    assert run_recipe("train_ssl", *argv, "--output_dir", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    if "invalid choice" not in needle:
        assert len(err.splitlines()) == 1


def test_an_output_dir_holding_a_run_is_refused(ssl_run, phantom_prepared):
    with pytest.raises(UserInputError, match="--output_dir: .*already holds a run"):
        train_ssl(_config(phantom_prepared, ssl_run))


def test_extra_data_is_added_to_the_training_images(phantom_prepared, tmp_path):
    from fusynth.ssl.train import load_training_images

    config = _config(phantom_prepared, tmp_path / "o", extra=f"{phantom_prepared}:test")
    data = load_training_images(config)
    assert data.images.shape == (26, 1, 64, 64) and data.images.dtype == torch.uint8
    assert (data.source["num_train_images"], data.source["num_extra_images"]) == (20, 6)
    assert sum(data.source["view_counts"].values()) == 26


def test_the_encoder_clusters_through_evaluate_clustering(ssl_run, phantom_prepared, tmp_path):
    from fusynth.cluster.evaluate import evaluate_clustering

    metrics = evaluate_clustering(
        f"ssl:{ssl_run}", f"{phantom_prepared}:test", tmp_path / "report", k=2
    )
    assert metrics["embedding_dim"] == 512 and metrics["n_samples"] == 6
    assert (tmp_path / "report" / "embedding_2d.png").is_file()
