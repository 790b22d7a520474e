"""What every ``recipes/*.py`` entry point shares: flags -> config -> run, exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from fusynth.core.config import resolve_config
from fusynth.core.errors import UserInputError
from fusynth.core.io import as_user_error
from fusynth.core.loop import MIXED_PRECISION, REPORT_TO
from fusynth.diffusion.config import LR_SCHEDULERS, PREDICTION_TYPES


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
    except (UserInputError, OSError) as exc:
        error = exc if isinstance(exc, UserInputError) else as_user_error(exc)
        if debug or error is None:
            raise
        print(f"fusynth: error: {error}", file=sys.stderr)
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
        from fusynth.core.distributed import partial_state

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


def add_common_flags(
    p: Any, default_lr: str = "1e-4", default_output: str = "fusynth-lora"
) -> None:
    """The flags every training recipe shares (argparse with SUPPRESS defaults; the
    defaults themselves live in :class:`TrainConfig`)."""
    from fusynth.cli.recipe import add_run_flags

    p.add_argument("--config", help="YAML file of flag values; flags given here override it")
    g = p.add_argument_group("base model")
    g.add_argument(
        "--pretrained_model_name_or_path",
        help="hub id, local diffusers folder or single-file .safetensors/.ckpt "
        "(default: tiny smoke base)",
    )
    g.add_argument(
        "--original_config",
        help="configs of a single-file base: LDM .yaml or diffusers config folder "
        "(default: <file>.yaml beside it, else fusynth's SD 1.x/2.x configs)",
    )
    g.add_argument("--revision", help="hub revision")
    g.add_argument("--variant", help="weight variant, e.g. fp16")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", help="prepared dataset DIR[:split] (default: the phantom)")
    g.add_argument("--split", help="split to train on (train)")
    g.add_argument("--views", help="comma-separated views to train on (default: all present)")
    g.add_argument(
        "--caption_template",
        help="caption with {view} and optionally {trimester} (an ultrasound image of the fetal {view})",
    )
    g.add_argument("--captions", help="YAML file of view: caption, instead of the template")
    g.add_argument(
        "--resolution",
        type=int,
        help="training resolution, divisible by 8 (512; 64 for the smoke base)",
    )
    g.add_argument("--center_crop", action="store_true", help="crop to square instead of padding")
    g.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, help="per-process batch size (4)")
    g.add_argument(
        "--gradient_accumulation_steps", type=int, help="micro-batches per optimizer step (1)"
    )
    g.add_argument("--max_train_steps", type=int, help="optimizer steps (overrides epochs)")
    g.add_argument(
        "--num_train_epochs", type=int, help="epochs when --max_train_steps is not given (10)"
    )
    g.add_argument("--learning_rate", type=float, help=f"learning rate ({default_lr})")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--adam_beta1", type=float, help="(0.9)")
    g.add_argument("--adam_beta2", type=float, help="(0.999)")
    g.add_argument("--adam_weight_decay", type=float, help="(1e-2)")
    g.add_argument("--adam_epsilon", type=float, help="(1e-8)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument("--snr_gamma", type=float, help="min-SNR loss weighting gamma (off)")
    g.add_argument("--noise_offset", type=float, help="(0.0)")
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION,
        help="(accelerate launch's --mixed_precision or config, else no)",
    )
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument(
        "--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit (needs bitsandbytes)"
    )
    g.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    g.add_argument(
        "--dataloader_num_workers",
        type=int,
        help="processes decoding training images while their latents are cached (0)",
    )
    g.add_argument(
        "--prediction_type",
        choices=PREDICTION_TYPES,
        help="what the UNet learns to predict (the base scheduler's)",
    )
    g.add_argument(
        "--clip_skip",
        type=int,
        help="text encoder layers to skip from the end, as diffusers' clip_skip (A1111's "
        "clip skip 2 is 1); recorded so generation uses the same (none)",
    )
    g.add_argument("--seed", type=int, help="(0)")
    g = p.add_argument_group("checkpoints, validation, output")
    add_run_flags(g, default_output)
    g.add_argument("--validation_prompt", action="append", help="repeatable")
    g.add_argument("--validation_steps", type=int, help="(100)")
    g.add_argument(
        "--validation_epochs", type=int, help="validate every N epochs instead of N steps"
    )
    g.add_argument("--num_validation_images", type=int, help="per prompt (4)")
    g.add_argument(
        "--validation_inference_steps", type=int, help="sampler steps for validation (20)"
    )
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
