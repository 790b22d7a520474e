"""Shared fixtures: small datasets in each publisher's layout, built on the fly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusynth.data.geometry import Ellipse, ellipse_mask, mask_outline
from fusynth.data.phantom_cohort import write_phantom_source
from fusynth.data.prepare import prepare
from fusynth.diffusion.tiny import save_tiny_base

#: Real samples beside the project (see its README); tests using them skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data (real dataset samples) is not present"
)


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    """Write an array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def noise_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ``[H, W]`` uint8 noise frame."""
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def hc18_ellipse(i: int, h: int = 60, w: int = 80) -> Ellipse:
    """A deterministic head ellipse fully inside an ``h x w`` frame."""
    return Ellipse(cx=w / 2 + (i % 3) - 1, cy=h / 2, a=22 + i % 5, b=15 + i % 4, angle=0.3 * i)


@pytest.fixture
def hc18_dir(tmp_path: Path) -> Path:
    """HC18 layout: 4 exams, one with a second acquisition (``_2HC``), a CSV, a test set."""
    rng = np.random.default_rng(0)
    root = tmp_path / "hc18"
    names = ["000_HC", "001_HC", "001_2HC", "002_HC", "003_HC"]
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i, stem in enumerate(names):
        save_png(root / "training_set" / f"{stem}.png", noise_image(rng, 60, 80))
        ell = hc18_ellipse(i)
        outline = mask_outline(ellipse_mask((60, 80), ell))
        save_png(root / "training_set" / f"{stem}_Annotation.png", outline.astype(np.uint8) * 255)
        spacing = 0.1 + 0.01 * i
        rows.append(f"{stem}.png,{spacing},{ell.perimeter * spacing:.2f}")
    (root / "training_set_pixel_size_and_HC.csv").write_text("\n".join(rows) + "\n")
    for stem in ["000_HC", "001_HC"]:
        save_png(root / "test_set" / f"{stem}.png", noise_image(rng, 60, 80))
    return root


@pytest.fixture
def fetal_planes_dir(tmp_path: Path) -> Path:
    """FETAL_PLANES_DB layout: ``;`` CSV with a trailing-space ``Train `` header."""
    rng = np.random.default_rng(1)
    root = tmp_path / "fpdb"
    planes = [
        "Fetal brain",
        "Fetal abdomen",
        "Fetal femur",
        "Fetal thorax",
        "Maternal cervix",
        "Other",
    ]
    lines = ["Image_name;Patient_num;Plane;Brain_plane;Train "]
    k = 0
    for patient in range(1, 9):
        for j in range(2):
            plane = planes[(patient + j) % len(planes)]
            name = f"Patient{patient:05d}_Plane{k}_1_of_2"
            save_png(root / "Images" / f"{name}.png", noise_image(rng, 40 + patient, 50))
            train = 0 if patient in (7, 8) else 1
            lines.append(f"{name};{patient};{plane};Not A Brain;{train}")
            k += 1
    (root / "FETAL_PLANES_DB_data.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def african_dir(tmp_path: Path) -> Path:
    """African planes layout: comma CSV, patient numbers repeating across countries,
    RGB and L images of several sizes."""
    rng = np.random.default_rng(2)
    root = tmp_path / "african"
    lines = ["Patient_num,Plane,Train,Center,Image_name"]
    for center, code, rgb in [
        ("Algeria", "DZA", False),
        ("Ghana", "GHA", True),
        ("Malawi", "MWI", False),
    ]:
        for patient in (1, 2, 3):
            for k, plane in enumerate(
                ["Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax"]
            ):
                name = f"patient{patient:03d}_{code}_plane{k}"
                if rgb:
                    arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
                    save_png(root / "Images" / f"{name}.png", arr, mode="RGB")
                else:
                    save_png(root / "Images" / f"{name}.png", noise_image(rng, 36, 30 + patient))
                lines.append(f"{patient},{plane},1,{center},{name}")
    (root / "African_train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """Image/mask folder pair with filled 0/255 masks named ``X_mask.png``."""
    rng = np.random.default_rng(3)
    root = tmp_path / "pairs"
    for p in range(4):
        for j in range(2):
            stem = f"Patient{p:03d}_img{j}"
            save_png(root / "images" / f"{stem}.png", noise_image(rng, 48, 48))
            ell = Ellipse(24, 24, 12 + j, 9, math.pi / 5 * p)
            save_png(
                root / "masks" / f"{stem}_mask.png",
                ellipse_mask((48, 48), ell).astype(np.uint8) * 255,
            )
    return root


@pytest.fixture
def imagefolder_dir(tmp_path: Path) -> Path:
    """One subfolder per view (publisher plane names as folder names)."""
    rng = np.random.default_rng(4)
    root = tmp_path / "imgfolder"
    for view in ["brain", "Fetal femur", "thorax"]:
        for i in range(4):
            save_png(root / view / f"s{i}_{view[:2]}.png", noise_image(rng, 32, 32))
    return root


def write_prepared(path: Path, rows: list[dict], size: tuple[int, int] = (48, 64)) -> Path:
    """A prepared dataset from rows of schema values, split by each row's ``split``.

    A row gives any column; ``image`` and ``mask`` are ``[H, W]`` uint8 arrays (or None
    for no mask). A missing image is noise of ``size`` (seed 0), drawn in row order.
    """
    import datasets

    from fusynth.data.images import encode_png
    from fusynth.data.schema import FEATURES, VIEWS, save_prepared

    rng = np.random.default_rng(0)
    defaults = {
        "mask": None,
        "view": VIEWS.index("head"),
        "cohort": "test",
        "center": "",
        "pixel_spacing_mm": None,
        "head_circumference_mm": None,
        "split": "train",
        "synthetic": False,
        "provenance": "{}",
    }
    full = []
    for row in rows:
        row = {**defaults, **row}
        image = row.get("image")
        if image is None:
            image = rng.integers(0, 255, size, dtype=np.uint8)
        row["image"] = {"bytes": encode_png(image), "path": None}
        if row["mask"] is not None:
            row["mask"] = {
                "bytes": encode_png(np.asarray(row["mask"], dtype=np.uint8)),
                "path": None,
            }
        full.append(row)
    splits = sorted({r["split"] for r in full})
    dsd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(
                {k: [r[k] for r in full if r["split"] == s] for k in FEATURES}, features=FEATURES
            )
            for s in splits
        }
    )
    save_prepared(dsd, path)
    return path


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny SD-style base saved as a diffusers folder, as a user's local model would be."""
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny-sd")


@pytest.fixture(scope="session")
def phantom_prepared(tmp_path_factory):
    """32 phantom frames (head, abdomen, femur, thorax) prepared at 64 px."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_source(root / "src", n=32, size=64, seed=1)
    prepare(
        "metadata", root / "src", root / "prepared", seed=0, val_fraction=0.2, test_fraction=0.2
    )
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_lora(tiny_base, phantom_prepared, tmp_path_factory):
    """A LoRA trained for 2 steps on the phantom (head, femur) with the tiny base, with a
    validation grid at step 2."""
    out = tmp_path_factory.mktemp("tiny_lora") / "lora"
    return _train(
        "train_lora",
        out,
        "--pretrained_model_name_or_path",
        str(tiny_base),
        "--train_data",
        str(phantom_prepared),
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--max_train_steps",
        "2",
        "--learning_rate",
        "1e-2",
        "--views",
        "head,femur",
        "--validation_prompt",
        "an ultrasound image of the fetal head",
        "--validation_steps",
        "2",
        "--num_validation_images",
        "1",
    )


@pytest.fixture(scope="session")
def small_cohort(tiny_base, tiny_lora, tmp_path_factory):
    """An unaudited 6-sample text2img cohort (head 4, femur 2) in shards of 3."""
    from fusynth.cli.main import main

    out = tmp_path_factory.mktemp("small_cohort") / "c"
    argv = ["generate", "text2img", "--base", str(tiny_base), "--lora", str(tiny_lora)]
    argv += ["--views", "head:4,femur:2", "--steps", "2", "--resolution", "32"]
    argv += ["--shard_size", "3", "--batch_size", "3", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def audited_cohort(small_cohort, phantom_prepared, tmp_path_factory):
    """``small_cohort`` copied and audited against the phantom's train split."""
    import shutil

    from fusynth.cli.main import main

    out = tmp_path_factory.mktemp("audited_cohort") / "c"
    shutil.copytree(small_cohort, out)
    argv = ["audit", "cohort", str(out), "--reference", f"{phantom_prepared}:train"]
    assert main(argv) == 0
    assert (out / "audit" / "cohort_audit.json").is_file()
    return out


def accelerate_launch(num_processes: int, *args: str) -> list[str]:
    """An ``accelerate launch`` command line for ``num_processes`` local processes.

    Without exactly one GPU it uses the --multi_gpu (torchrun) launcher: on a CPU-only
    machine fusynth then forms a gloo group; accelerate's --cpu launcher would start a
    single process.
    """
    import sys

    import torch

    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        *(["--multi_gpu"] if torch.cuda.device_count() != 1 else []),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *args,
    ]


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run_recipe(name: str, *argv: str) -> int:
    """``recipes/<name>.py``'s ``main(argv)`` in this process; its exit code."""
    import importlib
    import sys

    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name).main(list(argv))


def _train(recipe: str, out: Path, *argv: str) -> Path:
    """Run ``recipes/<recipe>.py`` (it must succeed); returns ``out``."""
    assert run_recipe(recipe, *argv) == 0
    return out


def recipe_flags(settings: dict) -> list[str]:
    """``--key value`` flags of a settings dict."""
    return [part for k, v in settings.items() for part in (f"--{k}", str(v))]


def train_on_phantom(
    recipe: str, out: Path, phantom: Path, batch: int, steps: int, every: int, *extra: str
) -> Path:
    """Run ``recipes/<recipe>.py`` at 32 px on the phantom's train split: ``batch`` images
    a step, ``steps`` steps, a checkpoint every ``every``."""
    argv = ["--train", f"{phantom}:train", "--output_dir", str(out), "--resolution", "32"]
    argv += ["--train_batch_size", str(batch), "--max_train_steps", str(steps)]
    return _train(recipe, out, *argv, "--checkpointing_steps", str(every), *extra)


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_base, phantom_prepared, tmp_path_factory):
    """A ControlNet (filled masks) trained for 2 steps on the phantom's head frames."""
    out = tmp_path_factory.mktemp("tiny_controlnet") / "cn"
    return _train(
        "train_controlnet",
        out,
        "--pretrained_model_name_or_path",
        str(tiny_base),
        "--train_data",
        str(phantom_prepared),
        "--views",
        "head",
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--max_train_steps",
        "2",
        "--learning_rate",
        "1e-3",
    )


@pytest.fixture(scope="session")
def tiny_packed_lora(tiny_base, phantom_prepared, tmp_path_factory):
    """A packed (image, image, mask) LoRA trained for 2 steps on the phantom's head frames."""
    out = tmp_path_factory.mktemp("tiny_packed") / "lora"
    return _train(
        "train_lora",
        out,
        "--pretrained_model_name_or_path",
        str(tiny_base),
        "--train_data",
        str(phantom_prepared),
        "--views",
        "head",
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--max_train_steps",
        "2",
        "--packing",
        "image,image,mask",
    )


#: The settings of ``ssl_run`` beside its data and output folder; tests/test_ssl.py
#: resumes that run with the same ones (a bitwise comparison).
SSL_RUN = {
    "resolution": 32,
    "train_batch_size": 4,
    "max_train_steps": 4,
    "checkpointing_steps": 2,
    "learning_rate": 1e-2,
}


@pytest.fixture(scope="session")
def ssl_run(phantom_prepared, tmp_path_factory):
    """A SimCLR encoder: 4 steps of recipes/train_ssl.py on the phantom (checkpoints at 2
    and 4), with the settings ``SSL_RUN``."""
    import torch

    out = tmp_path_factory.mktemp("ssl") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/test_ssl.py resumes it: bitwise-equal weights
    try:
        argv = ["--train", f"{phantom_prepared}:train", "--output_dir", str(out)]
        return _train("train_ssl", out, *argv, *recipe_flags(SSL_RUN))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    """A tiny random-init SAM saved as a fusynth SAM folder."""
    from fusynth.segment.sam import build_sam, save_sam

    return save_sam(tmp_path_factory.mktemp("sam") / "tiny-sam", build_sam("tiny"), "tiny")
