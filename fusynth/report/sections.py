"""One section per run folder, built from that folder's own files.

Every number shown is read from a file the run wrote (``config.json``,
``train_log.json``, ``request.json``, ``cohort_audit.json``, ``summary.json``,
``metrics.json``, ...); nothing a command measured is recomputed here. Pictures are the
run's own PNGs, plus loss curves drawn from the logged losses.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fusynth.report import figures
from fusynth.report.detect import Run
from fusynth.report.images import file_uri
from fusynth.report.model import (
    PairRow,
    Picture,
    Section,
    Table,
    ViewRow,
    interval,
    num,
    setting,
    share,
    short_hash,
)
from fusynth.report.samples import (
    THUMBS_PER_VIEW,
    find_key,
    load_splits,
    pick_by_view,
    same_folder,
    tile,
    tiles,
    view_counts,
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


def _anchor(run: Run, used: set[str]) -> str:
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


def _views_text(counts: dict[str, Any]) -> str:
    return ", ".join(f"{v} {n}" for v, n in counts.items()) or "—"


# ----------------------------------------------------------------------------- data


def phantom_source(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth data phantom``: the settings it recorded in ``phantom.json``."""
    settings = read_json(run.path / "phantom.json")
    rows = read_csv(run.path / "metadata.csv")
    sec.facts += [
        ("frames", f"{settings.get('n', len(rows))} at {settings.get('size')} px"),
        ("views", setting(settings.get("views"))),
        ("seed", setting(settings.get("seed"))),
        ("pixel spacing", f"{setting(settings.get('pixel_spacing_mm'))} mm"),
        ("frames per subject", setting(settings.get("frames_per_subject"))),
    ]
    sec.settings = flat_settings(settings)
    sec.reading.append(
        "Raw phantom frames in the layout a publisher would ship (PNG images, masks and "
        "metadata.csv); `fusynth data prepare --format metadata` turns them into a dataset."
    )
    sec.warnings.append(PHANTOM_LINE)
    sec.smoke = True


def _summary_for(run: Run) -> dict[str, Any]:
    """An inspect summary written next to a dataset (``NAME_summary.json``) or inside it."""
    for path in (run.path.parent / f"{run.path.name}_summary.json", run.path / "summary.json"):
        data = read_json(path)
        if data.get("n_samples") is not None:
            return data
    return {}


def dataset(run: Run, ctx: Context, sec: Section) -> None:
    """A prepared dataset: counts per split and view, subjects, masks, the montage."""
    splits = ctx.splits(run.path)
    summary = _summary_for(run)
    cohorts: dict[str, int] = {}
    for ds in splits.values():
        for c in ds["cohort"]:
            cohorts[c] = cohorts.get(c, 0) + 1
    sec.facts += [
        ("samples", str(sum(len(ds) for ds in splits.values()))),
        ("splits", ", ".join(f"{s} {len(ds)}" for s, ds in splits.items())),
        ("source cohorts", _views_text(cohorts)),
    ]
    views: list[str] = []
    per_split = {s: view_counts(ds) for s, ds in splits.items()}
    for counts in per_split.values():
        views += [v for v in counts if v not in views]
    subjects = summary.get("subjects", {})
    header = ["split", *views, "total", "subjects"]
    rows = [
        [
            s,
            *(str(c.get(v, 0)) for v in views),
            str(sum(c.values())),
            str(subjects.get(s, len(set(splits[s]["subject_id"])))),
        ]
        for s, c in per_split.items()
    ]
    sec.numbers.append(Table("Frames per split and view", header, rows))
    if summary:
        masks = summary.get("masks", {})
        leaks = summary.get("leaks") or {}
        sec.facts += [
            (
                "with a mask",
                f"{masks.get('with_mask', 0)} (mean coverage {share(masks.get('coverage_mean'))})",
            ),
            ("image sizes", _views_text(summary.get("image_sizes", {}))),
            ("split check", "no subject in two splits" if not leaks else f"LEAK: {setting(leaks)}"),
        ]
        if leaks:
            sec.warnings.append(
                "A subject appears in more than one split: test figures are optimistic."
            )
    pic = picture(
        run, "montage.png", "Samples per view and split; head masks tinted red, outlined yellow"
    )
    if pic:
        sec.pictures.append(pic)
    sec.reading.append(
        "Splits are drawn by subject: all frames of one patient (or exam) fall in one split, so "
        "test figures are measured on patients the models never saw."
    )
    if "phantom" in cohorts:
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


# ----------------------------------------------------------------------------- training


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


# ----------------------------------------------------------------------------- cohorts


def _browse(run: Run, ctx: Context, sec: Section, request: dict[str, Any]) -> None:
    """Real and synthetic thumbnails per view, side by side: real frames from the dataset
    the cohort was audited against when it is among the runs, else the first one given."""
    cohort = ctx.splits(run.path)
    found = ctx.dataset_for(read_json(run.path / "audit" / "cohort_audit.json").get("training"))
    real_splits = ctx.splits(found[0].path) if found else {}
    split = (found[1] if found else None) or "train"
    if split not in real_splits and real_splits:
        split = next(iter(real_splits))
    real_ds = real_splits.get(split)
    real_picks = pick_by_view(real_ds) if real_ds is not None else {}
    real_counts = view_counts(real_ds) if real_ds is not None else {}
    # a cohort is written as one split (train)
    syn_ds = cohort.get("train") or next(iter(cohort.values()))
    counts = view_counts(syn_ds)
    adapter = request.get("adapter")
    sec.browse = [
        ViewRow(
            view,
            tiles(real_ds, real_picks.get(view, [])) if real_ds is not None else [],
            tiles(syn_ds, idx, adapter),
            real_counts.get(view, 0),
            counts[view],
        )
        for view, idx in pick_by_view(syn_ds).items()
    ]
    where = f"{found[0].path.name}, {split} split" if found else None
    sec.browse_note = (
        f"Up to {THUMBS_PER_VIEW} per side; real frames from {where}. Hover a synthetic "
        "sample for its prompt, seed and adapter."
        if where
        else f"Up to {THUMBS_PER_VIEW} per view. Give the prepared dataset too (fusynth report "
        "DATASET COHORT ...) to see real frames beside them. Hover a sample for its provenance."
    )


def cohort(run: Run, ctx: Context, sec: Section) -> None:
    """A text-to-image cohort: request (adapter and base with hashes), counts, previews,
    real and synthetic side by side, and its audit when ``audit/`` holds one."""
    request = read_json(run.path / "request.json")
    stats = read_json(run.path / "cohort_stats.json")
    sec.facts += hashes(request, {"adapter": "adapter", "base": "base model"})
    if request.get("smoke_base"):
        sec.facts[-1] = (sec.facts[-1][0], sec.facts[-1][1] + " — tiny smoke base")
    sec.facts += [
        (
            "samples",
            f"{setting(stats.get('rows', request.get('n')))} ({_views_text(request.get('views') or {})})",
        ),
        (
            "sampler",
            f"{setting(request.get('scheduler'))}, {setting(request.get('steps'))} steps, guidance {setting(request.get('guidance'))}",
        ),
        ("seed", setting(request.get("seed"))),
    ]
    prompts = request.get("prompts") or {}
    if prompts:
        sec.numbers.append(
            Table("Prompt per view", ["view", "prompt"], [[v, p] for v, p in prompts.items()])
        )
    sec.settings = flat_settings(request)
    for view in request.get("views") or {}:
        pic = picture(run, f"previews/{view}.png", f"Synthetic {view} samples (preview grid)")
        if pic:
            sec.pictures.append(pic)
    _browse(run, ctx, sec, request)
    sec.reading.append(
        "Each sample is stored with the same columns as real data (synthetic = true) plus its "
        "provenance, so mixing it into training is a concatenation. Each sample's seed makes it "
        "reproducible with the same adapter and base."
    )
    if request.get("smoke_base"):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if (run.path / "audit" / "cohort_audit.json").is_file():
        cohort_audit(Run(run.path / "audit", "cohort_audit"), ctx, sec, cohort_path=run.path)
    if (run.path / "audit" / "pairs_summary.json").is_file():
        pairs_audit(Run(run.path / "audit", "pairs_audit"), ctx, sec)


def cohort_audit(run: Run, ctx: Context, sec: Section, cohort_path: Path | None = None) -> None:
    """FID/KID per view with counts, memorization, and the closest pairs labelled."""
    audit = read_json(run.path / "cohort_audit.json")
    distance = audit.get("distance", {})
    encoder = audit.get("encoder", {})
    sec.facts += [
        (
            "audited against",
            f"reference {setting(audit.get('reference'))}; memorization searched {setting(audit.get('training'))}",
        ),
        ("encoder", f"{setting(encoder.get('spec'))} ({setting(encoder.get('dim'))} features)"),
    ]
    rows = []
    chart = []
    entries = [("all views", distance.get("overall") or {})] + list(
        (distance.get("by_view") or {}).items()
    )
    for name, e in entries:
        if not e:
            continue
        rows.append(
            [
                name,
                str(e.get("n_synthetic")),
                str(e.get("n_reference")),
                f"{num(e.get('kid_mean'), 4)} ± {num(e.get('kid_std'), 4)}",
                num(e.get("fid"), 1) + ("" if e.get("fid_reliable") else " (unreliable)"),
            ]
        )
        mean, sd = e.get("kid_mean"), e.get("kid_std")
        low = high = None
        if mean is not None and sd is not None:
            low, high = mean - sd, mean + sd
        chart.append((f"{name} (n={e.get('n_synthetic')}/{e.get('n_reference')})", mean, low, high))
    kid = distance.get("kid", {})
    sec.numbers.append(
        Table(
            "Distance to the real frames (audit)",
            ["view", "synthetic n", "real n", "KID mean ± sd", "FID"],
            rows,
            f"KID over {setting(kid.get('subsets'))} subsets; kernel {setting(kid.get('kernel'))}.",
        )
    )
    if chart:
        sec.pictures.append(
            figures.interval_chart(
                chart,
                f"KID per view ({encoder.get('spec', '?')} features)",
                "KID (0 = same distribution as the real frames)",
                "KID mean with ± 1 sd over subsets, from cohort_audit.json (n = synthetic/real)",
            )
        )
    mem = audit.get("memorization", {})
    thresholds = mem.get("thresholds", {})
    overall = mem.get("overall", {})
    mem_rows = []
    for name, m in [("all", overall), *(mem.get("by_view") or {}).items()]:
        if m:
            mem_rows.append(
                [
                    name,
                    str(m.get("n")),
                    f"{m.get('flagged')} ({share(m.get('share_flagged'))})",
                    f"{num(m.get('ssim', {}).get('median'))} / {num(m.get('ssim', {}).get('max'))}",
                    f"{num(m.get('cosine', {}).get('median'))} / {num(m.get('cosine', {}).get('max'))}",
                ]
            )
    sec.numbers.append(
        Table(
            "Memorization: each synthetic sample's nearest training image",
            ["view", "samples", "flagged", "SSIM median / max", "cosine median / max"],
            mem_rows,
            f"Flagged: SSIM ≥ {setting(thresholds.get('ssim'))} or cosine ≥ "
            f"{setting(thresholds.get('cosine'))}; searched {setting(mem.get('searched'))}.",
        )
    )
    if overall.get("flagged"):
        sec.warnings.append(
            f"{overall['flagged']} synthetic sample(s) are flagged as near copies of training images."
        )
    _memorization_pairs(run, ctx, sec, audit, cohort_path)
    sec.notes += audit.get("notes", [])
    sec.notes += (distance.get("overall") or {}).get("notes", [])
    sec.reading.append(
        "KID (kernel inception distance) measures how far the synthetic images' features lie "
        "from the real ones': 0 means the same distribution, larger is further. It has no "
        "absolute scale: a KID of 1.0 in pixel features is not comparable with published "
        "Inception KIDs, only with other cohorts audited with the same encoder and reference. "
        "FID from fewer samples than feature dimensions is unreliable; read KID."
    )
    sec.reading.append(
        "Memorization: SSIM 1.0 (or cosine 1.0) would be an exact copy of a training image. "
        "Look at the closest pairs below: if the synthetic image is a copy, the adapter has "
        "memorized its training data."
    )


def _memorization_pairs(
    run: Run, ctx: Context, sec: Section, audit: dict[str, Any], cohort_path: Path | None
) -> None:
    pairs = (audit.get("memorization") or {}).get("closest_pairs") or []
    if not pairs:
        return
    cohort_path = cohort_path or Path(str(audit.get("cohort", "")))
    cohort_splits = ctx.splits(cohort_path) if (cohort_path / "dataset_dict.json").is_file() else {}
    found = ctx.dataset_for(audit.get("training"))
    train_splits = ctx.splits(found[0].path) if found else {}
    train_split = found[1] if found else None
    adapter = read_json(cohort_path / "request.json").get("adapter")
    for p in pairs[:MAX_PAIRS]:
        syn_row = find_key(cohort_splits, p["synthetic"]) if cohort_splits else None
        train_row = find_key(train_splits, p["training"], train_split) if train_splits else None
        caption = (
            f"synthetic {p.get('view')} | nearest training image: {p.get('training_view')}. "
            f"SSIM {num(p.get('ssim'))}, cosine {num(p.get('cosine'))}"
            + (" — FLAGGED as a near copy" if p.get("flagged") else "")
        )
        sec.pairs.append(
            PairRow(
                tile(syn_row, "synthetic", adapter) if syn_row else None,
                tile(train_row, "nearest training image") if train_row else None,
                caption,
                bool(p.get("flagged")),
            )
        )
    if not train_splits:
        pic = picture(
            run,
            "closest_pairs.png",
            "Closest pairs: synthetic | nearest training image, SSIM and cosine",
        )
        if pic:
            sec.pictures.append(pic)


# ----------------------------------------------------------------------------- evaluations


def clustering(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth evaluate clustering``: metrics per clustering, fidelity, montages."""
    m = read_json(run.path / "metrics.json")
    sec.facts += [
        ("embedding", f"{setting(m.get('embed'))} ({setting(m.get('embedding_dim'))} dimensions)"),
        ("data", setting(m.get("data")) + (f" + {m['extra']}" if m.get("extra") else "")),
        (
            "samples",
            f"{setting(m.get('n_samples'))} ({setting(m.get('n_real'))} real, {setting(m.get('n_synthetic'))} synthetic): {_views_text(m.get('view_counts') or {})}",
        ),
        ("seed / restarts", f"{setting(m.get('seed'))} / {setting(m.get('n_init'))}"),
    ]
    sec.settings = flat_settings({k: v for k, v in m.items() if k != "clusterings"})
    rows, fidelity_rows = [], []
    for name, c in (m.get("clusterings") or {}).items():
        real = c.get("real_only") or {}
        rows.append(
            [
                name,
                str(c.get("k")),
                str(c.get("n")),
                num(c.get("purity")),
                num(c.get("hungarian_accuracy")),
                num(c.get("nmi")),
                num(c.get("ari")),
                num(c.get("neighbour_consistency")),
                num(real.get("purity")) if real else "—",
            ]
        )
        f = c.get("semantic_fidelity")
        if f:
            by_view = "; ".join(
                f"{v} {x['n_matching']}/{x['n']}" for v, x in f.get("by_view", {}).items()
            )
            fidelity_rows.append(
                [
                    name,
                    f"{num(f.get('share'))} ({f.get('n_matching')} of {f.get('n_synthetic')})",
                    by_view,
                    str(f.get("n_in_clusters_without_real")),
                ]
            )
    sec.numbers.append(
        Table(
            "Clustering against the view labels",
            [
                "clustering",
                "k",
                "n",
                "purity",
                "Hungarian acc.",
                "NMI",
                "ARI",
                "neighbour consistency",
                "purity (real only)",
            ],
            rows,
        )
    )
    if fidelity_rows:
        sec.numbers.append(
            Table(
                "Semantic fidelity of the synthetic samples",
                [
                    "clustering",
                    "fidelity",
                    "per view (matching / n)",
                    "in clusters without real frames",
                ],
                fidelity_rows,
            )
        )
    pic = picture(
        run,
        "embedding_2d.png",
        "The embedding in 2-D (first two principal components), coloured by view",
    )
    if pic:
        sec.pictures.append(pic)
    main = m.get("montages")
    clusters = {
        c.get("cluster"): c
        for c in ((m.get("clusterings") or {}).get(main) or {}).get("clusters", [])
    }

    def montage_caption(path: Path) -> str:
        c = clusters.get(int(path.stem.split("-")[-1]), {})
        text = f"{main}, cluster {path.stem.split('-')[-1]}"
        if c:
            text += (
                f": {c.get('size')} frames ({c.get('n_real')} real, {c.get('n_synthetic')} "
                f"synthetic; {_views_text(c.get('views') or {})}), real majority "
                f"{c.get('real_majority') or 'none'}"
            )
        return (
            text + ". Members nearest the centre; frame colour = view, as in the 2-D plot; "
            "white corner = synthetic"
        )

    sec.pictures += pictures(run, "montages/cluster-*.png", montage_caption, MAX_PICTURES_PER_GLOB)
    sec.reading.append(
        "Purity and Hungarian accuracy are shares of frames whose cluster matches their view "
        "(1 = clusters are the views); NMI and ARI are 0 for chance, 1 for perfect agreement."
    )
    sec.reading.append(
        "Semantic fidelity is the share of synthetic frames that fall in a cluster whose real "
        "frames are mostly of the view they were generated for. Fidelity 0 means no synthetic "
        "frame landed among real frames of its view: to this embedding they look like something "
        "else (often they form clusters of their own, counted in the last column)."
    )
    if ctx.is_phantom(m.get("data")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


_METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "macro_auroc": "macro AUROC",
}


def classification(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth evaluate classification`` or ``zeroshot``: metrics with intervals,
    per view and center, FU-LoRA legacy metrics, confusion matrix."""
    m = read_json(run.path / "metrics.json")
    setup = m.get("setup", {})
    if setup.get("what") == "zero-shot":
        pretrained = setup.get("pretrained")
        sec.facts.append(
            (
                "model",
                f"{setting(setup.get('model'))} ({'pretrained ' + str(pretrained) if pretrained else 'random init'})",
            )
        )
        sec.facts.append(
            (
                "prompts",
                setting(setup.get("prompts_file"))
                if setup.get("prompts_file")
                else "built-in, per view",
            )
        )
    else:
        sec.facts.append(
            (
                "model",
                f"{setting(setup.get('model'))} ({short_hash(setup.get('model_sha256'))}), {setting(setup.get('backbone'))} at {setting(setup.get('resolution'))} px",
            )
        )
    sec.facts += [
        (
            "test data",
            f"{setting(setup.get('data'))}: {setting(m.get('n_images'))} images of {setting(m.get('n_subjects'))} subjects",
        ),
        (
            "intervals",
            f"{int(100 * setup.get('confidence', 0.95))}% bootstrap, {setting(setup.get('n_boot'))} resamples of subjects",
        ),
    ]
    sec.settings = flat_settings(setup)
    overall = m.get("overall", {})
    sec.numbers.append(
        Table(
            f"Test metrics (n = {m.get('n_images')} images, {m.get('n_subjects')} subjects)",
            ["metric", "value [95% interval]"],
            [
                [label, interval(overall.get(k))]
                for k, label in _METRIC_NAMES.items()
                if k in overall
            ],
        )
    )
    per_view = m.get("per_view") or {}
    if per_view:
        sec.numbers.append(
            Table(
                "Per view",
                ["view", "test images", "predicted as", "precision", "recall", "F1", "AUROC"],
                [
                    [
                        v,
                        str(e.get("support")),
                        str(e.get("predicted")),
                        interval(e.get("precision")),
                        interval(e.get("recall")),
                        num(e.get("f1")),
                        num(e.get("auroc")),
                    ]
                    for v, e in per_view.items()
                ],
                "Precision is n/a for a view the model never predicted.",
            )
        )
    centers = m.get("per_center") or {}
    if len(centers) > 1:
        sec.numbers.append(
            Table(
                "Per center",
                ["center", "images", "subjects", "accuracy", "macro F1"],
                [
                    [
                        c,
                        str(e.get("n_images")),
                        str(e.get("n_subjects")),
                        interval(e.get("accuracy")),
                        interval(e.get("macro_f1")),
                    ]
                    for c, e in centers.items()
                ],
            )
        )
    legacy = m.get("fulora_legacy")
    if legacy:
        sec.numbers.append(
            Table(
                "FU-LoRA legacy metrics (for comparison with its table only)",
                ["ACC", "AUC", "F1"],
                [[num(legacy.get("ACC")), num(legacy.get("AUC")), num(legacy.get("F1"))]],
                legacy.get("note", ""),
            )
        )
    pic = picture(
        run,
        "confusion.png",
        "Confusion matrix: counts per true (rows) and predicted (columns) view; colour = share of the true view",
    )
    if pic:
        sec.pictures.append(pic)
    sec.reading.append(
        f"Intervals come from resampling subjects, not images: with {m.get('n_subjects')} test "
        "subjects they are wide, and two models whose intervals overlap are not shown to differ."
    )
    if legacy:
        sec.reading.append(
            "The legacy ACC/AUC/F1 reproduce FU-LoRA's notebook (running batch accuracy, AUC from "
            "hard labels, prediction-weighted F1); they are not the standard metrics above."
        )
    if setup.get("smoke_model"):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if ctx.is_phantom(setup.get("data")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


def pairs(run: Run, ctx: Context, sec: Section) -> None:
    """Image/mask pairs: adapter and base with hashes, mask source, previews, real head
    frames beside synthetic pairs, and the pair audit when ``audit/`` holds one."""
    request = read_json(run.path / "request.json")
    stats = read_json(run.path / "cohort_stats.json")
    sec.facts += hashes(
        request, {"adapter": f"{request.get('method', '')} adapter".strip(), "base": "base model"}
    )
    prior = request.get("ellipse_prior") or {}
    masks = setting(request.get("masks_from"))
    if prior:
        fitted = sum(g.get("n", 0) for g in (prior.get("groups") or {}).values())
        masks += f" (head ellipses sampled from a prior fitted to {fitted} training masks)"
    sec.facts += [
        ("pairs", f"{setting(stats.get('rows', request.get('n')))}"),
        ("masks from", masks),
        ("prompt", setting(request.get("prompt"))),
        (
            "sampler",
            f"{setting(request.get('scheduler'))}, {setting(request.get('steps'))} steps, guidance {setting(request.get('guidance'))}",
        ),
        ("seed", setting(request.get("seed"))),
    ]
    sec.settings = flat_settings(request, skip=("ellipse_prior",))
    sec.pictures += pictures(
        run, "previews/*.png", lambda p: f"Synthetic {p.stem} pairs (preview grid)", 4
    )
    _browse(run, ctx, sec, request)
    sec.reading.append(
        "Each pair is an image and the mask it was generated from (ControlNet) or with (packed "
        "LoRA); masks are tinted red with a yellow outline. A pair is only useful for training a "
        "segmenter when the image's head matches its mask: the pair audit checks the mask's "
        "shape, and with --segmenter whether a segmenter finds the same head."
    )
    if request.get("smoke_base"):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if (run.path / "audit" / "pairs_summary.json").is_file():
        pairs_audit(Run(run.path / "audit", "pairs_audit"), ctx, sec)


def pairs_audit(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth audit pairs``: how many passed, the shape checks, Dice with a segmenter."""
    s = read_json(run.path / "pairs_summary.json")
    t = s.get("thresholds", {})
    sec.numbers.append(
        Table(
            f"Pair audit: {s.get('passed')} of {s.get('n')} pairs passed",
            ["check", "threshold", "mean", "min", "median", "max"],
            [
                [
                    label,
                    limit,
                    num(e.get("mean")),
                    num(e.get("min")),
                    num(e.get("median")),
                    num(e.get("max")),
                ]
                for key, label, limit in [
                    (
                        "fit_residual",
                        "1 − IoU with the fitted ellipse",
                        f"≤ {setting(t.get('max_residual'))}",
                    ),
                    (
                        "inside_fov",
                        "share of mask inside the field of view",
                        f"≥ {setting(t.get('min_inside_fov'))}",
                    ),
                    (
                        "area",
                        "mask area (share of image)",
                        f"{setting(t.get('min_area'))} – {setting(t.get('max_area'))}",
                    ),
                    ("dice", "segmenter Dice", f"≥ {setting(t.get('min_dice'))}"),
                ]
                if (e := s.get(key))
            ],
            ""
            if s.get("segmenter")
            else "No --segmenter given: image/mask agreement was not checked.",
        )
    )
    failed = [r for r in read_csv(run.path / "pairs.csv") if r.get("passed") == "False"]
    if failed:
        sec.numbers.append(
            Table(
                "Failed pairs",
                ["index", "subject", "reasons"],
                [
                    [r.get("index", ""), r.get("subject_id", ""), r.get("reasons", "")]
                    for r in failed[:20]
                ],
                f"{len(failed)} failed" + (" (first 20 shown)" if len(failed) > 20 else ""),
            )
        )
    if s.get("failed"):
        sec.warnings.append(
            f"{s['failed']} of {s.get('n')} pairs failed the audit (see the table)."
        )


_SEG_METRICS = {
    "dice": ("Dice", 3),
    "iou": ("IoU", 3),
    "hd95_px": ("HD95 (px)", 1),
    "assd_px": ("ASSD (px)", 1),
    "hd95_mm": ("HD95 (mm)", 1),
    "assd_mm": ("ASSD (mm)", 1),
    "hc_abs_error_mm": ("HC error (mm)", 1),
}


def segmentation(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth evaluate segmentation``: metrics per box jitter with intervals and
    counts, empty predictions, the box plot and best/worst overlays."""
    s = read_json(run.path / "summary.json")
    settings = s.get("settings", {})
    skipped = s.get("skipped", {})
    boot = settings.get("bootstrap", {})
    sec.facts += [
        (
            "model",
            f"{setting(s.get('model'))} ({setting(s.get('model_type'))}, {short_hash(s.get('model_sha256'))})",
        ),
        (
            "test data",
            f"{setting(s.get('data'))}: {setting(s.get('n_images'))} images of {setting(s.get('n_subjects'))} subjects",
        ),
        (
            "skipped",
            f"{setting(skipped.get('empty_mask'))} with an empty mask, {setting(skipped.get('no_mask'))} without a mask",
        ),
        (
            "box jitter",
            f"{setting(settings.get('box_jitter'))} px, {setting(settings.get('rounds'))} round(s) each, seed {setting(settings.get('seed'))}",
        ),
        (
            "intervals",
            f"{int(100 * boot.get('confidence', 0.95))}% bootstrap over images, {setting(boot.get('n_boot'))} resamples",
        ),
    ]
    sec.settings = flat_settings({k: v for k, v in s.items() if k != "by_jitter"})
    for jitter, e in (s.get("by_jitter") or {}).items():
        rows = [
            [
                label,
                interval(e[k], digits),
                num((e[k] or {}).get("sd"), digits),
                str((e[k] or {}).get("n")),
            ]
            for k, (label, digits) in _SEG_METRICS.items()
            if e.get(k)
        ]
        sec.numbers.append(
            Table(
                f"Box jitter {jitter} px: {e.get('n_predictions')} predictions, "
                f"{e.get('empty_predictions')} empty",
                ["metric", "mean [95% interval]", "sd", "images"],
                rows,
                "An empty prediction has Dice 0 and no distance (HD95/ASSD leave it out).",
            )
        )
    pic = picture(
        run, "boxplot.png", "Dice per image at each box jitter (box: quartiles; n under each box)"
    )
    if pic:
        sec.pictures.append(pic)
    sec.pictures += pictures(
        run,
        "overlays/*.png",
        lambda p: (
            f"{p.stem.replace('_', ' ').capitalize()} test images at jitter "
            f"{settings.get('examples_at_jitter')} px: outlines green = ground truth, red = "
            "prediction; yellow = the prompt box"
        ),
        4,
    )
    sec.reading.append(
        "Dice is the overlap of predicted and true head masks (0 none, 1 perfect). Box jitter "
        "moves the prompt box by up to that many pixels, as a hurried click would: a model that "
        "holds its Dice under jitter depends less on a perfect box."
    )
    sec.reading.append(
        "This test Dice differs from the validation Dice logged while fine-tuning: it is measured "
        "on unseen subjects, at each image's native resolution, with jittered boxes. Quote this one."
    )
    if s.get("model_type") == "tiny":
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if ctx.is_phantom(s.get("data")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


def _metric_label(name: str) -> str:
    """A table column name of a metric: Dice, HD95 (mm), macro F1, ..."""
    if name in _SEG_METRICS:
        return _SEG_METRICS[name][0]
    return _METRIC_NAMES.get(name, name.replace("_", " "))


def experiment(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth experiment seg-augment|cls-augment``: the request, the table of mean ±
    sd per cell (from table.csv), and the chart."""
    request = read_json(run.path / "experiment.json")
    table = read_csv(run.path / "table.csv")
    for key, label in [
        ("real", "real data"),
        ("test", "test sets"),
        ("synthetic", "synthetic data"),
        ("n_real", "real counts"),
        ("n_synthetic", "synthetic counts"),
        ("backbones", "backbones"),
        ("n_synthetic_per_view", "synthetic per view"),
        ("repeats", "repeats"),
        ("model_type", "model"),
        ("max_train_steps", "steps per cell"),
    ]:
        if key in request:
            sec.facts.append((label, setting(request[key])))
    sec.settings = flat_settings(request)
    if table:
        columns = list(table[0])
        metrics = [
            c[: -len("_mean")] for c in columns if c.endswith("_mean") and f"{c[:-5]}_sd" in columns
        ]
        keys = [c for c in columns if not c.endswith(("_mean", "_sd"))]
        shown = [m for m in metrics if any(r[f"{m}_mean"] for r in table)]
        rows = []
        for r in table:
            cells = []
            for m in shown:
                mean, sd = r[f"{m}_mean"], r[f"{m}_sd"]
                cells.append(
                    "n/a" if not mean else num(float(mean)) + (f" ± {num(float(sd))}" if sd else "")
                )
            rows.append([r[k] for k in keys] + cells)
        sec.numbers.append(
            Table(
                "Results per cell: mean ± sd over repeats (table.csv)",
                [k.replace("_", " ") for k in keys] + [_metric_label(m) for m in shown],
                rows,
                "Each cell trains from scratch and is scored on the test sets; the spread over "
                "repeats is the noise any difference between rows must beat.",
            )
        )
    for name in ("dice_vs_real.png", "accuracy_vs_synthetic.png"):
        pic = picture(run, name, "Mean ± sd over repeats per cell")
        if pic:
            sec.pictures.append(pic)
    sec.reading.append(
        "Read across a row pair: the same number of real images with and without synthetic data. "
        "Synthetic data helps only where the gain exceeds the sd over repeats."
    )
    if request.get("model_type") == "tiny" or (
        run.kind == "seg_augment" and not request.get("checkpoint")
    ):
        sec.warnings.append(SMOKE_LINE)
        sec.smoke = True
    if ctx.is_phantom(request.get("real")):
        sec.warnings.append(PHANTOM_LINE)
        sec.smoke = True


def _card_metadata(path: Path) -> tuple[dict[str, Any], str]:
    """A card's YAML metadata and its body."""
    import yaml

    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}, text
    _, meta, body = text.split("---", 2)
    try:
        data = yaml.safe_load(meta) or {}
    except yaml.YAMLError:
        data = {}
    return (data if isinstance(data, dict) else {}), body


def published(run: Run, ctx: Context, sec: Section) -> None:
    """A ``fusynth publish --dry-run`` folder: the card's metadata, the files that would be
    uploaded with their sizes, and the card's own pictures."""
    meta, body = _card_metadata(run.path / "README.md")
    title = next(
        (line.lstrip("# ").strip() for line in body.splitlines() if line.startswith("# ")), ""
    )
    if title:
        sec.facts.append(("card title", title))
    for key in ("license", "library_name", "base_model", "datasets", "tags", "pipeline_tag"):
        if meta.get(key):
            sec.facts.append((key.replace("_", " "), setting(meta[key])))
    files = sorted(p for p in run.path.rglob("*") if p.is_file())
    sec.numbers.append(
        Table(
            f"Files that would be uploaded ({len(files)})",
            ["file", "size"],
            [[p.relative_to(run.path).as_posix(), _size(p.stat().st_size)] for p in files[:40]],
            "" if len(files) <= 40 else f"first 40 of {len(files)} shown",
        )
    )
    sec.pictures += pictures(
        run, "validation/*.png", lambda p: f"Sample grid in the card ({p.name})", 2
    )
    sec.pictures += pictures(
        run, "eval/*/*.png", lambda p: f"Evaluation figure in the card: {p.parent.name}/{p.name}", 4
    )
    if "Not for clinical use" in body:
        sec.notes.append("The card states: not for clinical use.")
    sec.reading.append(
        "This is what `fusynth publish` would upload (nothing was uploaded with --dry-run). "
        "Local paths are redacted to <local> in every text file."
    )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


#: The builder of each kind's section.
BUILDERS: dict[str, Callable[[Run, Context, Section], None]] = {
    "phantom_source": phantom_source,
    "dataset": dataset,
    "ssl": ssl,
    "lora": diffusion_adapter,
    "controlnet": diffusion_adapter,
    "cohort": cohort,
    "pairs": pairs,
    "cohort_audit": cohort_audit,
    "pairs_audit": pairs_audit,
    "clustering": clustering,
    "classifier": classifier,
    "classification": classification,
    "zeroshot": classification,
    "sam": sam,
    "segmentation": segmentation,
    "seg_augment": experiment,
    "cls_augment": experiment,
    "published": published,
}


def build_sections(runs: list[Run]) -> list[Section]:
    """One section per run, in the runs' order."""
    ctx = Context(runs)
    used: set[str] = set()
    out = []
    for run in runs:
        sec = new_section(run, _anchor(run, used))
        BUILDERS[run.kind](run, ctx, sec)
        out.append(sec)
    return out
