"""Small run folders in each command's file layout, written by hand: fast report tests.

The keys and shapes are those the commands write (see demo_out after `make demo`);
tests/report/conftest.py makes real ones with the commands themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def write_png(path: Path, size: tuple[int, int] = (64, 48), value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]), value, dtype=np.uint8)
    arr[::7] = 255
    Image.fromarray(arr).save(path)
    return path


def metric(mean: float, low: float, high: float, n: int, sd: float = 0.1) -> dict:
    return {"mean": mean, "sd": sd, "ci_low": low, "ci_high": high, "n": n}


def segmentation_eval(path: Path, dice: float = 0.4321, model_type: str = "vit_b") -> Path:
    """``fusynth evaluate segmentation``'s files: summary.json with its numbers, and a
    per_image.csv whose Dice disagrees with them (the report must not recompute)."""
    entry = {
        "n_predictions": 14,
        "empty_predictions": 3,
        "dice": metric(dice, 0.4012, 0.5123, 7),
        "iou": metric(0.33, 0.3, 0.4, 7),
        "hd95_px": metric(12.5, 10.0, 15.0, 6),
        "hd95_mm": None,
    }
    write_json(
        path / "summary.json",
        {
            "model": "models/sam-run",
            "model_sha256": "ab" * 32,
            "model_type": model_type,
            "data": "data/hc18:test",
            "n_images": 7,
            "n_subjects": 5,
            "skipped": {"empty_mask": 1, "no_mask": 0},
            "settings": {
                "box_jitter": [0],
                "rounds": 2,
                "seed": 0,
                "bootstrap": {"n_boot": 2000, "confidence": 0.95},
                "examples_at_jitter": 0,
            },
            "empty_predictions": 3,
            "by_jitter": {"0": entry},
        },
    )
    (path / "per_image.csv").write_text(
        "key,subject_id,box_jitter,round,box,dice\na,s,0,0,1 2 3 4,0.99\n"
    )
    write_png(path / "boxplot.png", (400, 300))
    write_png(path / "overlays" / "best.png")
    write_png(path / "overlays" / "worst.png")
    return path


def classification_eval(path: Path, what: str = "classifier") -> Path:
    """``fusynth evaluate classification`` (or zeroshot with ``what="zero-shot"``)."""
    acc = {"value": 0.583333, "ci_low": 0.333333, "ci_high": 0.833333}
    setup = {
        "what": what,
        "model": "models/cls" if what == "classifier" else "fusynth-tiny-clip",
        "data": "data/fpdb:test",
        "classes": ["brain", "femur"],
        "n_boot": 1000,
        "confidence": 0.95,
        "seed": 0,
        "metrics": ["standard", "fulora-legacy"],
    }
    if what == "zero-shot":
        setup.update(pretrained=None, smoke_model=True)
    else:
        setup.update(model_sha256="cd" * 32, backbone="resnet18", resolution=224)
    write_json(
        path / "metrics.json",
        {
            "setup": setup,
            "n_images": 12,
            "n_subjects": 6,
            "overall": {"accuracy": acc, "macro_f1": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.7}},
            "per_view": {
                "brain": {
                    "support": 6,
                    "predicted": 0,
                    "precision": {"value": None, "ci_low": None, "ci_high": None},
                    "recall": {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0},
                    "f1": 0.0,
                    "auroc": 0.5,
                }
            },
            "per_center": {},
            "confusion_matrix": {"classes": ["brain", "femur"], "counts": [[0, 6], [0, 6]]},
            "fulora_legacy": {"ACC": 0.61, "AUC": 0.72, "F1": 0.66, "note": "legacy note"},
        },
    )
    (path / "predictions.csv").write_text("key,true_view,predicted_view\n")
    write_png(path / "confusion.png", (500, 400))
    return path


def seg_experiment(path: Path) -> Path:
    """``fusynth experiment seg-augment``'s request, table.csv and chart."""
    write_json(
        path / "experiment.json",
        {
            "real": "data/hc18",
            "test": ["data/hc18:test"],
            "synthetic": "pairs",
            "n_real": [4, 8],
            "n_synthetic": [0, 8],
            "repeats": 2,
            "model_type": "tiny",
            "checkpoint": None,
        },
    )
    (path / "table.csv").write_text(
        "test,n_real,n_synthetic,repeats,dice_mean,dice_sd,hd95_mm_mean,hd95_mm_sd\n"
        "hc18:test,4,0,2,0.2468,0.0135,,\n"
        "hc18:test,4,8,2,0.3579,0.0246,,\n"
    )
    write_png(path / "dice_vs_real.png", (640, 400))
    return path


def training_run(path: Path, kind: str) -> Path:
    """The config.json / train_log.json of a training output of ``kind``."""
    config = {"max_train_steps": 4, "resolution": 32, "seed": 0, "train_data": "data/x:train"}
    if kind == "lora":
        (path).mkdir(parents=True, exist_ok=True)
        (path / "pytorch_lora_weights.safetensors").write_bytes(b"")
        config.update(smoke_base=True, rank=4, views=["head"])
        write_png(path / "validation" / "step-000004.png", (128, 32))
    elif kind == "controlnet":
        write_json(path / "controlnet" / "config.json", {})
        config.update(smoke_base=False, conditioning="filled")
    elif kind == "sam":
        write_json(path / "sam_config.json", {"model_type": "tiny"})
        config.update(model_type="tiny", checkpoint=None)
    elif kind == "classifier":
        write_json(path / "classifier_config.json", {})
        config.update(backbone="resnet18", weights=None, smoke_model=False)
    elif kind == "ssl":
        write_json(path / "ssl_config.json", {})
    write_json(path / "config.json", config)
    log = {"global_step": 4, "losses": [1.0, 0.9, 0.8, 0.7]}
    if kind == "sam":
        log["validation"] = [{"step": 4, "dice": 0.5}]
    if kind == "classifier":
        log["validation"] = [{"step": 4, "accuracy": 0.5, "macro_f1": 0.4}]
        log["best"] = {"metric": "macro_f1", "step": 4, "value": 0.4}
    write_json(path / "train_log.json", log)
    return path


def published_model(path: Path) -> Path:
    """A ``fusynth publish model --dry-run`` folder: weights, config, a card."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "pytorch_lora_weights.safetensors").write_bytes(b"\0" * 2048)
    write_json(path / "config.json", {"train_data": "<local>"})
    (path / "README.md").write_text(
        "---\nlicense: other\nlibrary_name: diffusers\ntags:\n- fusynth\n- lora\n---\n\n"
        "# tiny-lora\n\n**Not for clinical use**: nothing here has been validated.\n"
    )
    return path
