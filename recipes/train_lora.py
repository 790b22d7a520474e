"""LoRA fine-tuning of a Stable-Diffusion-family model on fetal ultrasound.

    accelerate launch recipes/train_lora.py --train_data prepared/ --views brain,femur \
        --max_train_steps 1000 --output_dir my-lora

Flags use diffusers' names; ``--config FILE.yaml`` sets any of them and flags override
it. With no ``--pretrained_model_name_or_path`` a tiny smoke base is used, and with no
``--train_data`` the built-in phantom. The loop is ``fusynth.diffusion.lora.train_lora``.
"""

from __future__ import annotations

import argparse
import sys

from fusynth.diffusion.lora import LR_SCHEDULERS, MIXED_PRECISION, REPORT_TO
from fusynth.recipes import run_recipe


def build_parser() -> argparse.ArgumentParser:
    """The recipe's flags (defaults live in ``LoraTrainConfig``)."""
    p = argparse.ArgumentParser(
        prog="train_lora.py",
        description=__doc__.splitlines()[0],
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of flag values; flags given here override it")
    g = p.add_argument_group("base model")
    g.add_argument(
        "--pretrained_model_name_or_path",
        help="hub id or local diffusers folder (default: tiny smoke base)",
    )
    g.add_argument("--revision", help="hub revision")
    g.add_argument("--variant", help="weight variant, e.g. fp16")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", help="prepared dataset DIR[:split] (default: the phantom)")
    g.add_argument("--split", help="split to train on (train)")
    g.add_argument("--views", help="comma-separated views to train on (default: all present)")
    g.add_argument(
        "--caption_template",
        help="caption per view, with {view} (an ultrasound image of the fetal {view})",
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
    g.add_argument("--learning_rate", type=float, help="UNet LoRA learning rate (1e-4)")
    g.add_argument(
        "--text_encoder_lr", type=float, help="text encoder LoRA learning rate (= --learning_rate)"
    )
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="(constant)")
    g.add_argument("--lr_warmup_steps", type=int, help="(0)")
    g.add_argument("--adam_beta1", type=float, help="(0.9)")
    g.add_argument("--adam_beta2", type=float, help="(0.999)")
    g.add_argument("--adam_weight_decay", type=float, help="(1e-2)")
    g.add_argument("--adam_epsilon", type=float, help="(1e-8)")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping (1.0)")
    g.add_argument("--rank", type=int, help="LoRA rank (4)")
    g.add_argument("--lora_alpha", type=float, help="LoRA alpha (= rank)")
    g.add_argument("--lora_dropout", type=float, help="(0.0)")
    g.add_argument(
        "--train_text_encoder", action="store_true", help="also train a text encoder LoRA"
    )
    g.add_argument("--snr_gamma", type=float, help="min-SNR loss weighting gamma (off)")
    g.add_argument("--noise_offset", type=float, help="(0.0)")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISION, help="(no)")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--seed", type=int, help="(0)")
    g = p.add_argument_group("checkpoints, validation, output")
    g.add_argument("--checkpointing_steps", type=int, help="save checkpoint-N every N steps (500)")
    g.add_argument("--checkpoints_total_limit", type=int, help="keep at most this many checkpoints")
    g.add_argument("--resume_from_checkpoint", help="latest, or a checkpoint folder")
    g.add_argument("--validation_prompt", action="append", help="repeatable")
    g.add_argument("--validation_steps", type=int, help="(100)")
    g.add_argument("--num_validation_images", type=int, help="per prompt (4)")
    g.add_argument(
        "--validation_inference_steps", type=int, help="sampler steps for validation (20)"
    )
    g.add_argument("--output_dir", help="(fusynth-lora)")
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over in an output_dir that holds a run",
    )
    g.add_argument("--report_to", choices=REPORT_TO, help="(none)")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    from fusynth.diffusion.lora import LoraTrainConfig, train_lora

    def run(config: LoraTrainConfig) -> None:
        from fusynth.distributed import partial_state

        result = train_lora(config)
        if partial_state().is_main_process:
            print(
                f"trained {result.global_step} steps ({result.images_per_second:.1f} images/s); "
                f"adapter in {result.output_dir}"
            )

    return run_recipe(build_parser(), LoraTrainConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
