"""Save a random-init SD-style base as a diffusers folder, for benchmarks and tests.

    .venv/bin/python scripts/make_random_base.py OUT [--size tiny|sd15] [--seed 0]

``sd15`` has Stable Diffusion 1.5's architecture (about 1.07 B parameters, 4.3 GB in
fp32) with random weights: it times real-size training and generation where the real
weights cannot be downloaded. Its images are noise. Both sizes are marked as smoke
models, so fusynth says so whenever it loads them.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.diffusion.tiny import CONFIGS, save_tiny_base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--size", choices=list(CONFIGS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    out = save_tiny_base(args.out, seed=args.seed, overwrite=args.overwrite, size=args.size)
    print(f"wrote a random-init {args.size} base to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
