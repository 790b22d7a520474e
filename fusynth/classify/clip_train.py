"""Contrastive fine-tuning of open_clip models on real and synthetic image-text pairs.

:func:`train_clip` is the loop behind ``recipes/train_clip.py``:

* **Pairs.** A real image's caption is drawn, per step, from templates over its schema
  columns (``--caption_template``; by default the view's zero-shot prompts of
  :data:`fusynth.clip.DEFAULT_PROMPTS`, several per view, so the model does not learn one
  fixed string). A synthetic image's caption is the prompt it was generated from (its
  provenance ``prompt``); a cohort without prompts is refused.
* **Mix.** ``--synthetic_ratio R`` adds ``round(R x real images of a view)`` synthetic
  images of each view, chosen subject by subject with the seed (all of them when R is
  not given).
* **What trains** (``--train_mode``): ``lit`` locks the image tower (LiT, Zhai et al.
  2022) and tunes the text tower; ``lora`` adds peft LoRA adapters to the MLP layers of
  every residual block of both towers (merged into the weights when saved); ``full``
  tunes everything. The temperature (``logit_scale``) is learned in every mode and
  clamped at 100 as open_clip does.
* **Loss** (``--contrastive``): symmetric InfoNCE over the (gathered) batch. With
  ``views`` (default) every caption of the image's view is a positive (a
  supervised-contrastive target, as UniCL does), not a negative: a batch of fetal
  planes holds many images of one view, often with the same caption, and plain
  InfoNCE would push them apart. With ``pairs`` only the image's own caption is a
  positive (plain CLIP). With one image per view both are the same loss.
* **Output.** ``open_clip_model.safetensors`` and ``open_clip_config.json`` load with
  stock open_clip (``create_model_and_transforms("local-dir:OUT")``, or the model name
  and ``pretrained=OUT/open_clip_model.safetensors``; for a model open_clip does not
  ship, ``OUT/<name>.json`` registers the architecture with ``add_model_config``).
* **Resume** is exact: the data order, augmentation and caption choices of a micro-batch
  come from :mod:`fusynth.core.loop`'s seeded generators.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusynth.classify.clip_captions import render_caption, resolve_templates
from fusynth.classify.clip_model import (
    CONTRASTIVE,
    LORA_TARGETS,
    OPEN_CLIP_CONFIG,
    TRAIN_MODES,
    WEIGHTS_FILE,
    _gather,
    _model_config,
    architecture_name,
    contrastive_loss,
    prepare_model,
    render_clip_card,
    stock_state,
    trainable_state,
)
from fusynth.core.errors import UserInputError
from fusynth.core.loop import (
    check_run_dir,
    check_run_settings,
    checkpoint_if_due,
    choice,
    epoch_order,
    final_dir,
    finish_run,
    make_lr_scheduler,
    positive,
    replace_outputs,
    resume_run,
    start_run,
    step_generator,
    write_config_json,
    write_run_config,
)
from fusynth.data.schema import FEATURES, VIEWS
from fusynth.embed.clip import TINY_CLIP, check_model_name

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- config


@dataclass
class ClipTrainConfig:
    """Settings of ``recipes/train_clip.py``; field names are the flags."""

    model: str = TINY_CLIP
    pretrained: str | None = None
    train: str | None = None
    synthetic: str | None = None
    synthetic_ratio: float | None = None
    views: str | list[str] | None = None
    caption_template: str | list[str] | None = None
    train_mode: str = "lit"
    rank: int = 8
    contrastive: str = "views"
    augment: bool = True
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 32
    num_train_epochs: int = 10
    max_train_steps: int | None = None
    mixed_precision: str | None = None  # None: accelerate launch's, else "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    seed: int = 0
    output_dir: str = "fusynth-clip"
    overwrite_output_dir: bool = False
    report_to: str = "none"

    def __post_init__(self) -> None:
        from fusynth.data.views import parse_view_list

        check_model_name(self.model, "--model")
        choice(self.train_mode, TRAIN_MODES, "--train_mode")
        choice(self.contrastive, CONTRASTIVE, "--contrastive")
        check_run_settings(self, positive_fields=("learning_rate", "rank"))
        positive(self.weight_decay, "--weight_decay", allow_zero=True)
        if self.train_batch_size < 2:
            raise UserInputError(
                "--train_batch_size: a contrastive batch needs 2 pairs or more, "
                f"got {self.train_batch_size}"
            )
        if self.synthetic_ratio is not None:
            positive(self.synthetic_ratio, "--synthetic_ratio", allow_zero=True)
            if not self.synthetic:
                raise UserInputError("--synthetic_ratio: needs --synthetic COHORT")
        self.views = parse_view_list(self.views, "--views")
        if self.views is not None and len(self.views) < 2:
            raise UserInputError("--views: contrastive training needs two views or more")
        if isinstance(self.caption_template, str):
            self.caption_template = [self.caption_template]
        # The columns are the schema's, so a template is checked before any data is read
        # (a YAML file is read with the data's views, in choose_pairs).
        templates = self.caption_template
        if templates is not None and not (
            len(templates) == 1 and templates[0].endswith((".yaml", ".yml"))
        ):
            resolve_templates(templates, self.views or VIEWS)


# ----------------------------------------------------------------------------- data


@dataclass
class PairData:
    """Training images with their candidate captions, and what was chosen."""

    classes: list[str]
    images: list[np.ndarray]  # [H, W] uint8 each, real then synthetic
    views: list[str]
    captions: list[list[str]]  # per image, the captions one is drawn from at each step
    synthetic: list[bool]
    source: dict[str, Any] = field(default_factory=dict)


def _rows(spec: str, flag: str, views: Sequence[str] | None) -> tuple[list[dict], list[int]]:
    """Label columns of ``DIR[:split]`` (no pixels) and the positions of kept rows."""
    from fusynth.data.schema import load_split

    try:
        ds = load_split(spec)
    except UserInputError as exc:
        raise UserInputError(f"{flag}: {exc}") from exc
    names = ds.features["view"].names
    cols = [c for c in FEATURES if c not in ("image", "mask")]
    rows, keep = [], []
    for i, row in enumerate(ds.select_columns(cols)):
        row = {**row, "view": names[row["view"]]}
        if views is None or row["view"] in views:
            rows.append(row)
            keep.append(i)
    return rows, keep


def _images(spec: str, positions: Sequence[int]) -> list[np.ndarray]:
    from fusynth.data.images import decode_image
    from fusynth.data.schema import load_split

    ds = load_split(spec).select_columns(["image"]).select(list(positions))
    return [decode_image(r["image"]) for r in ds]


def _prompt(row: Mapping[str, Any]) -> str | None:
    try:
        prompt = json.loads(row.get("provenance") or "{}").get("prompt")
    except (json.JSONDecodeError, AttributeError):
        return None
    return prompt.strip() if isinstance(prompt, str) and prompt.strip() else None


def _train_spec(config: ClipTrainConfig) -> str:
    if config.train is not None:
        return config.train
    from fusynth.data.phantom_cohort import default_dataset

    log.info("no --train: using the built-in phantom (head, abdomen, femur, thorax)")
    return f"{default_dataset()}:train"


def choose_pairs(config: ClipTrainConfig, images: bool = True) -> PairData:
    """The real pairs of ``--train`` and the synthetic pairs of ``--synthetic``.

    With ``images=False`` the same choice and checks run without decoding an image.

    Raises:
        UserInputError: unreadable data, fewer than two views, a cohort sample without
            a prompt, or a ratio asking for more synthetic images of a view than the
            cohort has.
    """
    from fusynth.data.splits import pick_by_subject

    spec = _train_spec(config)
    real, real_pos = _rows(spec, "--train", config.views)
    classes = [v for v in VIEWS if any(r["view"] == v for r in real)]
    absent = [v for v in config.views or () if v not in classes]
    if absent:
        raise UserInputError(f"--views: {spec} has no image of view {absent[0]!r}")
    if len(classes) < 2:
        what = f"only view {classes[0]}" if classes else "no image"
        raise UserInputError(f"--train: {spec} has {what}; contrastive training needs two views")
    templates = resolve_templates(config.caption_template, classes)
    captions = [[render_caption(t, r) for t in templates[r["view"]]] for r in real]
    real_counts = {v: sum(r["view"] == v for r in real) for v in classes}
    synth_counts = dict.fromkeys(classes, 0)
    synth_pos: list[int] = []
    synth_rows: list[dict] = []
    if config.synthetic:
        cohort, pos = _rows(config.synthetic, "--synthetic", classes)
        for row in cohort:
            if _prompt(row) is None:
                raise UserInputError(
                    f"--synthetic: {config.synthetic} has a sample without a prompt (subject "
                    f"{row['subject_id']}); pairs need the prompt each image was made from "
                    "(cohorts of fusynth generate text2img or pairs carry one in provenance)"
                )
        for k, view in enumerate(classes):
            idx = [i for i, r in enumerate(cohort) if r["view"] == view]
            want = len(idx)
            if config.synthetic_ratio is not None and idx:
                want = round(config.synthetic_ratio * real_counts[view])
                if want > len(idx):
                    raise UserInputError(
                        f"--synthetic_ratio: {config.synthetic_ratio} asks for {want} synthetic "
                        f"images of view {view!r} but {config.synthetic} has {len(idx)}"
                    )
            if not idx and config.synthetic_ratio != 0:  # a cohort may cover some views
                log.warning("--synthetic: %s has no image of %s", config.synthetic, view)
            chosen = pick_by_subject(
                [cohort[i]["subject_id"] for i in idx], want, [config.seed, 29, k]
            )
            synth_pos += [pos[idx[j]] for j in chosen]
            synth_rows += [cohort[idx[j]] for j in chosen]
            synth_counts[view] = len(chosen)
    captions += [[_prompt(r)] for r in synth_rows]
    views = [r["view"] for r in real] + [r["view"] for r in synth_rows]
    pixels: list[np.ndarray] = []
    if images:
        pixels = _images(spec, real_pos)
        if synth_pos:
            pixels += _images(config.synthetic, synth_pos)
    source = {
        "train": spec,
        "synthetic": config.synthetic,
        "classes": classes,
        "num_real": len(real),
        "num_real_subjects": len({r["subject_id"] for r in real}),
        "real_per_view": real_counts,
        "num_synthetic": len(synth_rows),
        "synthetic_per_view": synth_counts,
        "caption_templates": templates,
    }
    return PairData(
        classes, pixels, views, captions, [False] * len(real) + [True] * len(synth_rows), source
    )


# ----------------------------------------------------------------------------- the loop


RESUME_KEYS = (
    "seed",
    "model",
    "pretrained",
    "train",
    "synthetic",
    "synthetic_ratio",
    "views",
    "caption_template",
    "train_mode",
    "rank",
    "contrastive",
    "augment",
    "train_batch_size",
)


@dataclass
class ClipTrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    global_step: int
    images_per_second: float
    losses: list[float]


def _step_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


@dataclass
class _Run:
    config: ClipTrainConfig
    accelerator: Any
    clip: Any  # fusynth.clip.ClipModel: the unwrapped open_clip model and its tokenizer
    trained: nn.Module  # what trains (peft wrapper for LoRA)
    prepared: nn.Module
    x: torch.Tensor  # [N, S, S] uint8
    labels: torch.Tensor  # [N] view ids
    captions: list[list[str]]
    batches_per_epoch: int
    max_steps: int
    optimizer: Any
    lr_scheduler: Any
    output_dir: Path
    resume: Path | None
    losses: list[float] = field(default_factory=list)

    def batch(self, micro: int) -> torch.Tensor:
        acc, size = self.accelerator, self.config.train_batch_size
        epoch, b = divmod(micro, self.batches_per_epoch)
        order = epoch_order(
            len(self.x), self.config.seed, epoch, acc.process_index, acc.num_processes
        )
        return torch.from_numpy(order[b * size : (b + 1) * size])

    def step(self, micro: int) -> tuple[float, int]:
        """One optimizer step on micro-batch ``micro``; its loss (mean over processes)."""
        from fusynth.classify.data import augment_batch
        from fusynth.embed.clip import normalize_batch

        acc, config, clip = self.accelerator, self.config, self.clip
        idx = self.batch(micro)
        gen = step_generator(config.seed, micro, acc.process_index)
        x = self.x[idx].to(acc.device).float().div(255.0)[:, None]
        if config.augment:
            x = augment_batch(x, gen)
        images = normalize_batch(x, clip.mean, clip.std)
        picks = torch.randint(0, 2**31 - 1, (len(idx),), generator=gen).tolist()
        texts = [
            self.captions[i][p % len(self.captions[i])]
            for i, p in zip(idx.tolist(), picks, strict=True)
        ]
        tokens = clip.tokenizer(texts).to(acc.device)
        torch.manual_seed(_step_seed(gen))
        with acc.autocast():
            out = self.prepared(images, tokens)
        image_f, text_f = (
            (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        )
        image_f = _gather(image_f.float(), acc.num_processes)
        text_f = _gather(text_f.float(), acc.num_processes)
        labels = None
        if config.contrastive == "views":
            labels = acc.gather(self.labels[idx].to(acc.device))
        loss = contrastive_loss(image_f, text_f, clip.model.logit_scale.exp().float(), labels)
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():  # open_clip's clamp: a temperature no lower than 1/100
            clip.model.logit_scale.clamp_(0, math.log(100))
        self.lr_scheduler.step()
        return acc.reduce(loss.detach(), reduction="mean").item(), len(idx)


def _save_trained(folder: Path, run: _Run) -> None:
    from safetensors.torch import save_file

    save_file(trainable_state(run.trained), str(folder / "trained.safetensors"))
    (folder / "losses.json").write_text(json.dumps(run.losses))


def _load_trained(folder: Path, run: _Run) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / "trained.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for broken files
        raise UserInputError(
            f"--resume_from_checkpoint: cannot read {folder / 'trained.safetensors'}: {exc}"
        ) from exc
    missing = set(trainable_state(run.trained)) - set(state)
    if missing:
        raise UserInputError(
            f"--resume_from_checkpoint: {folder} lacks {len(missing)} trained tensor(s), e.g. "
            f"{sorted(missing)[0]}"
        )
    run.trained.load_state_dict(state, strict=False)
    run.losses[:] = json.loads((folder / "losses.json").read_text())


def _prepare_run(config: ClipTrainConfig) -> tuple[_Run, PairData]:
    from fusynth.data.transforms import square_batch
    from fusynth.embed.clip import load_clip

    check_run_dir(config, WEIGHTS_FILE)  # before loading anything
    data = choose_pairs(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # LoRA's initialisation
        clip = load_clip(config.model, config.pretrained, "--model", "--pretrained")
        trained = prepare_model(clip.model, config.train_mode, config.rank)
    accelerator, output_dir, resume = start_run(config, WEIGHTS_FILE)
    trained.to(accelerator.device)
    trained.train()
    if config.train_mode == "lit":
        clip.model.visual.eval()  # a locked tower keeps eval-mode dropout and norms
    x = square_batch(data.images, clip.image_size)
    labels = torch.tensor([data.classes.index(v) for v in data.views])
    per_process = len(
        epoch_order(len(x), config.seed, 0, accelerator.process_index, accelerator.num_processes)
    )
    batches = math.ceil(per_process / config.train_batch_size)
    max_steps = config.max_train_steps or config.num_train_epochs * batches
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = make_lr_scheduler(config, optimizer, max_steps)
    prepared, optimizer = accelerator.prepare(trained, optimizer)
    n_trainable = sum(p.numel() for p in params)
    if accelerator.is_main_process:
        log.info(
            "training %s (%s, %d trainable parameters) on %d real + %d synthetic pairs of %s",
            clip.name,
            config.train_mode,
            n_trainable,
            data.source["num_real"],
            data.source["num_synthetic"],
            ", ".join(data.classes),
        )
    data.source["trainable_parameters"] = n_trainable
    run = _Run(
        config, accelerator, clip, trained, prepared, x, labels, data.captions, batches,
        max_steps, optimizer, lr_scheduler, output_dir, resume,
    )  # fmt: skip
    return run, data


def train_clip(config: ClipTrainConfig) -> ClipTrainResult:
    """Fine-tune an open_clip model; write it (open_clip-loadable), checkpoints, config,
    log and card.

    Raises:
        UserInputError: bad settings or inputs, naming the flag or file.
    """
    from tqdm.auto import tqdm

    run, data = _prepare_run(config)
    acc = run.accelerator
    resume_state = {k: getattr(config, k) for k in RESUME_KEYS}
    step = resume_run(
        run.resume, resume_state, lambda f: _load_trained(f, run), run.optimizer, run.lr_scheduler
    )
    run_config = _run_config(config, run, data)
    write_run_config(acc, run_config, run.output_dir, "fusynth-clip", config.report_to)
    seen, started = 0, time.perf_counter()
    bar = tqdm(
        total=run.max_steps, initial=step, desc="train_clip", disable=not acc.is_local_main_process
    )
    while step < run.max_steps:
        loss, size = run.step(step)
        step += 1
        seen += size * acc.num_processes
        run.losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if config.report_to != "none":
            acc.log(
                {"loss": loss, "logit_scale": float(run.clip.model.logit_scale.exp())}, step=step
            )
        checkpoint_if_due(
            acc,
            config,
            run.output_dir,
            step,
            run.max_steps,
            resume_state,
            lambda tmp: _save_trained(tmp, run),
            run.optimizer,
            run.lr_scheduler,
        )
    elapsed = finish_run(
        acc, bar, started, lambda: _save_final(run, run_config, step), run.output_dir
    )
    return ClipTrainResult(
        final_dir(run.output_dir), step, seen / elapsed if elapsed > 0 else 0.0, list(run.losses)
    )


def _run_config(config: ClipTrainConfig, run: _Run, data: PairData) -> dict[str, Any]:
    from fusynth import __version__
    from fusynth.core.io import file_sha256

    pretrained_sha256 = None
    if config.pretrained is not None and Path(config.pretrained).is_file():
        pretrained_sha256 = file_sha256(config.pretrained)
    return {
        **dataclasses.asdict(config),
        "max_train_steps": run.max_steps,
        "num_processes": run.accelerator.num_processes,
        "image_size": run.clip.image_size,
        "mean": list(run.clip.mean),
        "std": list(run.clip.std),
        "random_init": run.clip.pretrained is None,
        "smoke_model": run.clip.pretrained is None,
        "pretrained_sha256": pretrained_sha256,
        "lora_targets": LORA_TARGETS if config.train_mode == "lora" else None,
        "fusynth_version": __version__,
        **data.source,
    }


def open_clip_config(run: _Run) -> dict[str, Any]:
    """``open_clip_config.json``: the architecture and the preprocessing, in the format
    open_clip reads from ``local-dir:`` folders and Hub repos. ``resize_mode: longest``
    makes open_clip's own transform pad to a square (as fusynth does) instead of crop."""
    return {
        "model_cfg": _model_config(run.clip.name),
        "preprocess_cfg": {
            "size": run.clip.image_size,
            "mean": list(run.clip.mean),
            "std": list(run.clip.std),
            "interpolation": "bicubic",
            "resize_mode": "longest",
            "fill_color": 0,
        },
    }


def _save_final(run: _Run, run_config: dict[str, Any], step: int) -> None:
    from safetensors.torch import save_file

    state = stock_state(run.trained, run.config.train_mode)
    oc_config = open_clip_config(run)
    log_data = {"global_step": step, "losses": run.losses}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(oc_config, indent=2) + "\n")
        arch = architecture_name(run.clip.name)
        if arch is not None:
            (tmp / f"{arch}.json").write_text(json.dumps(oc_config["model_cfg"], indent=2) + "\n")
        write_config_json(tmp, run_config)
        (tmp / "train_log.json").write_text(json.dumps(log_data, indent=1) + "\n")
        (tmp / "README.md").write_text(render_clip_card(run_config, step))

    replace_outputs(run.output_dir, write)


# ----------------------------------------------------------------------------- card
