"""Argument parsing every ``fusynth`` command and recipe shares.

One spelling rule: every flag is written in ``--snake_case`` (diffusers' convention, which the
recipes keep) and ``--kebab-case`` is accepted for it everywhere, by :class:`Parser`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from fusynth.core.errors import UserInputError


class Parser(argparse.ArgumentParser):
    """argparse with one spelling rule and a one-line error with exit status 2.

    Flags are declared in ``--snake_case``; ``--kebab-case`` (``--repo-id`` for
    ``--repo_id``) is accepted for any of them (:func:`accept_kebab`), so scripts written
    either way keep working.
    """

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102
        accept_kebab(self)
        return super().parse_known_args(args, namespace)


def accept_kebab(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Accept ``--a-b`` for every ``--a_b`` of ``parser`` and its subcommands.

    The kebab spelling is registered as a lookup alias only, so ``--help`` shows one
    spelling per flag. Idempotent; returns ``parser``.
    """
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and "_" in option:
                parser._option_string_actions.setdefault(option.replace("_", "-"), action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                accept_kebab(sub)
    return parser


def positive_int(flag: str):
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


def positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {value}")
        return value

    return parse


def request_from(cls: type, args: argparse.Namespace, **overrides: object):
    """A request dataclass from the parsed flags of the same names."""

    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **overrides})


def stat(s: dict | None, digits: int) -> str:
    """``mean [low, high]`` of a summary entry, or n/a."""
    if not s or s.get("mean") is None:
        return "n/a"
    if s.get("ci_low") is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def parse_int_list(text: str, flag: str) -> list[int]:
    """Parse ``"0,10,20"`` into ``[0, 10, 20]``.

    Raises:
        UserInputError: an element is not an integer (the message names the flag and
            the element).
    """
    values = []
    for part in str(text).split(","):
        item = part.strip()
        try:
            values.append(int(item))
        except ValueError:
            raise UserInputError(
                f"{flag}: {item!r} is not an integer (give a comma-separated list, e.g. 0,10,20)"
            ) from None
    return values


def comma_list(text: str) -> list[str]:
    """``a, b,,c`` -> ``[a, b, c]``: items stripped, empty ones dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def experiment_kwargs(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    """The settings every experiment takes (see :func:`add_experiment_flags`), plus those
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


def report_experiment(result: dict, what: str) -> int:
    """Print an experiment's table and where its files are."""
    print((result["out"] / "table.md").read_text(), end="")
    print(f"{what} in {result['out']}")
    return 0


def add_experiment_flags(p: argparse.ArgumentParser, real: str, test: str, synthetic: str) -> None:
    """The flags every ``fusynth experiment`` takes (read by :func:`experiment_kwargs`);
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


def add_cohort_flags(
    p: argparse.ArgumentParser, scheduler: str, steps: int, unit: str, resolution: str, base: str
) -> None:
    """Flags every ``fusynth generate`` command shares (the cohort writer's and the sampler's)."""
    p.add_argument(
        "--out", required=True, help="cohort folder (resumable; a prepared dataset when done)"
    )
    p.add_argument(
        "--base",
        help=f"hub id, diffusers folder or single-file .safetensors/.ckpt (default: {base})",
    )
    p.add_argument(
        "--original_config", help="configs of a single-file --base: LDM .yaml or config folder"
    )
    p.add_argument("--revision", help="hub revision of --base")
    p.add_argument("--variant", help="weight variant of --base, e.g. fp16")
    p.add_argument("--negative_prompt", dest="negative_prompt", help="negative prompt")
    p.add_argument(
        "--scheduler", default=scheduler, help=f"euler, euler_a, unipc, ddim or dpm ({scheduler})"
    )
    p.add_argument(
        "--steps", type=positive_int("--steps"), default=steps, help=f"sampler steps ({steps})"
    )
    p.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (7)")
    p.add_argument("--resolution", type=int, help=f"image side, multiple of 8 ({resolution})")
    p.add_argument(
        "--batch_size",
        dest="batch_size",
        type=positive_int("--batch_size"),
        default=4,
        help=f"{unit} per forward pass (4)",
    )
    p.add_argument(
        "--shard_size",
        dest="shard_size",
        type=positive_int("--shard_size"),
        default=64,
        help=f"{unit} per shard, the unit of resume (64)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="cohort seed; sample i's seed derives from (seed, i)"
    )
    p.add_argument(
        "--cpu_threads",
        dest="cpu_threads",
        type=positive_int("--cpu_threads"),
        default=2,
        help="intra-op threads per process on a CPU; fixed so cohorts are identical for any "
        "number of processes (2)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different or finished cohort in --out"
    )
