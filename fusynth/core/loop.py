"""What every training loop in fusynth shares: flag checks, seeded randomness that
makes resume exact, and ``checkpoint-N`` folders.

* All randomness of a micro-batch is drawn from a generator seeded by ``(seed,
  micro-step, process)`` and the data order of an epoch by ``(seed, epoch)``, so resuming
  from ``checkpoint-k`` reproduces an uninterrupted run exactly.
* A checkpoint folder is complete once its ``training_state.json`` exists. It carries
  the run's log so far (``train_log.json``), so the log a resumed run writes is the whole
  run's, not only the steps since the resume.
* ``--overwrite_output_dir`` never deletes the old run first: the new one is written into
  a marked sibling ``.NAME.fusynth-new/`` and swapped in only when it is complete
  (:func:`finish_run`). An interrupted overwrite leaves the old folder whole; the same
  command with ``--resume_from_checkpoint latest`` continues it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.artifacts import CHECKPOINT_STATE, TRAIN_LOG
from fusynth.core.errors import UserInputError, suggest
from fusynth.core.io import (
    canonical_safetensors,
    check_foreign,
    remove_stale_temps,
    write_marker,
)

STATE_FILE = CHECKPOINT_STATE

#: What a run's log is: named series (``losses``, ``validation``, ...), each a list that
#: grows as the run goes; written with the step as ``train_log.json``.
TrainLog = dict[str, list[Any]]

log = logging.getLogger("fusynth")


def choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    """Validate a string option, suggesting the nearest valid one."""
    if value not in choices:
        raise UserInputError(
            f"{flag}: {value!r} is not one of {', '.join(choices)}{suggest(value, choices)}"
        )
    return value


def positive(value: Any, flag: str, allow_zero: bool = False) -> None:
    """Validate a number flag (``> 0``, or ``>= 0`` with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise UserInputError(f"{flag}: must be {'>= 0' if allow_zero else 'positive'}, got {value}")


# ----------------------------------------------------------------------------- randomness


def step_generator(seed: int, micro_step: int, process: int) -> torch.Generator:
    """The generator for one micro-batch: a pure function of its coordinates."""
    state = np.random.SeedSequence([seed, micro_step, process]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_order(n: int, seed: int, epoch: int, process: int, processes: int) -> np.ndarray:
    """This process's sample order for one epoch (same length on every process)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_process = max(n // processes, 1)
    return perm[process::processes][:per_process] if n >= processes else perm[:1]


# ----------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of complete ``checkpoint-N`` folders, oldest first."""
    out = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", p.name)
            if m and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def find_resume_checkpoint(spec: str, output_dir: Path) -> Path:
    """Resolve ``--resume_from_checkpoint latest|PATH``."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise UserInputError(
                f"--resume_from_checkpoint latest: no checkpoint-N folder in {output_dir}"
            )
        return found[-1][1]
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = output_dir / spec
    if not (path / STATE_FILE).is_file():
        raise UserInputError(
            f"--resume_from_checkpoint: {spec} is not a checkpoint folder ({STATE_FILE} missing)"
        )
    return path


def save_checkpoint(
    folder: Path,
    step: int,
    resume_state: dict[str, Any],
    save_weights: Callable[[Path], None],
    optimizer: Any,
    scheduler: Any,
    total_limit: int | None = None,
    train_log: TrainLog | None = None,
) -> None:
    """Write ``checkpoint-N`` atomically: trained weights, optimizer, LR scheduler, the
    settings a resume must match and the run's log so far (``train_log``); keep at most
    ``total_limit`` checkpoints."""
    output_dir = folder.parent
    if total_limit is not None:
        existing = list_checkpoints(output_dir)
        for _, old in existing[: max(len(existing) - total_limit + 1, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    tmp = output_dir / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp)
    canonical_safetensors(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if train_log is not None:
        write_train_log(tmp, step, train_log)
    (tmp / STATE_FILE).write_text(json.dumps({"global_step": step, **resume_state}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_checkpoint(
    folder: Path,
    resume_state: dict[str, Any],
    load_weights: Callable[[Path], None],
    optimizer: Any,
    scheduler: Any,
    train_log: TrainLog | None = None,
) -> int:
    """Restore a checkpoint after checking its settings match this run; returns its step.

    Each series of ``train_log`` is replaced, in place, by the checkpoint's (a checkpoint
    written before checkpoints carried the log leaves them empty, with a warning).

    Raises:
        UserInputError: a setting differs, naming the flag and both values.
    """
    state = json.loads((folder / STATE_FILE).read_text())
    for key, value in resume_state.items():
        if state.get(key) != value:
            raise UserInputError(
                f"--resume_from_checkpoint: {folder} was trained with --{key} {state.get(key)}, "
                f"this run has {value}"
            )
    load_weights(folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if train_log is not None:
        read_train_log(folder, train_log)
    return int(state["global_step"])


def write_train_log(folder: Path, step: int, train_log: TrainLog) -> Path:
    """Write ``folder/train_log.json``: the step and every series of ``train_log``."""
    path = Path(folder) / TRAIN_LOG
    path.write_text(json.dumps({"global_step": step, **train_log}, indent=1))
    return path


def read_train_log(folder: Path, train_log: TrainLog) -> None:
    """Fill ``train_log``'s series, in place, from a checkpoint's ``train_log.json``."""
    path = Path(folder) / TRAIN_LOG
    if not path.is_file():
        log.warning(
            "%s holds no %s (written by an older fusynth): the run's %s will start at this "
            "checkpoint",
            folder,
            TRAIN_LOG,
            TRAIN_LOG,
        )
        data: dict[str, Any] = {}
    else:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UserInputError(f"--resume_from_checkpoint: {path} is not valid JSON") from exc
    for key, series in train_log.items():
        series[:] = list(data.get(key, []))


# ----------------------------------------------------------------------------- a run's folder


def check_run_dir(config: Any, weights_file: str) -> Path:
    """Validate ``--output_dir`` before anything runs.

    A folder that already holds a run (its weights or a checkpoint) is refused unless the
    run resumes (``--resume_from_checkpoint``) or starts over (``--overwrite_output_dir``);
    a non-empty folder fusynth did not write is refused whatever the flags.
    """
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output_dir: {out} exists and is not a folder")
    check_foreign(out, "--output_dir")
    fresh = config.resume_from_checkpoint is None and not config.overwrite_output_dir
    if fresh and out.is_dir() and ((out / weights_file).exists() or list_checkpoints(out)):
        raise UserInputError(
            f"--output_dir: {out} already holds a run; resume it with "
            "--resume_from_checkpoint latest or pass --overwrite_output_dir"
        )
    if staging_dir(out).is_dir() and not config.overwrite_output_dir:
        log.warning(
            "%s holds an interrupted --overwrite_output_dir run; continue it with "
            "--overwrite_output_dir --resume_from_checkpoint latest",
            staging_dir(out),
        )
    return out


def staging_dir(output_dir: Path) -> Path:
    """Where ``--overwrite_output_dir`` trains before the swap: ``.NAME.fusynth-new``."""
    return output_dir.parent / f".{output_dir.name}.fusynth-new"


def final_dir(output_dir: Path) -> Path:
    """The folder a run ends up in: ``output_dir``, or for its staging sibling
    (:func:`staging_dir`) the folder it replaces."""
    m = re.fullmatch(r"\.(.+)\.fusynth-new", output_dir.name)
    return output_dir.parent / m.group(1) if m else output_dir


def _holds_anything(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def start_run(config: Any, weights_file: str, **accelerator_kwargs: Any):
    """Check the output folder and the resume point, and build the Accelerator.

    With ``--overwrite_output_dir`` over a folder that holds something, the run writes
    into :func:`staging_dir` instead (a fresh one, or with ``--resume_from_checkpoint``
    the one an interrupted overwrite left, resumed from its latest checkpoint or started
    over when it has none); :func:`finish_run` swaps it in when the run is complete.

    ``config`` needs ``output_dir``, ``resume_from_checkpoint``, ``overwrite_output_dir``,
    ``mixed_precision`` and ``report_to``.

    Returns:
        ``(accelerator, output_dir, resume)``: ``output_dir`` is where the run writes
        (the staging folder when overwriting), ``resume`` the checkpoint folder or None.
    """
    from accelerate.utils import ProjectConfiguration

    from fusynth.core.distributed import make_accelerator

    output_dir = check_run_dir(config, weights_file)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserInputError("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
    resume, fresh_staging = None, False
    staging = staging_dir(output_dir)
    check_foreign(staging, "--output_dir")
    if config.overwrite_output_dir and staging.is_dir() and config.resume_from_checkpoint:
        # An interrupted overwrite: continue it, never the old run it replaces.
        output_dir = staging
        if config.resume_from_checkpoint != "latest" or list_checkpoints(staging):
            resume = find_resume_checkpoint(config.resume_from_checkpoint, staging)
        else:
            log.info("%s holds no checkpoint yet: the overwrite starts over", staging)
            fresh_staging = True
    elif config.resume_from_checkpoint is not None:
        resume = find_resume_checkpoint(config.resume_from_checkpoint, output_dir)
    elif config.overwrite_output_dir and _holds_anything(output_dir):
        output_dir, fresh_staging = staging, True
    accelerator = make_accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        **accelerator_kwargs,
    )
    accelerator.wait_for_everyone()  # every process has looked at the folders
    if fresh_staging and accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # no stale checkpoints to resume from
        staging.mkdir(parents=True)
        write_marker(staging, "training-run (being written)")
    accelerator.wait_for_everyone()
    return accelerator, output_dir, resume


def swap_in(output_dir: Path) -> Path:
    """Put a complete run written in its staging folder in place of the old one.

    The old folder is renamed aside before the new one takes its name, so at every
    moment one complete run is there under a fusynth name; then it is deleted.

    Returns:
        The final folder (``output_dir`` itself when it is not a staging folder).
    """
    final = final_dir(output_dir)
    if final == output_dir:
        return final
    old = final.parent / f".{final.name}.fusynth-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(output_dir, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def tracker_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """A run config with every value a scalar, as trackers (tensorboard) want it."""
    return {
        k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in run_config.items()
    }


def replace_outputs(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Write a run's final files into a temporary folder with ``write``, then move each
    into ``output_dir``, replacing its old version only once all are written."""
    tmp = output_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    canonical_safetensors(tmp)  # the same run gives the same bytes
    for item in tmp.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


def write_config_json(folder: Path, run_config: dict[str, Any]) -> Path:
    """Write a run's resolved settings as ``folder/config.json`` (one format for every
    run: sorted keys, values JSON cannot hold as their ``str``)."""
    path = Path(folder) / "config.json"
    path.write_text(json.dumps(run_config, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_run_config(
    accelerator: Any, run_config: dict[str, Any], output_dir: Path, project: str, report_to: str
) -> None:
    """At the start of a run the main process writes ``config.json`` and starts the
    trackers; other processes do nothing."""
    if not accelerator.is_main_process:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output_dir)  # what a killed run left half-written
    write_marker(output_dir, f"training-run ({project})")
    write_config_json(output_dir, run_config)
    if report_to != "none":
        accelerator.init_trackers(project, config=tracker_config(run_config))


# ----------------------------------------------------------------------------- settings

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard", "wandb")


def launcher_mixed_precision() -> str:
    """The precision ``accelerate launch`` asks for, for a run whose config sets none.

    ``accelerate launch --mixed_precision bf16`` and a saved ``accelerate config`` both
    reach the training process as ``ACCELERATE_MIXED_PRECISION``; diffusers' examples
    follow it when their own flag is not given, and so do the recipes. Without it: ``no``.

    Raises:
        UserInputError: the variable holds a precision the recipes do not support.
    """
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or "no"
    if value not in MIXED_PRECISION:
        raise UserInputError(
            f"ACCELERATE_MIXED_PRECISION={value} (from accelerate launch or accelerate config) "
            f"is not supported; pass --mixed_precision {' or '.join(MIXED_PRECISION)}"
        )
    return value


def check_run_settings(
    config: Any,
    positive_fields: tuple[str, ...] = (),
    non_negative_fields: tuple[str, ...] = (),
    lr_schedulers: tuple[str, ...] = LR_SCHEDULERS,
) -> None:
    """Check the settings every training config shares, plus ``positive_fields`` (> 0)
    and ``non_negative_fields`` (>= 0); each error names its flag."""
    choice(config.lr_scheduler, lr_schedulers, "--lr_scheduler")
    if config.mixed_precision is None:
        config.mixed_precision = launcher_mixed_precision()
    choice(config.mixed_precision, MIXED_PRECISION, "--mixed_precision")
    choice(config.report_to, REPORT_TO, "--report_to")
    if config.report_to == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserInputError(
                "--report_to wandb: the wandb package is not installed "
                "(pip install 'fusynth[wandb]'), or use --report_to tensorboard"
            )
    for name in ("train_batch_size", "num_train_epochs", "checkpointing_steps", *positive_fields):
        positive(getattr(config, name), f"--{name}")
    for name in ("lr_warmup_steps", *non_negative_fields):
        positive(getattr(config, name), f"--{name}", allow_zero=True)
    for name in ("max_train_steps", "checkpoints_total_limit"):
        if getattr(config, name) is not None:
            positive(getattr(config, name), f"--{name}")


def make_lr_scheduler(config: Any, optimizer: Any, max_steps: int) -> Any:
    """diffusers' scheduler named by ``--lr_scheduler``, stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max_steps,
    )


def resume_run(
    resume: Path | None,
    resume_state: dict[str, Any],
    load_weights: Callable[[Path], None],
    optimizer: Any,
    scheduler: Any,
    train_log: TrainLog | None = None,
) -> int:
    """The step to start from: 0, or that of the restored checkpoint ``resume`` (whose
    log so far then fills ``train_log``)."""
    if resume is None:
        return 0
    step = load_checkpoint(resume, resume_state, load_weights, optimizer, scheduler, train_log)
    log.info("resumed from %s at step %d", resume, step)
    return step


def checkpoint_if_due(
    accelerator: Any,
    config: Any,
    output_dir: Path,
    step: int,
    max_steps: int | bool,
    resume_state: dict[str, Any],
    save_weights: Callable[[Path], None],
    optimizer: Any,
    scheduler: Any,
    train_log: TrainLog | None = None,
) -> None:
    """Every ``--checkpointing_steps`` steps and after the last one (``step ==
    max_steps``), the main process writes ``checkpoint-N`` (with ``train_log`` so far);
    every process waits for it.

    ``max_steps`` may still be a bool, ``True`` on the last step: the earlier form of
    this argument, which ``fusynth.classify.train`` passes until it moves to ``max_steps``.
    """
    last = max_steps if isinstance(max_steps, bool) else step == max_steps
    if step % config.checkpointing_steps and not last:
        return
    if accelerator.is_main_process:
        save_checkpoint(
            output_dir / f"checkpoint-{step}",
            step,
            resume_state,
            save_weights,
            optimizer,
            scheduler,
            config.checkpoints_total_limit,
            train_log,
        )
    accelerator.wait_for_everyone()


def finish_run(
    accelerator: Any,
    bar: Any,
    started: float,
    save_final: Callable[[], None],
    output_dir: Path | None = None,
) -> float:
    """End every training loop the same way: close the progress bar, let the main process
    write the final folder while the others wait (and swap it in, when ``output_dir``
    is a staging folder), and end the trackers.

    Args:
        accelerator: the run's Accelerator.
        bar: the run's tqdm progress bar.
        started: ``time.perf_counter()`` when the steps began.
        save_final: writes the final output folder (called on the main process only).
        output_dir: where the run wrote, as :func:`start_run` returned it.

    Returns:
        Seconds from ``started`` to the last step.
    """
    import time

    bar.close()
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final()
        if output_dir is not None:
            swap_in(output_dir)  # open tracker files move with the folder
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return elapsed


class StepLog:
    """The loss bookkeeping every loop repeats: the running loss of an optimizer step over
    its micro-steps (averaged across processes), the loss history, the progress bar, and
    the log line of each finished step."""

    def __init__(self, accelerator: Any, bar: Any, accumulation: int, losses: list[float]):
        self.accelerator = accelerator
        self.bar = bar
        self.accumulation = accumulation
        self.losses = losses
        self.running = 0.0

    def add(self, loss: torch.Tensor) -> None:
        """Add a micro-step's loss (its share of the optimizer step's mean)."""
        mean = self.accelerator.reduce(loss.detach(), reduction="mean").item()
        self.running += mean / self.accumulation

    def step(self, lr_scheduler: Any) -> dict[str, float]:
        """Close an optimizer step: step the scheduler, record and show the loss.

        Returns:
            The step's log: ``loss`` and ``lr``.
        """
        lr_scheduler.step()
        self.losses.append(self.running)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.running:.4f}")
        logs = {"loss": self.running, "lr": lr_scheduler.get_last_lr()[0]}
        self.running = 0.0
        return logs

    def validate_and_log(
        self,
        step: int,
        logs: dict[str, float],
        validate: Callable[[], float] | None,
        history: list[dict[str, float]],
        report_to: str,
    ) -> None:
        """Record a validation Dice when ``validate`` is given (it computes it), then send
        the step's log to the trackers unless ``report_to`` is ``none``."""
        if validate is not None:
            dice = validate()
            history.append({"step": step, "dice": dice})
            logs["val_dice"] = dice
        if report_to != "none":
            self.accelerator.log(logs, step=step)


def validation_due(step: int, steps_per_epoch: int, every_epochs: int, max_steps: int) -> bool:
    """Validate every ``every_epochs`` epochs and after the last step."""
    return step % (steps_per_epoch * every_epochs) == 0 or step == max_steps


def optimizer_micro_step(
    accelerator: Any, loss: torch.Tensor, params: Any, max_grad_norm: float, optimizer: Any
) -> None:
    """Backward, clip the gradients when they sync, step and zero (inside
    ``accelerator.accumulate``, the optimizer steps only on the last micro-step)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
