"""Load the demo's dry-run Hub folders with the stock libraries, as a downloader would.

    python scripts/check_published.py demo_out/publish

- ``lora/``: ``StableDiffusionPipeline.load_lora_weights`` into the base the LoRA names
  (the built-in smoke base when it names a local one), and one short generation.
- ``cohort/``: ``datasets.load_dataset`` reads the Parquet shards and their card.
- ``sam/``: a segment-anything ``Sam`` (``sam_model_registry`` for ViT-B/L/H, the same
  class in the smoke shape for ``tiny``) loads ``model.safetensors`` strictly.

Exits 1 with one line naming the folder that does not load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check_lora(folder: Path) -> str:
    import torch
    from diffusers import StableDiffusionPipeline

    from fusynth.diffusion.tiny import default_base

    config = json.loads((folder / "config.json").read_text())
    base = config["pretrained_model_name_or_path"]
    if config.get("smoke_base") or base.startswith("<local>/"):
        base = str(default_base())
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder))
    if not any("lora" in n for n, _ in pipe.unet.named_parameters()):
        raise RuntimeError("no LoRA layers in the UNet after load_lora_weights")
    image = pipe(
        "an ultrasound image of the fetal head",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    return f"LoRA loaded into {Path(base).name}, generated {image.shape}"


def check_cohort(folder: Path) -> str:
    import tempfile

    import datasets

    with tempfile.TemporaryDirectory() as cache:  # a check leaves no cache behind
        split = next(iter(datasets.load_dataset(str(folder), cache_dir=cache).values()))
        views = split.features["view"].names
        first = split[0]["image"]
        names = sorted({views[v] for v in split["view"]})
        return f"{len(split)} samples, views {names}, {first.size} px"


def check_sam(folder: Path) -> str:
    from safetensors.torch import load_file
    from segment_anything import sam_model_registry

    model_type = json.loads((folder / "sam_config.json").read_text())["model_type"]
    if model_type in sam_model_registry:  # vit_b, vit_l, vit_h: segment-anything's own
        sam = sam_model_registry[model_type](checkpoint=None)
    else:  # the smoke size: segment-anything's Sam class in fusynth's tiny shape
        from fusynth.segment.sam import build_sam

        sam = build_sam(model_type)
    sam.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return f"{model_type} SAM loaded strictly ({sum(p.numel() for p in sam.parameters()):,} parameters)"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/check_published.py PUBLISH_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    checks = {"lora": check_lora, "cohort": check_cohort, "sam": check_sam}
    for name, check in checks.items():
        folder = root / name
        if not folder.is_dir():
            continue
        try:
            print(f"{folder}: {check(folder)}")
        except Exception as exc:  # noqa: BLE001 - any failure means it does not load
            reason = " ".join(str(exc).split())[:300]
            print(f"{folder}: does not load with the stock libraries: {reason}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
