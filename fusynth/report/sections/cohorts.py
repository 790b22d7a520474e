"""Sections of synthetic data: cohorts, image/mask pairs, their audits, and real and
synthetic frames side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fusynth.report.figures as figures
from fusynth.report.detect import Run
from fusynth.report.model import (
    PairRow,
    Section,
    Table,
    ViewRow,
    num,
    setting,
    share,
)
from fusynth.report.samples import (
    THUMBS_PER_VIEW,
    find_key,
    pick_by_view,
    tile,
    tiles,
    view_counts,
)
from fusynth.report.sections.common import (
    MAX_PAIRS,
    SMOKE_LINE,
    Context,
    flat_settings,
    hashes,
    picture,
    pictures,
    read_csv,
    read_json,
    views_text,
)


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
            f"{setting(stats.get('rows', request.get('n')))} ({views_text(request.get('views') or {})})",
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
