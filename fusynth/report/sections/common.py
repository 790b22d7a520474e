"""What every section builder shares: the runs and their datasets, file readers,
pictures, settings rows and the smoke warnings."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fusynth.report.detect import Run
from fusynth.report.images import file_uri
from fusynth.report.model import (
    Picture,
    Section,
    setting,
    short_hash,
)
from fusynth.report.samples import (
    load_splits,
    same_folder,
)

#: Pictures of one glob shown at most (e.g. cluster montages, validation grids).
MAX_PICTURES_PER_GLOB = 8
#: Memorization pairs shown at most.
MAX_PAIRS = 8

SMOKE_LINE = (
    "Smoke model: a tiny random-init model made this run, so its numbers and pictures say "
    "nothing about ultrasound; rerun with real weights for figures that mean something."
)
PHANTOM_LINE = (
    "Smoke data: the procedural phantom, not fetal anatomy; figures measured on it say nothing "
    "about real ultrasound."
)


# ----------------------------------------------------------------------------- context


class Context:
    """What sections share: every run of the report and the datasets among them.

    Datasets are loaded once (labels first; images only for thumbnails).
    """

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self._splits: dict[Path, dict[str, Any]] = {}

    def splits(self, path: Path) -> dict[str, Any]:
        """The splits of a dataset or cohort folder, loaded once."""
        key = path.resolve()
        if key not in self._splits:
            self._splits[key] = load_splits(path)
        return self._splits[key]

    def dataset_for(self, spec: str | None) -> tuple[Run, str | None] | None:
        """The prepared dataset among the runs that ``DIR[:split]`` names, with the split;
        else the first prepared dataset given, with no split; None without any."""
        datasets = [r for r in self.runs if r.kind == "dataset"]
        if spec:
            from fusynth.data.schema import parse_data_spec

            path, split = parse_data_spec(spec)
            for r in datasets:
                if same_folder(r.path, path):
                    return r, split
        return (datasets[0], None) if datasets else None

    def is_phantom(self, spec: str | None) -> bool:
        """Whether ``DIR[:split]`` names a prepared dataset among the runs made of phantom
        frames (its ``cohort`` column), or a folder named like one."""
        if not spec:
            return False
        found = self.dataset_for(spec)
        if found and spec and same_folder(found[0].path, spec.split(":")[0]):
            for ds in self.splits(found[0].path).values():
                if "phantom" in set(ds.unique("cohort")):
                    return True
            return False
        return "phantom" in Path(spec.split(":")[0]).name


# ----------------------------------------------------------------------------- helpers


def read_json(path: Path) -> Any:
    """A JSON file's content ({} when missing or unreadable: the section says less)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows ([] when missing)."""
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def picture(run: Run, rel: str, caption: str) -> Picture | None:
    """A picture file of the run, inlined; None when the run has no such file."""
    path = run.path / rel
    if not path.is_file():
        return None
    uri, (w, h) = file_uri(path)
    return Picture(uri, caption, w, h, rel)


def pictures(run: Run, pattern: str, caption: Callable[[Path], str], limit: int) -> list[Picture]:
    """Up to ``limit`` pictures matching a glob, in name order, each captioned."""
    found = sorted(run.path.glob(pattern))
    out = []
    for path in found[:limit]:
        pic = picture(run, path.relative_to(run.path).as_posix(), caption(path))
        if pic:
            out.append(pic)
    return out


def flat_settings(config: dict[str, Any], skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Every recorded setting as ``(name, text)``, sorted."""
    skip = set(skip)
    return [(k, setting(v)) for k, v in sorted(config.items()) if k not in skip]


def hashes(values: dict[str, Any], labels: dict[str, str]) -> list[tuple[str, str]]:
    """``(label, path + short hash)`` rows for the inputs a run records with a sha256
    (``adapter`` with ``adapter_sha256``, ...)."""
    out = []
    for key, label in labels.items():
        if key in values or f"{key}_sha256" in values:
            where = values.get(key)
            digest = values.get(f"{key}_sha256")
            text = setting(where) if where is not None else "—"
            out.append((label, f"{text} ({short_hash(digest)})" if digest else text))
    return out


def anchor_for(run: Run, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", f"{run.kind}-{run.path.name}".lower()).strip("-")
    anchor, k = base, 2
    while anchor in used:
        anchor, k = f"{base}-{k}", k + 1
    used.add(anchor)
    return anchor


def new_section(run: Run, anchor: str, title: str | None = None) -> Section:
    """An empty section of a run, titled by its kind and folder name."""
    info = run.info
    return Section(
        anchor=anchor,
        title=title or f"{info.title}: {run.path.name}",
        kind=run.kind,
        path=str(run.path),
        command=info.command,
    )


def views_text(counts: dict[str, Any]) -> str:
    return ", ".join(f"{v} {n}" for v, n in counts.items()) or "—"


# ----------------------------------------------------------------------------- data
