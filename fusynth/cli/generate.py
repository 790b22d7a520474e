"""``fusynth generate text2img|pairs``: synthetic cohorts."""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.cli.args import (
    Parser,
    add_cohort_flags,
    request_from,
)


def _generate_text2img(args: argparse.Namespace) -> int:
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.cohort.text2img import Text2ImgRequest, generate_text2img, parse_views
    from fusynth.core.distributed import partial_state

    quiet_libraries()
    req = request_from(Text2ImgRequest, args, views=parse_views(args.views))
    result = generate_text2img(req)
    if partial_state().is_main_process:
        if result.generated:
            print(
                f"generated {result.generated} images in this process ({result.images_per_second:.2f} images/s); "
                f"cohort of {result.n} in {result.out} (previews in {result.out / 'previews'})"
            )
        else:
            print(f"{result.out} is complete ({result.n} samples); nothing to do")
    return 0


def _generate_pairs(args: argparse.Namespace) -> int:
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.cohort.pairs import PairsRequest, generate_pairs
    from fusynth.cohort.writer import STATS_FILE
    from fusynth.core.distributed import partial_state

    quiet_libraries()
    req = request_from(PairsRequest, args)
    result = generate_pairs(req)
    if partial_state().is_main_process:
        import json

        stats = json.loads((result.out / STATS_FILE).read_text())
        print(
            f"{result.out}: {stats['rows']} of {result.n} pairs ({args.method}); {stats['attempts']} "
            f"attempts, {stats['rejected']} rejected by the mask extractor, {stats['left_out']} left out"
            + ("" if result.generated else " (already complete: nothing to do)")
        )
    return 0


def add_commands(groups: Any) -> None:
    """Add the ``generate`` command group to the ``fusynth`` parser."""
    gen = groups.add_parser("generate", help="generate synthetic cohorts")
    gen_cmds = gen.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = gen_cmds.add_parser("text2img", help="images per fetal view from a base and a LoRA")
    p.add_argument("--views", required=True, help="view:count list, e.g. brain:1000,femur:500")
    add_cohort_flags(
        p,
        scheduler="euler",
        steps=20,
        unit="images",
        resolution="512; 64 for the smoke base",
        base="the tiny smoke base",
    )
    p.add_argument("--lora", help="LoRA folder (train_lora.py output) or .safetensors file")
    p.add_argument(
        "--lora_scale", dest="lora_scale", type=float, default=1.0, help="LoRA scale (1.0)"
    )
    p.add_argument(
        "--prompt_template",
        dest="prompt_template",
        help="prompt per view with {view} (default: the adapter's training captions)",
    )
    p.add_argument("--prompts", help="YAML file of view: prompt")
    p.add_argument(
        "--prompt_values",
        help="fill the template's schema fields per sample: 'real' (drawn from the adapter's "
        "training data) or FIELD=LOW:HIGH,... (uniform; the rest drawn from real rows)",
    )
    p.set_defaults(func=_generate_text2img)

    p = gen_cmds.add_parser("pairs", help="fetal head image/mask pairs (packed LoRA or ControlNet)")
    p.add_argument("--method", required=True, help="packed or controlnet")
    p.add_argument(
        "--adapter",
        required=True,
        help="train_lora.py --packing output, or train_controlnet.py output",
    )
    p.add_argument("--n", required=True, type=int, help="number of pairs")
    add_cohort_flags(
        p,
        scheduler="unipc",
        steps=30,
        unit="pairs",
        resolution="the adapter's",
        base="the adapter's base",
    )
    p.add_argument(
        "--masks_from",
        dest="masks_from",
        help="a prepared DIR[:split] whose masks are reused, or 'ellipse' to sample head ellipses "
        "fitted to the adapter's training masks (controlnet: required; packed: guides img2img)",
    )
    p.add_argument("--group", help="ellipse masks: draw from one group only (e.g. trimester 2)")
    p.add_argument(
        "--hc_mm",
        help="ellipse masks: head circumference in mm, one value or LOW,HIGH (uniform); the "
        "pairs' HC is then known by construction",
    )
    p.add_argument(
        "--hc_pixel_spacing_mm",
        type=float,
        help="with --hc_mm: mm per pixel of the generated frames",
    )
    p.add_argument("--prompt", help="prompt (default: the adapter's training caption)")
    p.add_argument(
        "--lora_scale",
        dest="lora_scale",
        type=float,
        default=0.9,
        help="packed: LoRA scale (0.9)",
    )
    p.add_argument("--packing", help="packed: the packing the adapter must have been trained with")
    p.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="packed with --masks_from: img2img strength (0.75)",
    )
    p.add_argument(
        "--threshold", type=int, default=180, help="packed: mask channel threshold (180)"
    )
    p.add_argument(
        "--max_residual",
        dest="max_residual",
        type=float,
        default=0.15,
        help="packed: largest accepted 1 - IoU between mask component and its ellipse (0.15)",
    )
    p.add_argument(
        "--max_attempts",
        dest="max_attempts",
        type=int,
        default=4,
        help="packed: draws per pair before it is left out (4)",
    )
    p.add_argument(
        "--conditioning",
        help="controlnet: the conditioning the adapter must have been trained with",
    )
    p.add_argument(
        "--conditioning_scale",
        dest="conditioning_scale",
        type=float,
        default=1.0,
        help="controlnet: strength (1.0)",
    )
    p.set_defaults(func=_generate_pairs)
