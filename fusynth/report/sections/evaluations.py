"""Sections of evaluations and experiments: clustering, classification, zero-shot,
segmentation, seg-augment and cls-augment."""

from __future__ import annotations

from pathlib import Path

from fusynth.report.detect import Run
from fusynth.report.model import (
    Section,
    Table,
    interval,
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
    picture,
    pictures,
    read_csv,
    read_json,
    views_text,
)

# ----------------------------------------------------------------------------- evaluations


def clustering(run: Run, ctx: Context, sec: Section) -> None:
    """``fusynth evaluate clustering``: metrics per clustering, fidelity, montages."""
    m = read_json(run.path / "metrics.json")
    sec.facts += [
        ("embedding", f"{setting(m.get('embed'))} ({setting(m.get('embedding_dim'))} dimensions)"),
        ("data", setting(m.get("data")) + (f" + {m['extra']}" if m.get("extra") else "")),
        (
            "samples",
            f"{setting(m.get('n_samples'))} ({setting(m.get('n_real'))} real, {setting(m.get('n_synthetic'))} synthetic): {views_text(m.get('view_counts') or {})}",
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
                f"synthetic; {views_text(c.get('views') or {})}), real majority "
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
