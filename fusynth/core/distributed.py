"""Process groups for ``accelerate launch`` / ``torchrun``, GPU or CPU alike.

accelerate only forms a CPU process group (gloo) when told it runs on the CPU; without
that, two processes started by ``torchrun`` on a machine without a GPU each believe they
are alone and race on the output folder. Every fusynth entry point builds its
Accelerator or PartialState here.
"""

from __future__ import annotations

import os
from typing import Any


def use_cpu() -> bool:
    """True when there is no CUDA device, or ``ACCELERATE_USE_CPU`` asks for the CPU."""
    import torch

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def make_accelerator(**kwargs: Any):
    """``accelerate.Accelerator`` that joins the launcher's process group on CPU too."""
    from accelerate import Accelerator

    return Accelerator(cpu=use_cpu(), **kwargs)


def partial_state():
    """``accelerate.PartialState`` (process index and count) on CPU or GPU."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())
