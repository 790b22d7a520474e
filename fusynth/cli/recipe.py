"""What every ``recipes/*.py`` entry point shares: flags -> config -> run, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
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
    if "--check" not in parser._option_string_actions:
        parser.add_argument(
            "--check",
            action="store_true",
            help="check the flags, the config and the input and output paths, then exit "
            "(0: fine, 2: the one line says what is wrong) without loading a model or "
            "data: run it before accelerate launch",
        )
    try:
        given = vars(parser.parse_args(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    debug = given.pop("debug", False)
    check = given.pop("check", False)
    logging.basicConfig(level=logging.INFO, format="fusynth: %(message)s", stream=sys.stderr)
    try:
        config = resolve_config(config_cls, given, given.pop("config", None))
        if check:
            check_recipe(config)
            print(f"fusynth: --check: the flags and config of {parser.prog} are valid")
            return 0
        quiet_libraries()
        run(config)
    except (UserInputError, OSError) as exc:
        error = exc if isinstance(exc, UserInputError) else as_user_error(exc)
        if debug or error is None:
            raise
        print(f"fusynth: error: {error}", file=sys.stderr)
        return 2
    return 0


#: Config fields that name a prepared dataset or cohort ``DIR[:split]``.
DATA_FIELDS = ("train_data", "train", "validation", "synthetic")
#: Config fields that name a local file or folder (never a Hub id).
PATH_FIELDS = ("checkpoint", "original_config", "captions")


def check_data_spec(spec: str, flag: str) -> None:
    """Check a ``DIR[:split]`` without loading it: the folder exists and, when it is a
    prepared dataset, has the named split (read from its ``dataset_dict.json``).

    Raises:
        UserInputError: naming ``flag``, the folder and the splits there are.
    """
    head, sep, tail = str(spec).rpartition(":")
    folder, split = Path(spec), None
    if sep and head and not folder.exists():
        folder, split = Path(head), tail
    if not folder.exists():
        raise UserInputError(f"{flag}: {folder} does not exist")
    index = folder / "dataset_dict.json"
    if split and index.is_file():
        splits = json.loads(index.read_text()).get("splits", [])
        if split not in splits:
            raise UserInputError(
                f"{flag}: {folder} has no split {split!r} (splits: {', '.join(splits) or 'none'})"
            )


def check_recipe(config: Any) -> None:
    """What ``--check`` verifies beyond the config's own checks (done when it was built),
    with nothing loaded and nothing written: the data folders and their splits, local
    files, and the output folder (not foreign; resumable or replaceable as asked).

    Raises:
        UserInputError: the first problem, naming its flag.
    """
    from fusynth.core.io import check_foreign
    from fusynth.core.loop import find_resume_checkpoint, list_checkpoints, staging_dir

    for name in DATA_FIELDS:
        spec = getattr(config, name, None)
        if isinstance(spec, str) and spec and spec != "none":
            check_data_spec(spec, f"--{name}")
    for name in PATH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, str) and value and not Path(value).exists():
            raise UserInputError(f"--{name}: {value} does not exist")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output_dir: {out} exists and is not a folder")
    check_foreign(out, "--output_dir")
    resume, overwrite = config.resume_from_checkpoint, config.overwrite_output_dir
    holds_run = out.is_dir() and (list_checkpoints(out) or any(out.glob("*.safetensors")))
    if resume is None and not overwrite and holds_run:
        raise UserInputError(
            f"--output_dir: {out} already holds a run; resume it with "
            "--resume_from_checkpoint latest or pass --overwrite_output_dir"
        )
    if resume is not None and not (overwrite and staging_dir(out).is_dir()):
        find_resume_checkpoint(resume, out)


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


def recipe_parser(prog: str, doc: str | None) -> Any:
    """A recipe's parser: flags not given stay absent (each config dataclass holds the
    defaults, so ``--config FILE.yaml`` can set them), kebab spellings accepted, and
    ``--config`` itself. ``doc``: the recipe's docstring (its first line describes it)."""
    from fusynth.cli.args import Parser

    p = Parser(
        prog=prog,
        description=doc.splitlines()[0] if doc else None,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of flag values; flags given here override it")
    return p


def add_common_flags(
    p: Any, default_lr: str = "1e-4", default_output: str = "fusynth-lora"
) -> None:
    """The flags every training recipe shares (argparse with SUPPRESS defaults; the
    defaults themselves live in :class:`TrainConfig`)."""
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
