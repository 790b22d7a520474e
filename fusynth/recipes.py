"""What every ``recipes/*.py`` entry point shares: flags -> config -> run, exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from fusynth.config import resolve_config
from fusynth.errors import UserInputError
from fusynth.loop import REPORT_TO


def quiet_libraries() -> None:
    """Silence library chatter (weight-loading bars, dtype notices); our own log and
    progress bars say what matters."""
    import datasets
    import diffusers
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("accelerate", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_recipe(
    parser: argparse.ArgumentParser,
    config_cls: type,
    run: Callable[[Any], None],
    argv: list[str] | None = None,
) -> int:
    """Parse flags (only those given), merge them over ``--config``, run, map errors.

    Returns 0 on success, 2 on bad input (one line naming the flag or file; a traceback
    only with ``--debug``).
    """
    try:
        given = vars(parser.parse_args(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    debug = given.pop("debug", False)
    logging.basicConfig(level=logging.INFO, format="fusynth: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        config = resolve_config(config_cls, given, given.pop("config", None))
        run(config)
    except UserInputError as exc:
        if debug:
            raise
        print(f"fusynth: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_training_recipe(
    parser: argparse.ArgumentParser,
    config_cls: type,
    train: Callable[[Any], Any],
    what: str,
    argv: list[str] | None = None,
) -> int:
    """:func:`run_recipe` for a training entry point: train, then the main process says
    how many steps ran, how fast, and where ``what`` (adapter, controlnet) was written."""

    def run(config: Any) -> None:
        from fusynth.distributed import partial_state

        result = train(config)
        if partial_state().is_main_process:
            print(
                f"trained {result.global_step} steps ({result.images_per_second:.1f} images/s); "
                f"{what} in {result.output_dir}"
            )

    return run_recipe(parser, config_cls, run, argv)


def add_run_flags(group: Any, default_output: str) -> None:
    """The checkpoint and output flags every training recipe shares (SUPPRESS defaults;
    the defaults themselves live in each config dataclass)."""
    group.add_argument(
        "--checkpointing_steps", type=int, help="save checkpoint-N every N steps (500)"
    )
    group.add_argument(
        "--checkpoints_total_limit", type=int, help="keep at most this many checkpoints"
    )
    group.add_argument("--resume_from_checkpoint", help="latest, or a checkpoint folder")
    group.add_argument("--output_dir", help=f"({default_output})")
    group.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an output_dir that holds a run",
    )
    group.add_argument("--report_to", choices=REPORT_TO, help="(none)")


def add_segmentation_data_flags(group: Any) -> None:
    """The data flags of the segmentation recipes (``finetune_sam.py``, ``train_unet.py``):
    real ``DIR[:split]``, a synthetic cohort mixed in by count or ratio, validation."""
    group.add_argument("--train", help="real training data DIR[:split] (default: the phantom)")
    group.add_argument("--synthetic", help="a pairs cohort to add")
    group.add_argument("--n_real", type=int, help="real images to use, chosen by subject (all)")
    group.add_argument(
        "--n_synthetic", type=int, help="synthetic pairs to add (all of --synthetic)"
    )
    group.add_argument(
        "--synthetic_ratio",
        type=float,
        help="synthetic pairs per real image, instead of --n_synthetic",
    )
    group.add_argument(
        "--validation",
        help="patient-disjoint validation DIR[:split], or none (default: the --train folder's validation split)",
    )
