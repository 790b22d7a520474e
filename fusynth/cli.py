"""The ``fusynth`` command. Each subcommand parses flags and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fusynth import __version__
from fusynth.errors import UserInputError

log = logging.getLogger("fusynth")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a whole number, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


# ----------------------------------------------------------------------------- data


def _data_prepare(args: argparse.Namespace) -> int:
    from fusynth.data.prepare import prepare
    from fusynth.data.readers import ReaderOptions

    options = ReaderOptions(
        csv=args.csv,
        images_subdir=args.images_subdir,
        masks_subdir=args.masks_subdir,
        mask_suffix=args.mask_suffix,
        mask_kind=args.mask_kind,
        view=args.view,
        subject_regex=args.subject_regex,
        center=args.center,
        cohort=args.cohort,
    )
    result = prepare(
        args.format,
        args.src,
        args.out,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
        options=options,
    )
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
    print(f"wrote {sum(result.counts.values())} samples ({counts}) to {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _data_phantom(args: argparse.Namespace) -> int:
    from fusynth.data.phantom_cohort import write_phantom_source

    out = write_phantom_source(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        views=args.views.split(",") if args.views else None,
        pixel_spacing_mm=args.pixel_spacing,
        frames_per_subject=args.frames_per_subject,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.n} phantom frames to {out} (prepare with: fusynth data prepare "
        f"--format metadata {out} OUT)"
    )
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from fusynth.data.inspect import inspect_dataset
    from fusynth.io import atomic_write_bytes

    summary, montage = inspect_dataset(args.dir, args.montage)
    print(summary.to_text())
    print(f"montage: {montage}")
    if args.json:
        atomic_write_bytes(args.json, summary.to_json().encode())
        print(f"summary: {args.json}")
    if not summary.ok:
        print("fusynth: inspect failed: a subject appears in more than one split", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- generate


def _request(cls: type, args: argparse.Namespace, **overrides: object):
    """A request dataclass from the parsed flags of the same names."""
    import dataclasses

    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **overrides})


def _generate_text2img(args: argparse.Namespace) -> int:
    from fusynth.cohort.text2img import Text2ImgRequest, generate_text2img, parse_views
    from fusynth.distributed import partial_state
    from fusynth.recipes import quiet_libraries

    quiet_libraries()
    req = _request(Text2ImgRequest, args, views=parse_views(args.views))
    result = generate_text2img(req)
    if partial_state().is_main_process:
        if result.generated:
            print(
                f"generated {result.generated} images in this process ({result.images_per_second:.2f} images/s); "
                f"cohort of {result.n} in {result.out} (previews in {result.out / 'previews'})"
            )
        else:
            print(f"{result.out} is complete ({result.n} samples); nothing to do")
    return 0


def _generate_pairs(args: argparse.Namespace) -> int:
    from fusynth.cohort.pairs import PairsRequest, generate_pairs
    from fusynth.cohort.writer import STATS_FILE
    from fusynth.distributed import partial_state
    from fusynth.recipes import quiet_libraries

    quiet_libraries()
    req = _request(PairsRequest, args)
    result = generate_pairs(req)
    if partial_state().is_main_process:
        import json

        stats = json.loads((result.out / STATS_FILE).read_text())
        print(
            f"{result.out}: {stats['rows']} of {result.n} pairs ({args.method}); {stats['attempts']} "
            f"attempts, {stats['rejected']} rejected by the mask extractor, {stats['left_out']} left out"
            + ("" if result.generated else " (already complete: nothing to do)")
        )
    return 0


def _audit_pairs(args: argparse.Namespace) -> int:
    from fusynth.audit.pairs import PairThresholds, audit_pairs
    from fusynth.recipes import quiet_libraries

    quiet_libraries()
    summary = audit_pairs(
        args.cohort,
        PairThresholds(
            max_residual=args.max_residual,
            min_inside_fov=args.min_inside_fov,
            min_area=args.min_area,
            max_area=args.max_area,
            min_dice=args.min_dice,
        ),
        segmenter=args.segmenter,
        segmenter_type=args.model_type,
        report=args.report,
        drop=args.drop,
        overwrite=args.overwrite,
    )
    dice = f", Dice mean {summary['dice']['mean']:.3f}" if summary["dice"] else ""
    print(
        f"{summary['passed']} of {summary['n']} pairs pass (fit residual mean "
        f"{summary['fit_residual']['mean']:.3f}{dice}); report in {summary['report']}"
    )
    if args.drop:
        print(f"kept {summary['kept']} pairs in {args.drop}")
    return 0


def _evaluate_segmentation(args: argparse.Namespace) -> int:
    from fusynth.recipes import quiet_libraries
    from fusynth.segment.evaluate import evaluate_segmentation, parse_int_list

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
    )
    for jitter, stats in summary["by_jitter"].items():
        dice, hd95 = stats["dice"], stats["hd95_px"]
        prompt = f"box jitter {jitter} px" if summary["segmenter"] == "sam" else "no box prompt"
        line = (
            f"{prompt}: Dice {_stat(dice, 3)}, HD95 {_stat(hd95, 1)} px, "
            f"ASSD {_stat(stats['assd_px'], 1)} px"
        )
        if stats.get("hc_abs_error_mm"):
            line += f", HC error {_stat(stats['hc_abs_error_mm'], 1)} mm"
        print(line)
    print(f"{summary['n_images']} images; report in {args.out}")
    return 0


def _stat(s: dict | None, digits: int) -> str:
    """``mean [low, high]`` of a summary entry, or n/a."""
    if not s or s.get("mean") is None:
        return "n/a"
    if s.get("ci_low") is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def comma_list(text: str) -> list[str]:
    """``a, b,,c`` -> ``[a, b, c]``: items stripped, empty ones dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _experiment_kwargs(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    """The settings every experiment takes (see :func:`_add_experiment_flags`), plus those
    of ``keys`` that were given (the others keep the config's defaults)."""
    return {
        "real": args.real,
        "test": comma_list(args.test),
        "out": args.out,
        "synthetic": args.synthetic,
        "repeats": args.repeats,
        "seed": args.seed,
        "keep_models": args.keep_models,
        "overwrite": args.overwrite,
        **{k: getattr(args, k) for k in keys if getattr(args, k) is not None},
    }


def _report_experiment(result: dict, what: str) -> int:
    """Print an experiment's table and where its files are."""
    print((result["out"] / "table.md").read_text(), end="")
    print(f"{what} in {result['out']}")
    return 0


def _experiment_seg_augment(args: argparse.Namespace) -> int:
    from fusynth.recipes import quiet_libraries
    from fusynth.segment.evaluate import parse_int_list
    from fusynth.segment.experiment import SEG_AUGMENT_KEYS, SegAugmentConfig, seg_augment

    quiet_libraries()
    config = SegAugmentConfig(
        n_real=parse_int_list(args.n_real, "--n_real"),
        n_synthetic=parse_int_list(args.n_synthetic, "--n_synthetic"),
        **_experiment_kwargs(args, SEG_AUGMENT_KEYS),
    )
    return _report_experiment(seg_augment(config), "results, table and chart")


def _experiment_cls_augment(args: argparse.Namespace) -> int:
    from fusynth.classify.experiment import TRAIN_KEYS, ClsAugmentConfig, cls_augment
    from fusynth.data.views import parse_view_list
    from fusynth.recipes import quiet_libraries
    from fusynth.segment.evaluate import parse_int_list

    quiet_libraries()
    config = ClsAugmentConfig(
        backbones=comma_list(args.backbones),
        n_synthetic_per_view=parse_int_list(args.n_synthetic_per_view, "--n_synthetic_per_view"),
        views=parse_view_list(args.views, "--views"),
        **_experiment_kwargs(args, TRAIN_KEYS),
    )
    return _report_experiment(cls_augment(config), "results and tables")


def _lora_convert(args: argparse.Namespace) -> int:
    from fusynth.diffusion.kohya import convert_lora_file

    out = convert_lora_file(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} LoRA to {out}")
    return 0


def _flag(*names: str) -> list[str]:
    """``--a_b`` with its ``--a-b`` spelling, so both conventions work."""
    out = []
    for name in names:
        out.append(name)
        if "_" in name:
            out.append(name.replace("_", "-"))
    return out


def _add_experiment_flags(p: argparse.ArgumentParser, real: str, test: str, synthetic: str) -> None:
    """The flags every ``fusynth experiment`` takes (read by :func:`_experiment_kwargs`);
    ``real``, ``test`` and ``synthetic`` are the help of those flags."""
    p.add_argument("--real", required=True, help=real)
    p.add_argument("--test", required=True, help=test)
    p.add_argument("--synthetic", help=synthetic)
    p.add_argument("--out", required=True, help="experiment folder")
    p.add_argument("--repeats", type=int, default=3, help="repeats per cell, seeds seed+r (3)")
    p.add_argument("--seed", type=int, default=0, help="(0)")
    p.add_argument(
        "--keep_models",
        action="store_true",
        help="keep each cell's weights (deleted after evaluation)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an experiment with another request"
    )


def _add_cohort_flags(
    p: argparse.ArgumentParser, scheduler: str, steps: int, unit: str, resolution: str, base: str
) -> None:
    """Flags every ``fusynth generate`` command shares (the cohort writer's and the sampler's)."""
    p.add_argument(
        "--out", required=True, help="cohort folder (resumable; a prepared dataset when done)"
    )
    p.add_argument("--base", help=f"hub id or diffusers folder (default: {base})")
    p.add_argument("--revision", help="hub revision of --base")
    p.add_argument("--variant", help="weight variant of --base, e.g. fp16")
    p.add_argument(*_flag("--negative_prompt"), dest="negative_prompt", help="negative prompt")
    p.add_argument(
        "--scheduler", default=scheduler, help=f"euler, euler_a, unipc, ddim or dpm ({scheduler})"
    )
    p.add_argument(
        "--steps", type=_positive_int("--steps"), default=steps, help=f"sampler steps ({steps})"
    )
    p.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (7)")
    p.add_argument("--resolution", type=int, help=f"image side, multiple of 8 ({resolution})")
    p.add_argument(
        *_flag("--batch_size"),
        dest="batch_size",
        type=_positive_int("--batch_size"),
        default=4,
        help=f"{unit} per forward pass (4)",
    )
    p.add_argument(
        *_flag("--shard_size"),
        dest="shard_size",
        type=_positive_int("--shard_size"),
        default=64,
        help=f"{unit} per shard, the unit of resume (64)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="cohort seed; sample i's seed derives from (seed, i)"
    )
    p.add_argument(
        *_flag("--cpu_threads"),
        dest="cpu_threads",
        type=_positive_int("--cpu_threads"),
        default=2,
        help="intra-op threads per process on a CPU; fixed so cohorts are identical for any "
        "number of processes (2)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different or finished cohort in --out"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``fusynth`` argument parser."""
    from fusynth.data.images import MASK_KINDS
    from fusynth.data.readers import FORMATS

    parser = _Parser(prog="fusynth", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)

    data = groups.add_parser("data", help="prepare, generate and inspect datasets")
    data_cmds = data.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = data_cmds.add_parser(
        "prepare",
        help="read a public dataset in its publisher's layout into a prepared dataset",
    )
    p.add_argument("src", metavar="SRC", help="source folder in the publisher's layout")
    p.add_argument("out", metavar="OUT", help="output folder (a datasets.DatasetDict)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="source layout")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of training subjects for validation (default 0.1)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of subjects for test when the publisher has no test split (default 0.2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--csv", help="the CSV to read (african, fetal_planes_db, metadata)")
    p.add_argument("--images-subdir", default="images", help="pairs: image folder (images)")
    p.add_argument("--masks-subdir", default="masks", help="pairs: mask folder (masks)")
    p.add_argument(
        "--mask-suffix",
        default="",
        help="pairs: mask name is <image stem><suffix> (e.g. _Annotation)",
    )
    p.add_argument(
        "--mask-kind",
        default="filled",
        choices=list(MASK_KINDS),
        help="pairs/metadata: masks are filled label maps or closed outlines",
    )
    p.add_argument("--view", default="head", help="pairs: the view of every image (head)")
    p.add_argument(
        "--subject-regex",
        help="pairs/imagefolder: regex on the file stem giving the subject "
        r"(group 1 if any), e.g. 'Patient(\d+)'",
    )
    p.add_argument(
        "--center", default="", help="pairs/imagefolder/metadata: center of every sample"
    )
    p.add_argument("--cohort", help="pairs/imagefolder/metadata: cohort name (default: SRC name)")
    p.set_defaults(func=_data_prepare)

    p = data_cmds.add_parser(
        "phantom", help="draw a procedural ultrasound phantom (offline default)"
    )
    p.add_argument("out", metavar="OUT", help="output folder (images, masks, metadata.csv)")
    p.add_argument("--n", type=_positive_int("--n"), default=64, help="number of frames (64)")
    p.add_argument(
        "--size", type=_positive_int("--size"), default=128, help="frame side in px (128)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (0)")
    p.add_argument("--views", help="comma-separated views (default head,abdomen,femur,thorax)")
    p.add_argument(
        "--pixel-spacing",
        type=_positive_float("--pixel-spacing"),
        help="mm per pixel (default: a 160 mm field of view across --size)",
    )
    p.add_argument(
        "--frames-per-subject",
        type=_positive_int("--frames-per-subject"),
        default=2,
        help="consecutive frames drawn for one phantom subject (2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_data_phantom)

    p = data_cmds.add_parser("inspect", help="summarise a prepared dataset and draw a montage")
    p.add_argument("dir", metavar="DIR", help="prepared dataset folder")
    p.add_argument("--montage", help="montage PNG path (default DIR/montage.png)")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.set_defaults(func=_data_inspect)

    gen = groups.add_parser("generate", help="generate synthetic cohorts")
    gen_cmds = gen.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = gen_cmds.add_parser("text2img", help="images per fetal view from a base and a LoRA")
    p.add_argument("--views", required=True, help="view:count list, e.g. brain:1000,femur:500")
    _add_cohort_flags(
        p,
        scheduler="euler",
        steps=20,
        unit="images",
        resolution="512; 64 for the smoke base",
        base="the tiny smoke base",
    )
    p.add_argument("--lora", help="LoRA folder (train_lora.py output) or .safetensors file")
    p.add_argument(
        *_flag("--lora_scale"), dest="lora_scale", type=float, default=1.0, help="LoRA scale (1.0)"
    )
    p.add_argument(
        *_flag("--prompt_template"),
        dest="prompt_template",
        help="prompt per view with {view} (default: the adapter's training captions)",
    )
    p.add_argument("--prompts", help="YAML file of view: prompt")
    p.set_defaults(func=_generate_text2img)

    p = gen_cmds.add_parser("pairs", help="fetal head image/mask pairs (packed LoRA or ControlNet)")
    p.add_argument("--method", required=True, help="packed or controlnet")
    p.add_argument(
        "--adapter",
        required=True,
        help="train_lora.py --packing output, or train_controlnet.py output",
    )
    p.add_argument("--n", required=True, type=int, help="number of pairs")
    _add_cohort_flags(
        p,
        scheduler="unipc",
        steps=30,
        unit="pairs",
        resolution="the adapter's",
        base="the adapter's base",
    )
    p.add_argument(
        "--masks-from",
        "--masks_from",
        dest="masks_from",
        help="a prepared DIR[:split] whose masks are reused, or 'ellipse' to sample head ellipses "
        "fitted to the adapter's training masks (controlnet: required; packed: guides img2img)",
    )
    p.add_argument("--group", help="ellipse masks: draw from one group only (e.g. trimester 2)")
    p.add_argument("--prompt", help="prompt (default: the adapter's training caption)")
    p.add_argument(
        *_flag("--lora_scale"),
        dest="lora_scale",
        type=float,
        default=0.9,
        help="packed: LoRA scale (0.9)",
    )
    p.add_argument("--packing", help="packed: the packing the adapter must have been trained with")
    p.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="packed with --masks-from: img2img strength (0.75)",
    )
    p.add_argument(
        "--threshold", type=int, default=180, help="packed: mask channel threshold (180)"
    )
    p.add_argument(
        *_flag("--max_residual"),
        dest="max_residual",
        type=float,
        default=0.15,
        help="packed: largest accepted 1 - IoU between mask component and its ellipse (0.15)",
    )
    p.add_argument(
        *_flag("--max_attempts"),
        dest="max_attempts",
        type=int,
        default=4,
        help="packed: draws per pair before it is left out (4)",
    )
    p.add_argument(
        "--conditioning",
        help="controlnet: the conditioning the adapter must have been trained with",
    )
    p.add_argument(
        *_flag("--conditioning_scale"),
        dest="conditioning_scale",
        type=float,
        default=1.0,
        help="controlnet: strength (1.0)",
    )
    p.set_defaults(func=_generate_pairs)

    audit = groups.add_parser("audit", help="audit synthetic data")
    audit_cmds = audit.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = audit_cmds.add_parser("pairs", help="pair consistency of an image/mask cohort")
    p.add_argument(
        "cohort", metavar="COHORT", help="cohort or prepared dataset with masks, DIR[:split]"
    )
    p.add_argument(
        "--segmenter", help="SAM folder or checkpoint: prompt with each mask's box and record Dice"
    )
    p.add_argument(
        *_flag("--model_type"),
        dest="model_type",
        help="SAM size of a bare checkpoint (vit_b, vit_l, vit_h, tiny)",
    )
    p.add_argument(
        "--min-dice",
        "--min_dice",
        dest="min_dice",
        type=float,
        default=0.8,
        help="smallest passing Dice with --segmenter (0.8)",
    )
    p.add_argument(
        "--max-residual",
        "--max_residual",
        dest="max_residual",
        type=float,
        default=0.15,
        help="largest passing 1 - IoU between mask and its fitted ellipse (0.15)",
    )
    p.add_argument(
        "--min-inside-fov",
        "--min_inside_fov",
        dest="min_inside_fov",
        type=float,
        default=0.95,
        help="smallest passing share of the mask inside the field of view (0.95)",
    )
    p.add_argument(
        "--min-area",
        "--min_area",
        dest="min_area",
        type=float,
        default=0.005,
        help="smallest passing mask area, share of the image (0.005)",
    )
    p.add_argument(
        "--max-area",
        "--max_area",
        dest="max_area",
        type=float,
        default=0.9,
        help="largest passing mask area (0.9)",
    )
    p.add_argument(
        "--report", help="report folder (default COHORT/audit): pairs.csv, pairs_summary.json"
    )
    p.add_argument("--drop", help="write the cohort without failing pairs to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --drop folder")
    p.set_defaults(func=_audit_pairs)
    from fusynth.audit.cohort_cli import add_audit_cohort_parser

    add_audit_cohort_parser(audit_cmds)

    ev = groups.add_parser("evaluate", help="evaluate models")
    ev_cmds = ev.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    p.add_argument("--model_type", help="SAM size of a bare checkpoint (vit_b, vit_l, vit_h, tiny)")
    p.add_argument(
        "--n_examples", type=int, default=4, help="images in the worst/best overlays (4)"
    )
    p.add_argument(
        "--embedding_cache",
        help="folder of cached image embeddings, e.g. the one fine-tuning used (off)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_evaluate_segmentation)
    from fusynth.cluster_cli import add_evaluate_clustering_parser

    add_evaluate_clustering_parser(ev_cmds)
    from fusynth.classify.cli import (
        add_evaluate_classification_parser,
        add_evaluate_zeroshot_parser,
    )

    add_evaluate_classification_parser(ev_cmds)
    add_evaluate_zeroshot_parser(ev_cmds)

    exp = groups.add_parser("experiment", help="experiments that train and evaluate")
    exp_cmds = exp.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = exp_cmds.add_parser(
        "seg-augment", help="SAM or U-Net training with K real + M synthetic pairs, every cell"
    )
    _add_experiment_flags(
        p,
        real="prepared dataset with masks: its train split is the pool",
        test="comma-separated test sets DIR[:split] (split: test)",
        synthetic="pairs cohort for the synthetic arm",
    )
    p.add_argument("--n_real", default="5,10,20,50", help="real image counts (5,10,20,50)")
    p.add_argument("--n_synthetic", default="0,500", help="synthetic pair counts (0,500)")
    p.add_argument("--model_type", help="SAM size (tiny: random-init smoke model)")
    p.add_argument("--checkpoint", help="official or MedSAM .pth to start every cell from")
    p.add_argument(
        "--train_parts",
        help="SAM: decoder, decoder+prompt or all (decoder); U-Net: as train_unet.py",
    )
    p.add_argument("--encoder_lora_rank", type=int, help="(0: off)")
    p.add_argument("--box_jitter", type=int, help="training box jitter in pixels (10)")
    p.add_argument("--loss", help="dice+bce or dice+ce (dice+bce)")
    p.add_argument("--train_batch_size", type=int, help="(4)")
    p.add_argument("--num_train_epochs", type=int, help="epochs per cell (20)")
    p.add_argument("--max_train_steps", type=int, help="steps per cell (overrides epochs)")
    p.add_argument("--learning_rate", type=float, help="(1e-4 with --checkpoint, else 1e-3)")
    p.add_argument("--mixed_precision", help="no, fp16 or bf16 (no)")
    p.add_argument("--embedding_cache", help="image embedding cache folder")
    p.set_defaults(func=_experiment_seg_augment)
    from fusynth.cli_unet import add_seg_augment_segmenter_flags

    add_seg_augment_segmenter_flags(p)
    p = exp_cmds.add_parser(
        "cls-augment", help="view classifiers, real-only against real + synthetic, per backbone"
    )
    _add_experiment_flags(
        p,
        real="prepared dataset: its train split trains, validation validates",
        test="comma-separated held-out test sets DIR[:split] (split: test)",
        synthetic="text-to-image cohort for the synthetic arm",
    )
    p.add_argument("--backbones", default="resnet18", help="comma-separated backbones (resnet18)")
    p.add_argument(
        "--n_synthetic_per_view", default="0,1000", help="synthetic images per view (0,1000)"
    )
    p.add_argument("--views", help="comma-separated views to classify (all of --real)")
    p.add_argument("--resolution", type=int, help="input side (224; clip: the model's)")
    p.add_argument("--optimizer", help="sgd or adamw (adamw)")
    p.add_argument("--learning_rate", type=float, help="(1e-3)")
    p.add_argument("--train_batch_size", type=int, help="(16)")
    p.add_argument("--num_train_epochs", type=int, help="epochs per cell (10)")
    p.add_argument("--max_train_steps", type=int, help="steps per cell (overrides epochs)")
    p.add_argument("--n_real_per_view", type=int, help="real images per view (all)")
    p.add_argument(
        "--no_augment",
        dest="augment",
        action="store_false",
        default=None,
        help="train without augmentation",
    )
    p.add_argument("--mixed_precision", help="no, fp16 or bf16 (no)")
    p.set_defaults(func=_experiment_cls_augment)

    from fusynth.publish_cli import add_publish_parser

    add_publish_parser(groups)

    lora = groups.add_parser("lora", help="LoRA adapter utilities")
    lora_cmds = lora.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = lora_cmds.add_parser(
        "convert", help="convert a LoRA between diffusers and kohya-ss formats"
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="a .safetensors LoRA, or a folder holding pytorch_lora_weights.safetensors",
    )
    p.add_argument(
        "dst", metavar="DST", help="kohya: a .safetensors path (or folder); diffusers: a folder"
    )
    p.add_argument("--to", required=True, help="target format: kohya or diffusers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(func=_lora_convert)
    return parser


def iter_commands(
    parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()
) -> list[tuple[str, list[str]]]:
    """Every leaf command (``"data prepare"``) with its option strings, for docs checks."""
    parser = parser or build_parser()
    out = []
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        # The first spelling of each flag; ``--a-b`` aliases of ``--a_b`` need no own docs.
        flags = [
            a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"
        ]
        return [(" ".join(prefix), flags)]
    for action in subparsers:
        for name, sub in action.choices.items():
            out += iter_commands(sub, (*prefix, name))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusynth`` command; returns the exit status.

    Status 2 is bad input (one line on stderr naming the file, field or flag), 1 a
    failed check, 0 success.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and flag errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="fusynth: %(message)s",
        stream=sys.stderr,
    )
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one line per HTTP request
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our own progress bars speak for long steps; datasets' per-shard bars are noise.
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        if args.debug:
            raise
        print(f"fusynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
