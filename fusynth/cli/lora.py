"""``fusynth lora convert``: LoRA adapters between diffusers and kohya-ss formats."""

from __future__ import annotations

import argparse
from typing import Any

from fusynth.cli.args import (
    Parser,
)


def _lora_convert(args: argparse.Namespace) -> int:
    from fusynth.diffusion.kohya import convert_lora_file

    out = convert_lora_file(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} LoRA to {out}")
    return 0


def add_commands(groups: Any) -> None:
    """Add the ``lora`` command group to the ``fusynth`` parser."""
    lora = groups.add_parser("lora", help="LoRA adapter utilities")
    lora_cmds = lora.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = lora_cmds.add_parser(
        "convert", help="convert a LoRA between diffusers and kohya-ss formats"
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="a .safetensors LoRA, or a folder holding pytorch_lora_weights.safetensors",
    )
    p.add_argument(
        "dst", metavar="DST", help="kohya: a .safetensors path (or folder); diffusers: a folder"
    )
    p.add_argument("--to", required=True, help="target format: kohya or diffusers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(func=_lora_convert)
