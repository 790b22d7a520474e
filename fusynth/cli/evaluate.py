"""``fusynth evaluate segmentation|clustering|classification|zeroshot``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fusynth.classify import LEGACY_BATCH_SIZE, N_BOOT
from fusynth.cli.args import (
    Parser,
    accept_kebab,
    parse_int_list,
    stat,
)


def _evaluate_segmentation(args: argparse.Namespace) -> int:
    from fusynth.cli.recipe import quiet_libraries
    from fusynth.segment.evaluate import evaluate_segmentation

    quiet_libraries()
    summary = evaluate_segmentation(
        args.model,
        args.data,
        args.out,
        box_jitter=parse_int_list(args.box_jitter, "--box_jitter"),
        rounds=args.rounds,
        seed=args.seed,
        model_type=args.model_type,
        overwrite=args.overwrite,
        n_examples=args.n_examples,
        embedding_cache=args.embedding_cache,
        preprocess=args.preprocess,
    )
    for jitter, stats in summary["by_jitter"].items():
        dice, hd95 = stats["dice"], stats["hd95_px"]
        prompt = f"box jitter {jitter} px" if summary["segmenter"] == "sam" else "no box prompt"
        line = (
            f"{prompt}: Dice {stat(dice, 3)}, HD95 {stat(hd95, 1)} px, "
            f"ASSD {stat(stats['assd_px'], 1)} px"
        )
        if stats.get("hc_abs_error_mm"):
            line += f", HC error {stat(stats['hc_abs_error_mm'], 1)} mm"
        print(line)
    print(f"{summary['n_images']} images; report in {args.out}")
    return 0


def add_commands(groups: Any) -> None:
    """Add the ``evaluate`` command group to the ``fusynth`` parser."""
    ev = groups.add_parser("evaluate", help="evaluate models")
    ev_cmds = ev.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = ev_cmds.add_parser(
        "segmentation", help="box-prompted SAM segmentation at native resolution"
    )
    p.add_argument(
        "--model",
        required=True,
        help="SAM folder (finetune_sam output) or checkpoint, or a train_unet folder",
    )
    p.add_argument("--data", required=True, help="prepared dataset with masks, DIR[:split]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--box_jitter",
        default="0",
        help="comma-separated box jitter values in pixels, e.g. 0,10,20 (0)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="jittered prompts per image and value > 0 (1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter and bootstrap (0)")
    p.add_argument(
        "--model_type", help="SAM size: vit_b, vit_l, vit_h, tiny (read from the weights)"
    )
    p.add_argument(
        "--preprocess",
        choices=("sam", "medsam"),
        help="input preprocessing (the model's own; MedSAM weights: medsam)",
    )
    p.add_argument(
        "--n_examples", type=int, default=4, help="images in the worst/best overlays (4)"
    )
    p.add_argument(
        "--embedding_cache",
        help="folder of cached image embeddings, e.g. the one fine-tuning used (off)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_evaluate_segmentation)
    add_evaluate_clustering_parser(ev_cmds)
    add_evaluate_classification_parser(ev_cmds)
    add_evaluate_zeroshot_parser(ev_cmds)


def add_evaluate_clustering_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``clustering`` to the ``fusynth evaluate`` subcommands.

    Args:
        subparsers: what ``add_subparsers`` returned for ``fusynth evaluate``.

    Returns:
        The new parser.
    """
    p = subparsers.add_parser(
        "clustering",
        help="cluster views in an embedding: purity, Hungarian accuracy, NMI, ARI, fidelity",
    )
    p.add_argument(
        "--embed",
        required=True,
        help="embedder: pixels, clip:NAME[@PRETRAINED] or ssl:DIR (a train_ssl.py output)",
    )
    p.add_argument("--data", required=True, help="prepared dataset or cohort, DIR[:split]")
    p.add_argument(
        "--extra",
        help="a cohort (or dataset) DIR[:split] clustered together with --data, for the "
        "semantic fidelity of its synthetic samples",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--k", type=int, default=5, help="clusters (5)")
    p.add_argument(
        "--overcluster", type=int, help="also cluster into this many clusters, e.g. 20 (off)"
    )
    p.add_argument(
        "--scan",
        action="store_true",
        help="also train a SCAN-style clustering head on the fixed embeddings",
    )
    p.add_argument("--views", help="comma-separated views to keep (all)")
    p.add_argument("--n_init", type=int, default=10, help="k-means restarts (10)")
    p.add_argument(
        "--scan_neighbors",
        type=int,
        default=20,
        help="nearest neighbours per sample for SCAN and neighbour consistency (20)",
    )
    p.add_argument(
        "--scan_entropy_weight", type=float, default=5.0, help="SCAN's entropy weight (5.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and SCAN (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=evaluate_clustering_command)
    return accept_kebab(p)


def evaluate_clustering_command(args: argparse.Namespace) -> int:
    """Run the evaluation and print one line per clustering; returns 0."""
    from fusynth.cluster.evaluate import evaluate_clustering
    from fusynth.data.views import parse_view_list

    metrics = evaluate_clustering(
        args.embed,
        args.data,
        args.out,
        k=args.k,
        overcluster=args.overcluster,
        scan=args.scan,
        extra=args.extra,
        seed=args.seed,
        overwrite=args.overwrite,
        views=parse_view_list(args.views, "--views"),
        n_init=args.n_init,
        scan_neighbors=args.scan_neighbors,
        scan_entropy_weight=args.scan_entropy_weight,
    )
    for name, m in metrics["clusterings"].items():
        print(
            f"{name}: purity {m['purity']:.3f}, Hungarian accuracy "
            f"{m['hungarian_accuracy']:.3f}, NMI {m['nmi']:.3f}, ARI {m['ari']:.3f}"
        )
        if m["semantic_fidelity"]:
            print(f"  {fidelity_line(m['semantic_fidelity'])}")
    print(
        f"{metrics['n_samples']} samples ({metrics['n_synthetic']} synthetic); report in {args.out}"
    )
    return 0


def fidelity_line(f: dict[str, Any]) -> str:
    """One line summarising semantic fidelity."""
    line = (
        f"semantic fidelity {f['share']:.3f}: {f['n_matching']} of {f['n_synthetic']} synthetic "
        "samples in a cluster whose real majority is their view"
    )
    if f["n_in_clusters_without_real"]:
        line += f" ({f['n_in_clusters_without_real']} in clusters without real samples)"
    return line


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    """Flags both evaluation commands share."""
    p.add_argument("--data", required=True, help="prepared dataset with views, DIR[:split]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--views", help="comma-separated views of --data to evaluate (all of them)")
    p.add_argument(
        "--metrics",
        default="standard",
        help="standard, or standard,fulora-legacy to add FU-LoRA's notebook ACC/AUC/F1 (standard)",
    )
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and the legacy shuffle (0)"
    )
    p.add_argument(
        "--n_boot",
        type=int,
        default=N_BOOT,
        help=f"bootstrap resamples of subjects for the 95%% intervals, 0 for none ({N_BOOT})",
    )
    p.add_argument(
        "--legacy_batch_size",
        type=int,
        default=LEGACY_BATCH_SIZE,
        help=f"loader batch size of the legacy running accuracy ({LEGACY_BATCH_SIZE})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _ci(entry: dict[str, Any]) -> str:
    """``0.812 [0.750, 0.870]``, or n/a."""
    if entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def print_summary(report: dict[str, Any]) -> None:
    """A few lines: the overall metrics, per center, legacy numbers, where the report is."""
    o = report["overall"]
    print(
        f"accuracy {_ci(o['accuracy'])}, balanced accuracy {_ci(o['balanced_accuracy'])}, "
        f"macro-F1 {_ci(o['macro_f1'])}, macro ROC-AUC {_ci(o['macro_auroc'])}"
    )
    centers = report["per_center"]
    if len(centers) > 1:
        print(
            "per center: "
            + ", ".join(f"{c} {_ci(m['accuracy'])} (n={m['n_images']})" for c, m in centers.items())
        )
    legacy = report.get("fulora_legacy")
    if legacy:
        auc = "n/a" if legacy["AUC"] is None else f"{legacy['AUC']:.3f}"
        print(f"FU-LoRA legacy: ACC {legacy['ACC']:.3f}, AUC {auc}, F1 {legacy['F1']:.3f}")
    print(
        f"{report['n_images']} images of {report['n_subjects']} subjects; report in {report['out']}"
    )


def _report_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of the flags :func:`_add_report_flags` adds, as keyword arguments."""
    keys = ("metrics", "views", "batch_size", "seed", "n_boot", "legacy_batch_size", "overwrite")
    return {k: getattr(args, k) for k in keys}


def _evaluate_classification(args: argparse.Namespace) -> int:
    from fusynth.classify.evaluate import evaluate_classification

    report = evaluate_classification(args.model, args.data, args.out, **_report_kwargs(args))
    print_summary(report)
    return 0


def _evaluate_zeroshot(args: argparse.Namespace) -> int:
    from fusynth.classify.evaluate import evaluate_zeroshot

    report = evaluate_zeroshot(
        args.model, args.pretrained, args.prompts, args.data, args.out, **_report_kwargs(args)
    )
    if report["setup"]["smoke_model"]:
        print(f"note: {report['setup']['model']} is random-init: these numbers are a smoke test")
    print_summary(report)
    return 0


def add_evaluate_classification_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``classification`` under ``fusynth evaluate``."""
    p = subparsers.add_parser(
        "classification", help="view classification metrics of a trained classifier"
    )
    p.add_argument(
        "--model",
        required=True,
        help="classifier folder (recipes/train_classifier.py output); with --linear_probe an "
        "open_clip model or a recipes/train_clip.py folder",
    )
    _add_report_flags(p)
    add_linear_probe_flags(p, _evaluate_classification)
    return accept_kebab(p)


def add_evaluate_zeroshot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``zeroshot`` under ``fusynth evaluate``."""
    p = subparsers.add_parser("zeroshot", help="zero-shot view classification with open_clip")
    p.add_argument(
        "--model",
        help="open_clip model name, e.g. ViT-B-32 (default: fusynth-tiny-clip, a random-init "
        "smoke model)",
    )
    p.add_argument(
        "--pretrained",
        help="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local weights file "
        "(default: random init)",
    )
    p.add_argument(
        "--prompts",
        help="YAML file mapping each view to a list of prompts (default: built-in prompts)",
    )
    _add_report_flags(p)
    p.set_defaults(func=_evaluate_zeroshot)
    return accept_kebab(p)


# ----------------------------------------------------------------------------- linear probe


def add_linear_probe_flags(
    p: argparse.ArgumentParser, classifier: Callable[[argparse.Namespace], int]
) -> None:
    """Add ``--linear_probe`` and its flags to ``fusynth evaluate classification``;
    without ``--linear_probe`` the command runs ``classifier`` as before."""
    p.add_argument(
        "--linear_probe",
        dest="linear_probe",
        action="store_true",
        help="fit a linear probe on CLIP image features of --train and evaluate it: --model "
        "is then an open_clip model name or a recipes/train_clip.py folder",
    )
    p.add_argument("--train", help="with --linear_probe: labelled images DIR[:split] to fit on")
    p.add_argument("--pretrained", help="with --linear_probe: open_clip tag or weights file")
    p.add_argument(
        "--probe_l2", type=float, default=1e-3, help="with --linear_probe: L2 penalty (1e-3)"
    )
    p.set_defaults(func=lambda args: _classification_or_probe(args, classifier))


def _classification_or_probe(
    args: argparse.Namespace, classifier: Callable[[argparse.Namespace], int]
) -> int:
    from fusynth.core.errors import UserInputError

    if not args.linear_probe:
        for flag in ("train", "pretrained"):
            if getattr(args, flag) is not None:
                raise UserInputError(f"--{flag}: only with --linear_probe")
        return classifier(args)
    if args.train is None:
        raise UserInputError("--linear_probe: needs --train DIR[:split] to fit the probe on")
    from fusynth.classify.probe import evaluate_linear_probe

    report = evaluate_linear_probe(
        args.model, args.pretrained, args.train, args.data, args.out, l2=args.probe_l2,
        **_report_kwargs(args),
    )  # fmt: skip
    if report["setup"]["smoke_model"]:
        print(f"note: {report['setup']['model']} is random-init: these numbers are a smoke test")
    print_summary(report)
    return 0


# ----------------------------------------------------------------------------- experiment
