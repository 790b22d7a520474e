"""The cohort writer: sharded, seeded, resumable, multi-process.

A cohort of ``n`` samples is cut into shards of ``shard_size`` consecutive sample
indices. Shard ``k`` belongs to process ``k % num_processes``; each shard is written to
a temporary folder and renamed, so on disk it is complete or absent. Rerunning the same
request after an interruption writes only the missing shards; when all are present the
main process concatenates them into the final ``DatasetDict`` (split ``train``) and
removes them. Sample ``i``'s seed is a function of (cohort seed, ``i``) only, so the
result does not depend on how many processes or runs made it.

Layout of ``OUT`` while running::

    request.json          what was asked; a different request is refused
    shards/shard-00000/   one saved Dataset per complete shard

and when complete: ``dataset_dict.json``, ``train/``, ``request.json``, ``previews/``.

Replacing a cohort (``overwrite``) never deletes the old one first: the new one is
written beside it, in ``.OUT.fusynth-new/`` (same layout; an interrupted replacement
resumes there), and swapped in only when complete. Until then ``OUT`` holds the old
cohort, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import datasets
import numpy as np

from fusynth.core.artifacts import REQUEST_FILE, STATS_FILE
from fusynth.core.errors import UserInputError
from fusynth.core.io import (
    atomic_write_bytes,
    check_foreign,
    make_temp_dir,
    remove_stale_temps,
    write_marker,
)
from fusynth.core.loop import staging_dir, swap_in
from fusynth.data.schema import FEATURES, save_prepared

T = TypeVar("T")


def sample_seed(cohort_seed: int, index: int) -> int:
    """The seed of sample ``index``: a pure function of (cohort seed, index)."""
    state = np.random.SeedSequence([cohort_seed, index]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


class CohortWriter:
    """Writes one cohort into ``out``; see the module docstring for the protocol.

    Args:
        out: the cohort folder.
        request: JSON-able description of everything that determines the samples.
        n: number of samples.
        shard_size: samples per shard.
        overwrite: replace a finished or different cohort in ``out``.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        request: dict[str, Any],
        n: int,
        shard_size: int,
        overwrite: bool = False,
    ) -> None:
        if n <= 0:
            raise UserInputError(f"--n: a cohort needs at least one sample, got {n}")
        if shard_size <= 0:
            raise UserInputError(f"--shard_size: must be positive, got {shard_size}")
        self.out = Path(out)
        self.n = n
        self.shard_size = shard_size
        self.request = json.loads(
            json.dumps({**request, "n": n, "shard_size": shard_size}, sort_keys=True)
        )
        self.overwrite = overwrite
        #: Where a replacing cohort is built before the swap.
        self.staging = staging_dir(self.out)
        #: Where this run writes: ``out``, or ``staging`` while replacing.
        self.root = self.out

    @property
    def cohort_id(self) -> str:
        """A short id of the request (not of the folder): the same request written to two
        folders gives the same subject ids, and so the same bytes."""
        data = json.dumps(self.request, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(data).hexdigest()[:12]

    # -- state on disk ---------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        """How many shards the cohort has."""
        return (self.n + self.shard_size - 1) // self.shard_size

    def shard_dir(self, k: int) -> Path:
        """Folder of shard ``k``."""
        return self.root / "shards" / f"shard-{k:05d}"

    def shard_indices(self, k: int) -> range:
        """Sample indices of shard ``k``."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n))

    def is_complete(self) -> bool:
        """True once the final dataset is written."""
        return (self.out / "dataset_dict.json").is_file() and (self.out / REQUEST_FILE).is_file()

    def _staged_request(self) -> dict[str, Any] | None:
        """The request of a replacement under way beside ``out``, if any."""
        try:
            return json.loads((self.staging / REQUEST_FILE).read_text())
        except (OSError, ValueError):
            return None

    def check(self) -> str:
        """Compare ``out`` with the request, touching nothing (every process calls it).

        Returns:
            ``"new"`` (nothing there), ``"resume"`` (same request, unfinished),
            ``"done"`` (same request, finished), ``"replace"`` (``overwrite`` and
            something else is there: a new cohort is built beside it),
            ``"replace-resume"`` (an interrupted replacement of this request, resumed
            beside ``out``) or ``"swap"`` (that replacement is complete and only its
            swap into ``out`` was interrupted). While replacing, :attr:`root` is the
            staging folder.

        Raises:
            UserInputError: ``out`` holds something else, or a different request, and
                ``overwrite`` is False.
        """
        self.root = self.out
        staged = self._staged_request() == self.request
        if staged and not self.out.exists() and (self.staging / "dataset_dict.json").is_file():
            self.root = self.staging
            return "swap"
        state = self._check_out()
        if state == "replace" and staged:
            self.root = self.staging
            return "replace-resume"
        if state == "replace":
            self.root = self.staging
        return state

    def _check_out(self) -> str:
        req_file = self.out / REQUEST_FILE
        if self.out.exists() and not self.out.is_dir():
            raise UserInputError(f"--out: {self.out} exists and is not a folder")
        if req_file.is_file():
            old = json.loads(req_file.read_text())
            if old == self.request:
                return (
                    "done"
                    if self.is_complete() and not self.overwrite
                    else ("replace" if self.overwrite else "resume")
                )
            if self.overwrite:
                return "replace"
            key = sorted(
                k for k in set(old) | set(self.request) if old.get(k) != self.request.get(k)
            )[0]
            raise UserInputError(
                f"--out: {self.out} holds a cohort made with a different request "
                f"({key}: {old.get(key)!r} there, {self.request.get(key)!r} now); "
                "use another --out or pass --overwrite"
            )
        if self.out.is_dir() and any(self.out.iterdir()):
            check_foreign(self.out, "--out")
            if not self.overwrite:
                raise UserInputError(
                    f"--out: {self.out} is not empty and is not a cohort; use another --out "
                    "or pass --overwrite"
                )
            return "replace"
        return "new"

    def setup(self, state: str) -> None:
        """Main process only: start (or resume) writing in :attr:`root`, recording the
        request first; tidy a finished cohort that a kill stopped before it removed its
        shards, or finish the swap of a complete replacement."""
        if state == "done":
            remove_stale_temps(self.out)
            shutil.rmtree(self.out / "shards", ignore_errors=True)
        if state == "replace":  # the old cohort stays whole in ``out`` until the swap
            shutil.rmtree(self.staging, ignore_errors=True)
        if state == "replace-resume":
            remove_stale_temps(self.staging)
        if state == "swap":
            self.root = swap_in(self.staging)
            return
        if state in ("new", "replace", "resume", "replace-resume"):
            self.root.mkdir(parents=True, exist_ok=True)
            req_file = self.root / REQUEST_FILE
            if not req_file.is_file():  # first, so a folder with anything in it is a cohort
                write_marker(self.root, "cohort")
                data = json.dumps(self.request, indent=2, sort_keys=True) + "\n"
                atomic_write_bytes(req_file, data.encode())
            (self.root / "shards").mkdir(exist_ok=True)

    def pending(self, process: int = 0, processes: int = 1) -> list[int]:
        """Shards of this process that are not on disk yet."""
        return [
            k for k in range(process, self.num_shards, processes) if not self.shard_dir(k).is_dir()
        ]

    def write_shard(
        self, k: int, rows: Iterable[dict[str, Any]], stats: dict[str, int] | None = None
    ) -> Path:
        """Write shard ``k`` atomically from schema rows.

        A method that rejects samples (packed pairs) writes fewer rows than indices and
        says why in ``stats`` (counts, summed over shards into ``cohort_stats.json``).
        """
        rows = list(rows)
        expected = len(self.shard_indices(k))
        if len(rows) > expected or (stats is None and len(rows) != expected):
            raise RuntimeError(f"shard {k} has {len(rows)} rows, expected {expected}")
        target = self.shard_dir(k)
        tmp = make_temp_dir(f".{target.name}.tmp-", target.parent)
        try:
            columns = {
                k: [r[k] for r in rows] for k in FEATURES
            }  # from_list cannot make an empty one
            datasets.Dataset.from_dict(columns, features=FEATURES).save_to_disk(str(tmp))
            (tmp / "stats.json").write_text(json.dumps({"rows": len(rows), **(stats or {})}))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def finalize(self) -> datasets.DatasetDict:
        """Concatenate all shards into the final DatasetDict (main process only).

        Raises:
            RuntimeError: a shard is missing.
        """
        missing = [k for k in range(self.num_shards) if not self.shard_dir(k).is_dir()]
        if missing:
            raise RuntimeError(f"cannot finalize {self.out}: shards {missing[:5]} missing")
        totals: dict[str, int] = {}
        parts = []
        for k in range(self.num_shards):
            stats = json.loads((self.shard_dir(k) / "stats.json").read_text())
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
            if stats["rows"]:  # a shard whose samples were all rejected holds no data files
                parts.append(datasets.load_from_disk(str(self.shard_dir(k))))
        atomic_write_bytes(
            self.root / STATS_FILE, (json.dumps(totals, indent=2, sort_keys=True) + "\n").encode()
        )
        if not parts:
            raise UserInputError(
                f"{self.out}: no sample passed ({json.dumps(totals, sort_keys=True)}); nothing to save. "
                "Relax the acceptance settings (they change the request: add --overwrite) or train the "
                "adapter longer"
            )
        train = datasets.concatenate_datasets(parts)
        remove_stale_temps(self.root)  # what a killed finalize left; ours comes next
        tmp = make_temp_dir(".final.tmp-", self.root)
        save_prepared(datasets.DatasetDict({"train": train}), tmp)
        del parts, train
        # train/ first, dataset_dict.json last: its presence marks the cohort complete.
        shutil.rmtree(self.root / "train", ignore_errors=True)
        os.replace(tmp / "train", self.root / "train")
        os.replace(tmp / "dataset_dict.json", self.root / "dataset_dict.json")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.root / "shards", ignore_errors=True)
        self.root = swap_in(self.root)  # a replacement takes the old cohort's place
        return datasets.load_from_disk(str(self.out))


def run_cohort(
    writer: CohortWriter,
    make_rows: Callable[
        [range], list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, int]]
    ],
    process: int = 0,
    processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: Callable[[int], None] = lambda n: None,
) -> datasets.DatasetDict | None:
    """Write this process's missing shards, then (main process) finalize.

    Args:
        writer: the cohort.
        make_rows: makes the schema rows of a range of sample indices (optionally with
            a stats dict, when it may reject samples).
        process: this process's index.
        processes: number of processes.
        barrier: waits for every process (``accelerator.wait_for_everyone``).
        progress: called with the number of samples each shard added.

    Returns:
        The final DatasetDict on the main process, None elsewhere.
    """
    for k in writer.pending(process, processes):
        indices = writer.shard_indices(k)
        made = make_rows(indices)
        rows, stats = made if isinstance(made, tuple) else (made, None)
        writer.write_shard(k, rows, stats)
        progress(len(indices))
    barrier()
    if process == 0:
        return writer.finalize()
    return None


def iter_batches(indices: range, batch_size: int) -> Iterator[range]:
    """Consecutive sub-ranges of at most ``batch_size`` indices."""
    for start in range(indices.start, indices.stop, batch_size):
        yield range(start, min(start + batch_size, indices.stop))


@dataclass
class CohortResult:
    """What a generation run did."""

    out: Path
    n: int
    generated: int
    seconds: float
    complete: bool

    @property
    def images_per_second(self) -> float:
        """Throughput of this run (samples it generated / wall time)."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def open_cohort(
    out: str | os.PathLike,
    request: dict[str, Any],
    n: int,
    shard_size: int,
    overwrite: bool,
    state: Any,
    cpu_threads: int,
    load: Callable[[], T] | None = None,
) -> tuple[CohortWriter | None, T | None]:
    """Check ``out`` against the request on every process, set it up on the main one.

    ``load`` (the pipeline, with its base and adapter) runs on every process after the
    check and before anything is written: a base or adapter that cannot be loaded leaves
    no ``request.json`` behind that would refuse the corrected command as "a different
    request".

    CPU kernels sum in an order that depends on the thread count, which can move a pixel
    by one grey level; a fixed count keeps a cohort identical whatever the number of
    processes. So the device, and on a CPU the thread count, are pinned here and become
    part of the request.

    Returns:
        ``(writer, loaded)``: the writer, or None when ``out`` already holds this cohort,
        complete, or it only had to be swapped in (then nothing is loaded); and what
        ``load`` returned.
    """
    import torch

    request["device"] = state.device.type
    if state.device.type == "cpu":
        torch.set_num_threads(cpu_threads)
        request["cpu_threads"] = cpu_threads
    writer = CohortWriter(out, request, n=n, shard_size=shard_size, overwrite=overwrite)
    status = writer.check()
    if status in ("done", "swap"):
        if state.is_main_process:  # tidies what a kill after the final write left
            writer.setup(status)
        return None, None
    loaded = load() if load is not None else None
    # Every process must have read ``out`` before the main one changes it: a process that
    # looked later would see a half-set-up folder and refuse it.
    state.wait_for_everyone()
    if state.is_main_process:
        writer.setup(status)
    state.wait_for_everyone()
    return writer, loaded


def write_cohort(
    writer: CohortWriter, make_rows: Callable[[range], Any], state: Any, desc: str, unit: str
) -> tuple[datasets.DatasetDict | None, CohortResult]:
    """:func:`run_cohort` for this process, with a progress bar and timing."""
    import time

    from tqdm.auto import tqdm

    todo = sum(
        len(writer.shard_indices(k))
        for k in writer.pending(state.process_index, state.num_processes)
    )
    bar = tqdm(total=todo, desc=desc, unit=unit, disable=not state.is_local_main_process)
    started = time.perf_counter()
    dsd = run_cohort(
        writer,
        make_rows,
        state.process_index,
        state.num_processes,
        barrier=state.wait_for_everyone,
        progress=bar.update,
    )
    seconds = time.perf_counter() - started
    bar.close()
    return dsd, CohortResult(writer.out, writer.n, todo, seconds, True)
