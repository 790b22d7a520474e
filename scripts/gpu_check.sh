#!/usr/bin/env bash
# The real-size dress rehearsal (benchmarks/real_size.py) on a CUDA GPU: an SD 1.5-shaped
# random base as a diffusers folder and a single file, one bf16 LoRA step at 512 px with
# gradient checkpointing and cached latents, one 20-step 512-px image, ViT-B SAM decoder
# and --train_parts all steps. Prints peak RSS, seconds per step and
# torch.cuda.max_memory_allocated per part. Sized to finish in about 5 minutes (most of
# it building and saving the 4 GB random base once; later runs reuse it).
#
#   scripts/gpu_check.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
WORK="${1:-.bench/gpu_check}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")'
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB")'
exec timeout 900 "$PY" benchmarks/real_size.py --work "$WORK"
