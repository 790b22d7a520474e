"""The training loop SAM fine-tuning and the U-Net share.

Both walk the same seeded epoch order in batches, accumulate gradients, validate and
checkpoint on the same schedule, carry the whole run's log through checkpoints and
resumes, and end through :func:`fusynth.core.loop.finish_run` (which also swaps an
``--overwrite_output_dir`` run into place). Only the forward pass and its loss differ:
each trainer passes its own ``step_loss``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusynth.core.loop import (
    StepLog,
    checkpoint_if_due,
    epoch_order,
    finish_run,
    optimizer_micro_step,
    step_generator,
    validation_due,
)


@dataclass(frozen=True)
class Schedule:
    """How ``n`` training samples become steps for this process."""

    n: int
    batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int

    @classmethod
    def of(cls, config: Any, n: int, process: int, processes: int) -> Schedule:
        """The schedule of ``config`` (``seed``, ``train_batch_size``,
        ``gradient_accumulation_steps``, ``max_train_steps``, ``num_train_epochs``)."""
        per_process = len(epoch_order(n, config.seed, 0, process, processes))
        batches = math.ceil(per_process / config.train_batch_size)
        steps = math.ceil(batches / config.gradient_accumulation_steps)
        return cls(n, batches, steps, config.max_train_steps or config.num_train_epochs * steps)


@dataclass(frozen=True)
class LoopResult:
    """What the loop did: the last step, samples seen (all processes) and seconds."""

    global_step: int
    seen: int
    elapsed: float


def run_steps(
    accelerator: Any,
    config: Any,
    *,
    desc: str,
    schedule: Schedule,
    prepared: Any,
    params: list[torch.nn.Parameter],
    optimizer: Any,
    lr_scheduler: Any,
    global_step: int,
    train_log: dict[str, list],
    step_loss: Callable[[np.ndarray, torch.Generator], torch.Tensor],
    validate: Callable[[], float] | None,
    output_dir: Path,
    resume_state: dict[str, Any],
    save_state: Callable[[Path], None],
    save_final: Callable[[int], None],
) -> LoopResult:
    """Train from ``global_step`` to ``schedule.max_steps`` and write the final folder.

    Args:
        accelerator: the run's Accelerator.
        config: the run's settings (``seed``, ``train_batch_size``,
            ``gradient_accumulation_steps``, ``max_grad_norm``, ``validation_epochs``,
            ``report_to`` and the checkpointing flags).
        desc: the progress bar's label.
        schedule: :meth:`Schedule.of` the run.
        prepared: the model as ``accelerator.prepare`` returned it.
        params: the trained parameters (clipped).
        optimizer, lr_scheduler: prepared.
        global_step: the step to start from (after a resume).
        train_log: ``{"losses": [...], "validation": [...]}``, the whole run's (a resume
            restored it); checkpoints carry it.
        step_loss: ``(sample indices, this micro-step's generator) -> loss``, run inside
            the accumulation context.
        validate: the validation Dice, or None without validation data.
        output_dir: where :func:`fusynth.core.loop.start_run` said to write.
        resume_state: what a checkpoint must match.
        save_state: writes the trained weights into a checkpoint folder.
        save_final: ``(last step) -> None``, writes the final folder (main process).
    """
    from tqdm.auto import tqdm

    process, processes = accelerator.process_index, accelerator.num_processes
    micro = global_step * config.gradient_accumulation_steps
    seen, started = 0, time.perf_counter()
    bar = tqdm(
        total=schedule.max_steps,
        initial=global_step,
        desc=desc,
        disable=not accelerator.is_local_main_process,
    )
    losses, val_history = train_log["losses"], train_log["validation"]
    step_log = StepLog(accelerator, bar, config.gradient_accumulation_steps, losses)
    while global_step < schedule.max_steps:
        epoch, b = divmod(micro, schedule.batches_per_epoch)
        order = epoch_order(schedule.n, config.seed, epoch, process, processes)
        idx = order[b * config.train_batch_size : (b + 1) * config.train_batch_size]
        gen = step_generator(config.seed, micro, process)
        with accelerator.accumulate(prepared):
            loss = step_loss(idx, gen)
            optimizer_micro_step(accelerator, loss, params, config.max_grad_norm, optimizer)
        step_log.add(loss)
        micro += 1
        seen += len(idx) * processes
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        logs = step_log.step(lr_scheduler)
        due = validation_due(
            global_step, schedule.steps_per_epoch, config.validation_epochs, schedule.max_steps
        )
        step_log.validate_and_log(
            global_step,
            logs,
            validate if due and validate is not None and accelerator.is_main_process else None,
            val_history,
            config.report_to,
        )
        checkpoint_if_due(
            accelerator,
            config,
            output_dir,
            global_step,
            schedule.max_steps,
            resume_state,
            save_state,
            optimizer,
            lr_scheduler,
            train_log,
        )
    step = global_step
    elapsed = finish_run(accelerator, bar, started, lambda: save_final(step), output_dir)
    return LoopResult(global_step, seen, elapsed)
