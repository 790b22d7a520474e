"""Generation: fusynth's cohort writer against a bare diffusers pipeline loop.

``fusynth.cohort.text2img.generate_text2img`` wraps the sampler in bookkeeping: a seed
per sample, provenance JSON per row, grayscale conversion and PNG encoding, shards
written atomically as Arrow datasets, and a final concatenation into one DatasetDict.
This measures what that bookkeeping costs against calling ``StableDiffusionPipeline``
directly in a loop (``output_type="np"``, nothing saved) with the same base, scheduler
(``euler``), steps, guidance, resolution, batch size, prompts, per-sample seeds (one
``torch.Generator`` per sample, seeded by :func:`fusynth.cohort.writer.sample_seed`),
dtype (fp16 on CUDA, fp32 on CPU, as ``load_pipeline`` does) and
``torch.set_num_threads`` (``--threads``; the cohort sets it from
``Text2ImgRequest.cpu_threads``).

What is timed: only the generation loop, after the pipeline is loaded, in both variants.
For the cohort that is ``CohortResult.seconds``, the time ``generate_text2img`` spends in
``run_cohort`` (as ``write_cohort`` times it): sampling plus every per-sample and per-shard cost (luma, PNG, provenance,
shard writes, final concatenation); it excludes resolving and hashing the base, loading
the pipeline and writing the preview grids, which happen once per run whatever its size
and which the bare loop has no counterpart for. Those are reported apart as "setup" (the
rest of ``generate_text2img``'s wall time); for the bare loop "setup" is
``from_pretrained``, the scheduler swap and the LoRA load, if any. Both variants first run ``--warmup``
batches untimed (the cohort as a small throwaway cohort, so its pipeline is loaded
twice; only the second run is timed). Each variant runs in its own process, so peak RSS
is its own; the parent imports nothing heavy (a child's ``ru_maxrss`` starts from its
parent's RSS at fork).

    .venv/bin/python benchmarks/bench_generate.py --n 64 --batch 8 --steps 20 --resolution 64

The two run ``--rounds`` times, alternating; the table shows each one's fastest round
(the least disturbed by other load on a shared machine) with every round's figure beside
it. Prints images/s, setup seconds and peak RSS (the highest of the rounds) per variant
and the ratio cohort / bare.
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

VARIANTS = ("cohort", "bare")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def _views(n: int) -> dict[str, int]:
    half = n // 2
    return {"brain": n - half, "femur": half} if half else {"brain": n}


def _request(cfg: dict[str, Any], out: str, n: int) -> Any:
    from fusynth.cohort.text2img import DEFAULT_PROMPT, Text2ImgRequest

    return Text2ImgRequest(
        out=out,
        views=_views(n),
        base=cfg["base"],
        lora=cfg["lora"],
        prompt_template=DEFAULT_PROMPT,  # the bare loop's prompts, with or without a LoRA
        scheduler="euler",
        steps=cfg["steps"],
        guidance=cfg["guidance"],
        resolution=cfg["resolution"],
        batch_size=cfg["batch"],
        seed=cfg["seed"],
        cpu_threads=cfg["threads"],
    )


def _cohort(cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from fusynth.cohort.text2img import generate_text2img

    if cfg["warmup"]:
        generate_text2img(_request(cfg, str(tmp / "warmup"), cfg["warmup"] * cfg["batch"]))
    started = time.perf_counter()
    result = generate_text2img(_request(cfg, str(tmp / "cohort"), cfg["n"]))
    total = time.perf_counter() - started
    return {"seconds": result.seconds, "images": result.generated, "setup": total - result.seconds}


def _bare(cfg: dict[str, Any]) -> dict[str, Any]:
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    from fusynth.cohort.text2img import DEFAULT_PROMPT
    from fusynth.cohort.writer import sample_seed

    device = torch.device(cfg["device"])
    if device.type == "cpu":
        torch.set_num_threads(cfg["threads"])
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        cfg["base"],
        safety_checker=None,
        requires_safety_checker=False,
        dtype=torch.float16 if device.type == "cuda" else torch.float32,
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if cfg["lora"] is not None:
        lora = Path(cfg["lora"])
        folder, name = (lora.parent, lora.name) if lora.is_file() else (lora, LORA_WEIGHTS)
        pipe.load_lora_weights(str(folder), weight_name=name, adapter_name="lora")
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    setup = time.perf_counter() - started
    prompts = [DEFAULT_PROMPT.format(view=v) for v, c in _views(cfg["n"]).items() for _ in range(c)]

    def run(indices: range) -> None:
        for start in range(indices.start, indices.stop, cfg["batch"]):
            batch = range(start, min(start + cfg["batch"], indices.stop))
            with torch.no_grad():
                pipe(
                    [prompts[i % len(prompts)] for i in batch],
                    num_inference_steps=cfg["steps"],
                    guidance_scale=cfg["guidance"],
                    height=cfg["resolution"],
                    width=cfg["resolution"],
                    generator=[
                        torch.Generator(device=device).manual_seed(sample_seed(cfg["seed"], i))
                        for i in batch
                    ],
                    output_type="np",
                )

    run(range(cfg["warmup"] * cfg["batch"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run(range(cfg["n"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - started, "images": cfg["n"], "setup": setup}


def _child(variant: str, cfg_json: str) -> None:
    import torch

    from fusynth.cli.recipe import quiet_libraries

    quiet_libraries()
    cfg = json.loads(cfg_json)
    if variant == "inputs":
        from fusynth.diffusion.tiny import save_tiny_base

        save_tiny_base(cfg["base"])
        return
    with tempfile.TemporaryDirectory() as tmp:
        r = _cohort(cfg, Path(tmp)) if variant == "cohort" else _bare(cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r.update(
        variant=variant,
        images_per_second=r["images"] / r["seconds"],
        peak_rss_mb=peak_mb,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(r))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", help="diffusers folder (default: the tiny base, built here)")
    parser.add_argument("--lora", help="LoRA training output folder (default: none)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    env = dict(os.environ)
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"  # the cohort's PartialState stays on the CPU too
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "base": args.base or str(Path(tmp) / "base"),
            "lora": args.lora,
            "n": args.n,
            "batch": args.batch,
            "steps": args.steps,
            "guidance": args.guidance,
            "resolution": args.resolution,
            "warmup": args.warmup,
            "threads": args.threads,
            "seed": args.seed,
            "device": args.device,
        }
        load = os.getloadavg()[0]
        if args.base is None:
            run_child(__file__, "inputs", cfg, env)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):  # alternating, so a busy spell hits both alike
            for variant in VARIANTS:
                runs[variant].append(run_child(__file__, variant, cfg, env))
    c, b = (best_round(runs[v], "images_per_second", ".2f") for v in VARIANTS)
    print(
        f"{args.n} images at {args.resolution} px, batch {args.batch}, {args.steps} euler steps, "
        f"guidance {args.guidance}, {args.device}, {c['threads']} threads, "
        f"base {args.base or 'tiny (built here)'}, LoRA {args.lora or 'none'}; "
        f"load average {load:.1f} before the runs"
    )
    print(
        f"{'variant':<7} {'images':>7} {'seconds':>8} {'images/s':>9} {'setup s':>8} "
        f"{'peak RSS MB':>12}  images/s of each round"
    )
    for r in (c, b):
        print(
            f"{r['variant']:<7} {r['images']:>7} {r['seconds']:>8.2f} "
            f"{r['images_per_second']:>9.2f} {r['setup']:>8.2f} {r['peak_rss_mb']:>12.0f}  "
            f"{r['rounds']}"
        )
    print(
        f"cohort / bare: throughput x{c['images_per_second'] / b['images_per_second']:.2f}, "
        f"peak memory x{c['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
