"""Head image/mask pairs: fusynth's pair cohorts against bare diffusers loops, and how
many packed samples the mask extractor accepts.

``fusynth.cohort.pairs.generate_pairs`` wraps the sampler in bookkeeping: per-sample
(and per-attempt) seeds, masks drawn from an ellipse prior and turned into
conditioning pictures (ControlNet) or, for the packed method, the head mask pulled out
of the generated mask channel (:func:`fusynth.data.masks.extract_head_mask`), samples
whose fit is poor redrawn with new seeds, provenance JSON and PNG encoding per row,
shards written as Arrow datasets and concatenated at the end. This measures what that
costs against calling the diffusers pipeline directly in a loop (``output_type="np"``,
nothing unpacked, nothing saved), method by method:

* ``controlnet``: ``generate_pairs(method="controlnet", masks_from="ellipse")`` against
  ``StableDiffusionControlNetPipeline`` with the same ControlNet on the same
  conditioning pictures (the same ellipse masks, drawn with fusynth's ``MaskSource``
  and ``conditioning_image`` before the timer starts).
* ``packed``: ``generate_pairs(method="packed")`` (no ``masks_from``) against
  ``StableDiffusionPipeline`` with the packed LoRA loaded by ``load_lora_weights`` at
  scale ``--lora_scale``. fusynth redraws rejected samples, so its throughput is given
  both as ACCEPTED pairs per second (what a user gets) and as pictures (attempts) per
  second; attempts/s against the bare loop's images/s is the bookkeeping overhead, and
  accepted pairs/s against attempts/s is the cost of rejection. Counts come from the
  cohort's ``cohort_stats.json``.

Everything that shapes the sampling is the same in both variants: tiny base, adapter,
prompt (given explicitly), ``unipc`` scheduler, steps, guidance, resolution, batch size,
per-sample seeds (one ``torch.Generator`` per sample, seeded with
:func:`fusynth.cohort.pairs.attempt_seed` of attempt 0; fusynth's redraws use later
attempts' seeds), fp32 on the CPU, and ``torch.set_num_threads(--threads)`` (the cohort
sets it from ``PairsRequest.cpu_threads``).

What is timed: only generation, after the pipeline is loaded. For the bare loops that is
the loop over batches. For fusynth it is the time ``generate_pairs`` spends in
``run_cohort`` (sampling, extraction, redraws, rows, shard writes and the final
concatenation): this script wraps ``fusynth.cohort.writer.run_cohort`` with a timer
for its run, which is what ``CohortResult.seconds`` measures too, but also works when no
packed sample passes (``generate_pairs`` then raises after writing
``cohort_stats.json``, and returns no result). Subtracting a separately measured
pipeline load instead would mix in the file cache and resolve/hash costs; the wrapper
measures the same span directly. The rest of the call (resolving and hashing the base
and adapter, fitting the ellipse prior, loading the pipeline, preview grids) happens once
per run whatever its size and is reported apart as "setup"; for the bare loops "setup"
is loading the pipeline (and the LoRA). Every variant first runs ``--warmup`` batches
untimed (fusynth as a small throwaway cohort, so its pipeline loads twice; only the
second cohort is timed). Inside that span each pipeline call is timed too (fusynth's
``generate_rgb``, wrapped the same way; the bare loop's ``pipe(...)``): "sampling" is
their sum, so generation time minus sampling is what happens outside the sampler
(masks and conditioning pictures, extraction, rows, PNG, shards).

The four throughput variants run ``--rounds`` times, alternating, so a busy spell on a
shared machine hits them alike; the table shows each one's fastest round by attempts/s
(the least disturbed) with every round's attempts/s beside it, and the highest peak RSS
of its rounds. The counts are the same in every round (fixed seeds).

Acceptance: the share of packed samples the extractor accepts on the trained tiny model
(accepted / attempts) and how many of the ``--n`` requested pairs were left out after
``--max_attempts`` tries, at the default ``--threshold`` / ``--max_residual``, at a
relaxed setting (``--relaxed_threshold`` / ``--relaxed_max_residual``), and with masks
guiding generation (``masks_from="ellipse"``, img2img at ``--strength``, default
acceptance settings). The relaxed and guided lines run once; the guided line runs
``int(steps * strength)`` denoising steps, so its throughput is not comparable with the
others.

Setup, untimed: the tiny base, a head-only phantom dataset (``--frames`` frames at the
resolution), a packed LoRA (``--packing image,image,mask``, ``--lora_steps`` steps at
``--lora_lr``) and a filled-mask ControlNet (``--controlnet_steps`` at
``--controlnet_lr``) trained on it with the recipes. Each variant runs in its own
process, so peak RSS is its own (base, adapter, pipeline and generation); the parent
imports nothing heavy.

    .venv/bin/python benchmarks/bench_pairs.py --n 16 --batch 4 --steps 20

Prints a throughput table (pairs/s, attempts/s, sampling time, setup, peak RSS), the
ratios fusynth / bare, and an acceptance table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import best_round, run_child  # benchmarks/ is on sys.path when run as a script

PROMPT = "an ultrasound image of the fetal head"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
#: (name, method, implementation, acceptance setting)
VARIANTS = (
    ("controlnet-fusynth", "controlnet", "fusynth", "default"),
    ("controlnet-bare", "controlnet", "bare", "default"),
    ("packed-fusynth", "packed", "fusynth", "default"),
    ("packed-bare", "packed", "bare", "default"),
    ("packed-relaxed", "packed", "fusynth", "relaxed"),
    ("packed-guided", "packed", "fusynth", "guided"),
)
#: Run ``--rounds`` times, alternating; the others once.
TIMED = VARIANTS[:4]


def _inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Tiny base, head-only phantom, packed LoRA and ControlNet; returns their timings."""
    from fusynth.data.phantom_cohort import write_phantom_source
    from fusynth.data.prepare import prepare
    from fusynth.diffusion.tiny import save_tiny_base

    tmp = Path(cfg["tmp"])
    times: dict[str, Any] = {}
    started = time.perf_counter()
    save_tiny_base(cfg["base"])
    write_phantom_source(
        tmp / "source", n=cfg["frames"], size=cfg["resolution"], seed=cfg["seed"], views=["head"]
    )
    prepare("metadata", tmp / "source", cfg["data"])
    times["data_s"] = time.perf_counter() - started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import train_controlnet
    import train_lora

    common = [
        "--pretrained_model_name_or_path",
        cfg["base"],
        "--train_data",
        cfg["data"],
        "--views",
        "head",
        "--resolution",
        str(cfg["resolution"]),
        "--seed",
        str(cfg["seed"]),
    ]
    for name, recipe, extra in (
        (
            "lora",
            train_lora,
            [
                "--packing",
                "image,image,mask",
                "--max_train_steps",
                str(cfg["lora_steps"]),
                "--learning_rate",
                str(cfg["lora_lr"]),
            ],
        ),
        (
            "controlnet",
            train_controlnet,
            [
                "--conditioning",
                "filled",
                "--max_train_steps",
                str(cfg["controlnet_steps"]),
                "--learning_rate",
                str(cfg["controlnet_lr"]),
            ],
        ),
    ):
        started = time.perf_counter()
        rc = recipe.main([*common, *extra, "--output_dir", cfg[name]])
        if rc:
            raise SystemExit(f"training the {name} failed (exit {rc})")
        times[f"{name}_s"] = time.perf_counter() - started
    return times


def _request(cfg: dict[str, Any], method: str, setting: str, out: str, n: int) -> Any:
    from fusynth.cohort.pairs import ELLIPSE, PairsRequest

    relaxed = setting == "relaxed"
    return PairsRequest(
        out=out,
        method=method,
        adapter=cfg[method if method == "controlnet" else "lora"],
        n=n,
        masks_from=ELLIPSE if method == "controlnet" or setting == "guided" else None,
        base=cfg["base"],
        prompt=PROMPT,
        scheduler="unipc",
        steps=cfg["steps"],
        guidance=cfg["guidance"],
        lora_scale=cfg["lora_scale"],
        strength=cfg["strength"],
        threshold=cfg["relaxed_threshold"] if relaxed else cfg["threshold"],
        max_residual=cfg["relaxed_max_residual"] if relaxed else cfg["max_residual"],
        max_attempts=cfg["max_attempts"],
        resolution=cfg["resolution"],
        batch_size=cfg["batch"],
        seed=cfg["seed"],
        cpu_threads=cfg["threads"],
    )


def _fusynth(cfg: dict[str, Any], method: str, setting: str, tmp: Path) -> dict[str, Any]:
    import fusynth.cohort.pairs as pairs
    import fusynth.cohort.writer as writer
    import fusynth.diffusion.pipelines as pipelines
    from fusynth.cohort.writer import STATS_FILE
    from fusynth.core.errors import UserInputError

    # Timers around two functions, in this process only (they measure, change nothing):
    # run_cohort (what generate_pairs times as CohortResult.seconds), wherever it is
    # looked up from, and generate_rgb (one pipeline call per batch; generate_pairs
    # imports it when called).
    spans: list[float] = []
    batches: list[tuple[int, float]] = []
    run_cohort, generate_rgb = writer.run_cohort, pipelines.generate_rgb

    def timed_run_cohort(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run_cohort(*args, **kwargs)
        finally:
            spans.append(time.perf_counter() - started)

    def timed_generate_rgb(pipe: Any, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return generate_rgb(pipe, prompts, *args, **kwargs)
        finally:
            batches.append((len(prompts), time.perf_counter() - started))

    for module in (writer, pairs):
        if getattr(module, "run_cohort", None) is run_cohort:
            module.run_cohort = timed_run_cohort
    pipelines.generate_rgb = timed_generate_rgb

    def cohort(out: Path, n: int) -> str | None:
        try:
            pairs.generate_pairs(_request(cfg, method, setting, str(out), n))
        except UserInputError as exc:  # no packed sample passed: stats are still written
            if not (out / STATS_FILE).is_file():
                raise
            return str(exc).splitlines()[0]
        return None

    if cfg["warmup"]:
        cohort(tmp / "warmup", cfg["warmup"] * cfg["batch"])
    batches.clear()
    out = tmp / "cohort"
    started = time.perf_counter()
    error = cohort(out, cfg["n"])
    total = time.perf_counter() - started
    if len(spans) != 1 + bool(cfg["warmup"]) or not batches:
        raise SystemExit("generate_pairs no longer calls run_cohort / generate_rgb as timed here")
    stats = json.loads((out / STATS_FILE).read_text())
    return {
        "seconds": spans[-1],
        "setup": total - spans[-1],
        "batches": batches,
        "pairs": stats["accepted"],
        "attempts": stats["attempts"],
        "rejected": stats["rejected"],
        "left_out": stats.get("left_out", 0),
        "error": error,
    }


def _bare(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    import diffusers
    import numpy as np
    import torch
    from PIL import Image

    from fusynth.cohort.pairs import ELLIPSE, MaskSource, attempt_seed
    from fusynth.data.masks import conditioning_image

    torch.set_num_threads(cfg["threads"])
    dtype = torch.float32
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    started = time.perf_counter()
    if method == "controlnet":
        controlnet = diffusers.ControlNetModel.from_pretrained(
            str(Path(cfg["controlnet"]) / "controlnet"), dtype=dtype
        )
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
            cfg["base"], controlnet=controlnet, dtype=dtype, **kwargs
        )
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(cfg["base"], dtype=dtype, **kwargs)
        pipe.load_lora_weights(cfg["lora"], weight_name=LORA_WEIGHTS, adapter_name="packed")
        pipe.set_adapters(["packed"], adapter_weights=[cfg["lora_scale"]])
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to("cpu")
    setup = time.perf_counter() - started

    count = max(cfg["n"], cfg["warmup"] * cfg["batch"])
    extra: list[dict[str, Any]] = [{} for _ in range(count)]
    if method == "controlnet":  # the masks fusynth draws, as its conditioning pictures
        trained = json.loads((Path(cfg["controlnet"]) / "config.json").read_text())
        source = MaskSource(
            ELLIPSE, cfg["resolution"], cfg["seed"], None, trained.get("train_data")
        )
        for i in range(count):
            pic = conditioning_image(source.mask(i)[0], trained.get("conditioning", "filled"))
            extra[i] = {"image": Image.fromarray(np.repeat(pic[..., None], 3, axis=2))}

    batches: list[tuple[int, float]] = []

    def run(indices: range) -> None:
        for start in range(indices.start, indices.stop, cfg["batch"]):
            batch = range(start, min(start + cfg["batch"], indices.stop))
            more = (
                {"image": [extra[i]["image"] for i in batch], "controlnet_conditioning_scale": 1.0}
                if method == "controlnet"
                else {}
            )
            batch_start = time.perf_counter()
            with torch.no_grad():
                pipe(
                    [PROMPT] * len(batch),
                    num_inference_steps=cfg["steps"],
                    guidance_scale=cfg["guidance"],
                    height=cfg["resolution"],
                    width=cfg["resolution"],
                    generator=[
                        torch.Generator().manual_seed(attempt_seed(cfg["seed"], i, 0))
                        for i in batch
                    ],
                    output_type="np",
                    **more,
                )
            batches.append((len(batch), time.perf_counter() - batch_start))

    run(range(cfg["warmup"] * cfg["batch"]))
    batches.clear()
    started = time.perf_counter()
    run(range(cfg["n"]))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "setup": setup,
        "batches": batches,
        "pairs": cfg["n"],
        "attempts": cfg["n"],
        "rejected": 0,
        "left_out": 0,
        "error": None,
    }


def _child(variant: str, cfg_json: str) -> None:
    import torch

    from fusynth.cli.recipe import quiet_libraries

    quiet_libraries()
    cfg = json.loads(cfg_json)
    if variant == "inputs":
        print(json.dumps(_inputs(cfg)))
        return
    _, method, impl, setting = next(v for v in VARIANTS if v[0] == variant)
    with tempfile.TemporaryDirectory() as tmp:
        r = _fusynth(cfg, method, setting, Path(tmp)) if impl == "fusynth" else _bare(cfg, method)
    batches = r.pop("batches")
    r.update(
        sampling=sum(t for _, t in batches),
        method=method,
        impl=impl,
        variant=variant,
        setting=setting,
        pairs_per_second=r["pairs"] / r["seconds"],
        attempts_per_second=r["attempts"] / r["seconds"],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(r))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="pairs requested per variant")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="unipc sampler steps")
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, all variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=32, help="phantom head frames to train on")
    parser.add_argument("--lora_steps", type=int, default=100)
    parser.add_argument("--lora_lr", type=float, default=1e-3)
    parser.add_argument("--controlnet_steps", type=int, default=100)
    parser.add_argument("--controlnet_lr", type=float, default=1e-4)
    parser.add_argument("--lora_scale", type=float, default=0.9)
    parser.add_argument("--threshold", type=int, default=180)
    parser.add_argument("--max_residual", type=float, default=0.15)
    parser.add_argument("--relaxed_threshold", type=int, default=100)
    parser.add_argument("--relaxed_max_residual", type=float, default=0.5)
    parser.add_argument("--strength", type=float, default=0.75, help="img2img, guided line")
    parser.add_argument("--max_attempts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="runs per timed variant, alternating")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    env = dict(os.environ)
    env["ACCELERATE_USE_CPU"] = "1"  # the cohort's PartialState stays on the CPU
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            **{k: v for k, v in vars(args).items() if k != "child"},
            "tmp": tmp,
            "base": str(Path(tmp) / "base"),
            "data": str(Path(tmp) / "prepared"),
            "lora": str(Path(tmp) / "packed-lora"),
            "controlnet": str(Path(tmp) / "controlnet"),
        }
        setup = run_child(__file__, "inputs", cfg, env)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in VARIANTS}
        for _ in range(args.rounds):  # alternating, so a busy spell hits every variant alike
            for name, *_ in TIMED:
                runs[name].append(run_child(__file__, name, cfg, env))
        for name, *_ in VARIANTS[len(TIMED) :]:
            runs[name].append(run_child(__file__, name, cfg, env))
    r = {name: best_round(found, "attempts_per_second", ".2f") for name, found in runs.items()}
    print(
        f"{args.n} head pairs per variant at {args.resolution} px, batch {args.batch}, "
        f"{args.steps} unipc steps, guidance {args.guidance}, cpu, "
        f"{r['packed-bare']['threads']} threads, tiny base; load average {load:.1f} before "
        f"the runs"
    )
    print(
        f"setup (untimed): data {setup['data_s']:.1f} s, packed LoRA {args.lora_steps} steps "
        f"at {args.lora_lr:g} {setup['lora_s']:.1f} s, ControlNet {args.controlnet_steps} "
        f"steps at {args.controlnet_lr:g} {setup['controlnet_s']:.1f} s"
    )
    print()
    print(
        f"{'variant':<19} {'pairs':>5} {'attempts':>8} {'seconds':>8} {'sampling':>8} "
        f"{'pairs/s':>8} {'attempts/s':>10} {'setup s':>8} {'peak RSS MB':>12}  "
        "attempts/s of each round"
    )
    for name, *_ in VARIANTS:
        x = r[name]
        print(
            f"{name:<19} {x['pairs']:>5} {x['attempts']:>8} {x['seconds']:>8.2f} "
            f"{x['sampling']:>8.2f} {x['pairs_per_second']:>8.2f} "
            f"{x['attempts_per_second']:>10.2f} {x['setup']:>8.2f} {x['peak_rss_mb']:>12.0f}  "
            f"{x['rounds']}"
        )
    print(
        "(seconds: timed generation; sampling: the part of it inside pipeline calls; "
        "bare: attempts = pictures)"
    )

    def outside(x: dict[str, Any]) -> str:
        rest = x["seconds"] - x["sampling"]
        return f"{rest:.2f} s ({rest / x['seconds']:.0%})"

    def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
        return f"x{a[key] / b[key]:.2f}"

    cf, cb = r["controlnet-fusynth"], r["controlnet-bare"]
    pf, pb = r["packed-fusynth"], r["packed-bare"]
    print()
    print(
        f"controlnet fusynth / bare: pairs/s {ratio(cf, cb, 'pairs_per_second')}, peak memory "
        f"{ratio(cf, cb, 'peak_rss_mb')}; outside pipeline calls: fusynth {outside(cf)}, "
        f"bare {outside(cb)}"
    )
    print(
        f"packed fusynth / bare: attempts/s {ratio(pf, pb, 'attempts_per_second')} "
        f"(bookkeeping), accepted pairs/s {ratio(pf, pb, 'pairs_per_second')} (bookkeeping "
        f"and rejection), peak memory {ratio(pf, pb, 'peak_rss_mb')}; outside pipeline "
        f"calls: fusynth {outside(pf)}, bare {outside(pb)}"
    )
    print()
    print(f"packed acceptance, {args.n} pairs requested, up to {args.max_attempts} attempts each")
    print(
        f"{'setting':<9} {'threshold':>9} {'max_res':>7} {'guided':>12} {'attempts':>8} "
        f"{'accepted':>8} {'rejected':>8} {'share':>6} {'left out':>8}"
    )
    for name, setting, thr, res in (
        ("packed-fusynth", "default", args.threshold, args.max_residual),
        ("packed-relaxed", "relaxed", args.relaxed_threshold, args.relaxed_max_residual),
        ("packed-guided", "guided", args.threshold, args.max_residual),
    ):
        x = r[name]
        guided = f"ellipse@{args.strength:g}" if setting == "guided" else "no"
        share = x["pairs"] / x["attempts"] if x["attempts"] else 0.0
        print(
            f"{setting:<9} {thr:>9} {res:>7g} {guided:>12} {x['attempts']:>8} {x['pairs']:>8} "
            f"{x['rejected']:>8} {share:>6.0%} {x['left_out']:>5}/{args.n}"
        )
        if x["error"]:
            print(f"  ({setting}: {x['error']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
