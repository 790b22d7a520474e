"""Sections of training outputs: LoRA, ControlNet, classifier, SAM and SimCLR."""

from __future__ import annotations

from typing import Any

import fusynth.report.figures as figures
from fusynth.report.detect import Run
from fusynth.report.model import (
    Section,
    Table,
    num,
    setting,
    short_hash,
)
from fusynth.report.sections.common import (
    MAX_PICTURES_PER_GLOB,
    PHANTOM_LINE,
    SMOKE_LINE,
    Context,
    flat_settings,
    pictures,
    read_json,
)


def _training_common(run: Run, sec: Section, config: dict[str, Any], log: dict[str, Any]) -> None:
    steps = log.get("global_step")
    sec.facts.append(
        ("steps", f"{setting(steps)} of {setting(config.get('max_train_steps'))} asked")
    )
    for key, label in [
        ("resolution", "resolution"),
        ("train_batch_size", "batch size"),
        ("learning_rate", "learning rate"),
        ("seed", "seed"),
        ("num_processes", "processes"),
    ]:
        if key in config:
            sec.facts.append((label, setting(config[key])))
    sec.settings = flat_settings(config)


def _loss_table(log: dict[str, Any]) -> Table | None:
    losses = [v for v in log.get("losses", []) if v is not None]
    if not losses:
        return None
    return Table(
        "Training loss (as logged)",
        ["steps logged", "first step", "last step"],
        [[str(len(losses)), num(losses[0], 4), num(losses[-1], 4)]],
    )


def diffusion_adapter(run: Run, ctx: Context, sec: Section) -> None:
    """A LoRA or ControlNet training output: data, base, settings, loss, sample grids."""
    config = read_json(run.path / "config.json")
    log = read_json(run.path / "train_log.json")
    base = config.get("pretrained_model_name_or_path")
    sec.facts += [
        (
            "base model",
            f"{setting(base)}{' (tiny smoke base)' if config.get('smoke_base') else ''}",
        ),
        (
            "trained on",
            f"{setting(config.get('train_data'))}: {setting(config.get('num_train_images'))} images "
            f"of {setting(config.get('num_train_subjects'))} subjects",
        ),
        ("views", setting(config.get("views"))),
    ]
    if run.kind == "lora":
        sec.facts.append(
            (
                "LoRA rank / alpha",
                f"{setting(config.get('rank'))} / {setting(config.get('lora_alpha'))}",
            )
        )
        if config.get("packing"):
            sec.facts.append(("packing", setting(config["packing"])))
        captions = config.get("captions_by_view") or {}
        if captions:
            sec.numbers.append(
                Table(
                    "Caption per view (its prompt)",
                    ["view", "caption"],
                    [[v, c] for v, c in captions.items()],
                )
            )
    else:
        sec.facts.append(("conditioning", setting(config.get("conditioning"))))
    _training_common(run, sec, config, log)
    table = _loss_table(log)
    if table:
        sec.numbers.append(table)
    if log.get("losses"):
        sec.pictures.append(figures.loss_curve(log["losses"], f"{run.info.title} training loss"))
    prompts = config.get("validation_prompt") or []
    prompt = prompts[0] if isinstance(prompts, list) and prompts else prompts
    sec.pictures += pictures(
        run,
        "validation/step-*.png",
        lambda p: (
            f"Validation samples at step {int(p.stem.split('-')[-1])}"
            + (f' for "{prompt}"' if prompt else "")
        ),
        MAX_PICTURES_PER_GLOB,
    )
    sec.reading.append(
        "The loss is the diffusion model's noise-prediction error at random noise levels: it is "
        "noisy by nature and a flat curve is normal. Judge an adapter by its samples and by the "
        "cohort audit, not by its loss."
    )
    if config.get("smoke_base"):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True


def classifier(run: Run, ctx: Context, sec: Section) -> None:
    """A view classifier: data (real and synthetic per view), backbone, validation."""
    config = read_json(run.path / "config.json")
    log = read_json(run.path / "train_log.json")
    weights = config.get("weights")
    sec.facts += [
        (
            "backbone",
            f"{setting(config.get('backbone'))}, "
            + (
                f"from {weights} ({short_hash(config.get('weights_sha256'))})"
                if weights
                else "random init"
            ),
        ),
        (
            "real training data",
            f"{setting(config.get('train'))}: {setting(config.get('num_real'))} images of {setting(config.get('num_real_subjects'))} subjects",
        ),
        (
            "synthetic",
            f"{setting(config.get('synthetic'))}: {setting(config.get('num_synthetic'))} images",
        ),
        (
            "validation",
            f"{setting(config.get('validation'))}: {setting(config.get('num_validation'))} images",
        ),
    ]
    _training_common(run, sec, config, log)
    real = config.get("real_per_view") or {}
    syn = config.get("synthetic_per_view") or {}
    val = config.get("validation_per_view") or {}
    views = list(dict.fromkeys([*real, *syn, *val]))
    if views:
        sec.numbers.append(
            Table(
                "Training and validation images per view",
                ["view", "real (train)", "synthetic", "validation"],
                [[v, str(real.get(v, 0)), str(syn.get(v, 0)), str(val.get(v, 0))] for v in views],
            )
        )
    best = log.get("best") or {}
    history = log.get("validation") or []
    if best:
        sec.numbers.append(
            Table(
                "Model selection on the validation split",
                [
                    "kept step",
                    f"validation {best.get('metric')}",
                    "validations",
                    "validation images",
                ],
                [
                    [
                        setting(best.get("step")),
                        num(best.get("value")),
                        str(len(history)),
                        setting(config.get("num_validation")),
                    ]
                ],
            )
        )
    if log.get("losses"):
        metric = best.get("metric", "accuracy")
        points = [(h["step"], h[metric]) for h in history if h.get(metric) is not None]
        sec.pictures.append(
            figures.loss_curve(
                log["losses"], "Classifier training loss", points, f"validation {metric}"
            )
        )
    sec.reading.append(
        "The kept weights are those of the validation with the best "
        f"{best.get('metric', 'score')}; a validation split of a few images makes that choice "
        "noisy. Quote the test figures of `fusynth evaluate classification`, not these."
    )
    if not weights:
        sec.warnings.append(
            f"Random-init backbone trained for {setting(log.get('global_step'))} steps: a smoke "
            "classifier unless trained much longer or from --weights."
        )
    if config.get("smoke_model"):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if ctx.is_phantom(config.get("train")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


def sam(run: Run, ctx: Context, sec: Section) -> None:
    """A SAM fine-tuning output: data, starting checkpoint, trained parts, validation Dice."""
    config = read_json(run.path / "config.json")
    log = read_json(run.path / "train_log.json")
    checkpoint = config.get("checkpoint")
    model_type = config.get("model_type") or read_json(run.path / "sam_config.json").get(
        "model_type"
    )
    sec.facts += [
        (
            "model",
            f"{setting(model_type)}, "
            + (
                f"from {checkpoint} ({short_hash(config.get('checkpoint_sha256'))})"
                if checkpoint
                else "random init"
            ),
        ),
        ("trained parts", setting(config.get("train_parts"))),
        (
            "real training data",
            f"{setting(config.get('train'))}: {setting(config.get('num_real'))} images of {setting(config.get('num_real_subjects'))} subjects",
        ),
        (
            "synthetic pairs",
            f"{setting(config.get('synthetic'))}: {setting(config.get('num_synthetic'))}",
        ),
        (
            "validation",
            f"{setting(config.get('validation'))}: {setting(config.get('num_validation'))} images",
        ),
        ("box jitter in training", f"{setting(config.get('box_jitter'))} px"),
    ]
    _training_common(run, sec, config, log)
    history = [
        (h["step"], h["dice"]) for h in log.get("validation") or [] if h.get("dice") is not None
    ]
    if history:
        best = max(history, key=lambda sv: sv[1])
        sec.numbers.append(
            Table(
                "Validation Dice during fine-tuning (as logged)",
                [
                    "validations",
                    "best step",
                    "best Dice",
                    "last step",
                    "last Dice",
                    "validation images",
                ],
                [
                    [
                        str(len(history)),
                        str(best[0]),
                        num(best[1]),
                        str(history[-1][0]),
                        num(history[-1][1]),
                        setting(config.get("num_validation")),
                    ]
                ],
            )
        )
    table = _loss_table(log)
    if table:
        sec.numbers.append(table)
    if log.get("losses"):
        sec.pictures.append(figures.loss_curve(log["losses"], "SAM fine-tuning loss", history))
    sec.reading.append(
        "Validation Dice is measured during training on the validation split, with exact boxes "
        "at SAM's input size; it picks nothing and is optimistic. The test Dice of `fusynth "
        "evaluate segmentation` (native resolution, jittered boxes, unseen subjects) is the "
        "figure to quote; the two differ."
    )
    if model_type == "tiny":
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True


def ssl(run: Run, ctx: Context, sec: Section) -> None:
    """A SimCLR encoder: data, settings, loss."""
    config = read_json(run.path / "config.json")
    log = read_json(run.path / "train_log.json")
    sec.facts.append(("trained on", setting(config.get("train"))))
    _training_common(run, sec, config, log)
    if log.get("losses"):
        sec.pictures.append(figures.loss_curve(log["losses"], "SimCLR loss (NT-Xent)"))
    sec.reading.append(
        "The NT-Xent loss falls as two augmentations of one image become more alike than any "
        "other pair; judge the encoder by the clustering it gives (`--embed ssl:DIR`)."
    )
    if ctx.is_phantom(config.get("train")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True
