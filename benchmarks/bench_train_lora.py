"""LoRA training: cached VAE latents and caption embeddings against encoding every step.

``fusynth.diffusion.lora.train_lora`` runs the frozen VAE encoder over every training
image once, and the frozen text encoder over every caption once, before the loop; each
step then samples latents from the cached distributions and looks the embeddings up. A
plain diffusers script (``train_text_to_image_lora.py``) runs both encoders inside every
step instead. This measures what the cache buys in training throughput.

Both variants are implemented here as step functions that share everything except where
the UNet's inputs come from: same tiny base (or ``--base``), phantom data, batch order,
resolution, LoRA rank and targets, AdamW settings, noise/timestep draws (one generator
per step, fusynth's ``step_generator``), loss, gradient clipping and mixed precision.
``cached`` uses fusynth's own ``encode_images`` / ``tokenize`` / ``encode_captions``
once, before timing. ``uncached`` tokenizes once too (a plain script also re-tokenizes
and re-transforms images in its data loader every step; that is not counted here, so
the measured gap is a lower bound) and runs ``vae.encode`` and the text encoder under
``no_grad`` every step, in the training dtype as diffusers does.

The loop is written here so that both variants time only steady-state steps:
``--warmup`` steps first, then ``--steps`` timed steps. For the end-to-end figure the
real ``train_lora`` also runs with the same settings (``--warmup + --steps`` optimizer
steps); its ``TrainResult.images_per_second`` covers the whole loop, including the first
(cold) steps and the final checkpoint write, but not model loading or the one-off
encoding. Each of the three runs in its own process, so peak RSS is its own (it
includes loading the base and the data, and for ``cached`` the one-off encoding).

    .venv/bin/python benchmarks/bench_train_lora.py --resolution 128 --batch 8 --steps 20

The three run ``--rounds`` times, alternating, and the table shows each one's fastest
round (the least disturbed by other load on a shared machine) with every round's figure
beside it. Prints images/s (timed images / summed step times, and the median over steps
of one step's images/s, which a busy spell disturbs less) and peak RSS (the highest of
the rounds) per variant, and the ratios cached / uncached.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import best_round, run_child  # benchmarks/ is on sys.path when run as a script

VARIANTS = ("cached", "uncached", "train_lora")
SEED = 0


def _helpers() -> Any:
    """fusynth's module with ``load_training_set``, ``epoch_order``, ``step_generator``."""
    try:
        from fusynth.diffusion import training
    except ImportError:
        from fusynth.diffusion import lora as training
    return training


@dataclass
class Setup:
    """Everything the two step functions share."""

    unet: Any
    vae: Any
    text_encoder: Any
    sched: Any
    optimizer: Any
    params: list[Any]
    pixels: Any  # [N, 3, R, R] in [-1, 1], on CPU
    caption_index: Any  # [N] index into token_ids / embeddings
    token_ids: Any  # [V, 77]
    latents: Any  # LatentCache or None
    embeddings: Any  # [V, 77, D] or None
    device: Any
    weight_dtype: Any
    autocast: bool
    scaling: float
    shift: float


def _setup(cfg: dict[str, Any], cached: bool) -> Setup:
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from fusynth.diffusion.base import load_components, resolve_base
    from fusynth.diffusion.lora import (
        UNET_TARGETS,
        LoraTrainConfig,
        encode_captions,
        encode_images,
        tokenize,
    )

    device = torch.device(cfg["device"])
    weight_dtype = torch.bfloat16 if cfg["dtype"] == "bf16" else torch.float32
    comps = load_components(resolve_base(cfg["base"]))
    data = _helpers().load_training_set(
        LoraTrainConfig(train_data=cfg["data"], resolution=cfg["resolution"]), cfg["resolution"]
    )
    for module in (comps.vae, comps.text_encoder, comps.unet):
        module.requires_grad_(False)
    token_ids = tokenize(comps.tokenizer, data.captions)
    latents = embeddings = None
    if cached:  # exactly as train_lora: fp32 encoders, once, before the loop
        comps.vae.to(device, dtype=torch.float32)
        comps.text_encoder.to(device, dtype=torch.float32)
        latents = encode_images(comps.vae, data.pixels, flip=False)
        embeddings = encode_captions(comps.text_encoder, token_ids)
    else:  # as diffusers' script: encoders in the training dtype, run every step
        comps.vae.to(device, dtype=weight_dtype)
        comps.text_encoder.to(device, dtype=weight_dtype)
    comps.unet.to(device, dtype=weight_dtype)
    torch.manual_seed(SEED)
    comps.unet.add_adapter(
        LoraConfig(
            r=cfg["rank"],
            lora_alpha=float(cfg["rank"]),
            init_lora_weights="gaussian",
            target_modules=UNET_TARGETS,
        )
    )
    cast_training_params([comps.unet], dtype=torch.float32)
    params = [p for p in comps.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    comps.unet.train()
    return Setup(
        unet=comps.unet,
        vae=comps.vae,
        text_encoder=comps.text_encoder,
        sched=comps.noise_scheduler,
        optimizer=optimizer,
        params=params,
        pixels=data.pixels,
        # named view_index before captions could vary within a view
        caption_index=(data.caption_index if hasattr(data, "caption_index") else data.view_index),
        token_ids=token_ids,
        latents=latents,
        embeddings=embeddings,
        device=device,
        weight_dtype=weight_dtype,
        autocast=weight_dtype != torch.float32,
        scaling=comps.vae.config.scaling_factor,
        shift=getattr(comps.vae.config, "shift_factor", None) or 0.0,
    )


def cached_inputs(s: Setup, idx: Any, gen: Any) -> tuple[Any, Any]:
    """fusynth: sample latents from the cached distributions, look embeddings up."""
    import torch

    mean = s.latents.mean[idx, 0]
    std = s.latents.std[idx, 0]
    x0 = (mean + std * torch.randn(mean.shape, generator=gen) - s.shift) * s.scaling
    cond = s.embeddings[s.caption_index[idx]].to(s.device, s.weight_dtype)
    return x0, cond


def uncached_inputs(s: Setup, idx: Any, gen: Any) -> tuple[Any, Any]:
    """Plain diffusers: run the frozen VAE encoder and text encoder on this batch."""
    import torch

    with torch.no_grad():
        pixels = s.pixels[idx].to(s.device, s.weight_dtype)
        dist = s.vae.encode(pixels).latent_dist
        x0 = ((dist.sample(generator=gen) - s.shift) * s.scaling).float().cpu()
        cond = s.text_encoder(s.token_ids[s.caption_index[idx]].to(s.device))[0]
    return x0, cond.to(s.weight_dtype)


def train_step(
    s: Setup, idx: Any, gen: Any, inputs: Callable[[Setup, Any, Any], tuple[Any, Any]]
) -> float:
    """One optimizer step of train_lora's loop; only ``inputs`` differs between variants."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout
    x0, cond = inputs(s, idx, gen)
    bsz = len(idx)
    noise = torch.randn(x0.shape, generator=gen)
    timesteps = torch.randint(0, s.sched.config.num_train_timesteps, (bsz,), generator=gen)
    noisy = s.sched.add_noise(x0, noise, timesteps)
    target = (
        noise
        if s.sched.config.prediction_type == "epsilon"
        else s.sched.get_velocity(x0, noise, timesteps)
    )
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
        pred = s.unet(noisy.to(s.device, s.weight_dtype), timesteps.to(s.device), cond).sample
    loss = F.mse_loss(pred.float(), target.to(s.device).float())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.params, 1.0)
    s.optimizer.step()
    s.optimizer.zero_grad()
    return loss.item()


def _loop(cfg: dict[str, Any], cached: bool) -> dict[str, Any]:
    import statistics

    import torch

    h = _helpers()
    s = _setup(cfg, cached)
    inputs = cached_inputs if cached else uncached_inputs
    n, batch = len(s.pixels), cfg["batch"]
    per_epoch = -(-n // batch)
    rates, seen, seconds = [], 0, 0.0
    for micro in range(cfg["warmup"] + cfg["steps"]):
        epoch, b = divmod(micro, per_epoch)
        idx = torch.from_numpy(h.epoch_order(n, SEED, epoch, 0, 1)[b * batch : (b + 1) * batch])
        started = time.perf_counter()
        train_step(s, idx, h.step_generator(SEED, micro, 0), inputs)  # .item() syncs
        step_seconds = time.perf_counter() - started
        if micro >= cfg["warmup"]:
            rates.append(len(idx) / step_seconds)
            seen += len(idx)
            seconds += step_seconds
    return {
        "seconds": seconds,
        "images": seen,
        "median_step_images_per_second": statistics.median(rates),
        "n_train": n,
    }


def _train_lora(cfg: dict[str, Any], out: str) -> dict[str, Any]:
    from fusynth.diffusion.lora import LoraTrainConfig, train_lora

    result = train_lora(
        LoraTrainConfig(
            pretrained_model_name_or_path=cfg["base"],
            train_data=cfg["data"],
            resolution=cfg["resolution"],
            train_batch_size=cfg["batch"],
            max_train_steps=cfg["warmup"] + cfg["steps"],
            rank=cfg["rank"],
            mixed_precision="bf16" if cfg["dtype"] == "bf16" else "no",
            seed=SEED,
            output_dir=out,
            overwrite_output_dir=True,
        )
    )
    # Images it saw (an epoch's last batch may be short), to report its seconds.
    n = json.loads((Path(out) / "config.json").read_text())["num_train_images"]
    batch = cfg["batch"]
    per_epoch = -(-n // batch)
    images = sum(min(batch, n - (m % per_epoch) * batch) for m in range(result.global_step))
    return {"seconds": images / result.images_per_second, "images": images}


def _make_inputs(cfg: dict[str, Any]) -> None:
    from fusynth.data.phantom_cohort import write_phantom_source
    from fusynth.data.prepare import prepare
    from fusynth.diffusion.tiny import save_tiny_base

    if not Path(cfg["base"]).exists():
        save_tiny_base(cfg["base"])
    source = write_phantom_source(
        Path(cfg["data"]).with_name("source"),
        n=cfg["images"],
        size=max(cfg["resolution"], 32),
        seed=SEED,
    )
    prepare("metadata", source, cfg["data"], seed=SEED)


def _child(variant: str, cfg_json: str) -> None:
    import torch

    from fusynth.cli.recipe import quiet_libraries

    quiet_libraries()
    cfg = json.loads(cfg_json)
    if variant == "inputs":
        _make_inputs(cfg)
        return
    if variant == "train_lora":
        with tempfile.TemporaryDirectory() as tmp:
            r = _train_lora(cfg, str(Path(tmp) / "run"))
    else:
        r = _loop(cfg, cached=variant == "cached")
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
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--images", type=int, default=64, help="phantom frames to prepare")
    parser.add_argument("--base", help="diffusers folder (default: the tiny base, built here)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    env = dict(os.environ)
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"  # train_lora's Accelerator stays on the CPU too
    # This process imports nothing heavy: a child's ru_maxrss starts from its parent's
    # RSS at fork, so even the inputs are made in a child of their own.
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "base": args.base or str(Path(tmp) / "base"),
            "data": str(Path(tmp) / "prepared"),
            "images": args.images,
            "resolution": args.resolution,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "rank": args.rank,
            "device": args.device,
            "dtype": args.dtype,
        }
        load = os.getloadavg()[0]
        run_child(__file__, "inputs", cfg, env)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):  # alternating, so a busy spell hits every variant alike
            for variant in VARIANTS:
                runs[variant].append(run_child(__file__, variant, cfg, env))
    c, u, t = (best_round(runs[v], "images_per_second", ".1f") for v in VARIANTS)
    print(
        f"LoRA rank {args.rank} at {args.resolution} px, batch {args.batch}, "
        f"{args.device} {args.dtype}, {c['threads']} threads, {c['n_train']} training images, "
        f"base {args.base or 'tiny (built here)'}; load average {load:.1f} before the runs"
    )
    print(
        f"{'variant':<11} {'images':>7} {'seconds':>8} {'images/s':>9} {'median step':>12} "
        f"{'peak RSS MB':>12}  images/s of each round"
    )
    for r in (c, u, t):
        median = r.get("median_step_images_per_second")
        print(
            f"{r['variant']:<11} {r['images']:>7} {r['seconds']:>8.2f} "
            f"{r['images_per_second']:>9.2f} {f'{median:.2f}' if median else '-':>12} "
            f"{r['peak_rss_mb']:>12.0f}  {r['rounds']}"
        )
    key = "median_step_images_per_second"
    print(
        f"cached / uncached: throughput x{c['images_per_second'] / u['images_per_second']:.2f} "
        f"(median step x{c[key] / u[key]:.2f}), "
        f"peak memory x{c['peak_rss_mb'] / u['peak_rss_mb']:.2f}"
    )
    print(
        f"train_lora end to end ({args.warmup + args.steps} steps, cold start and final "
        f"checkpoint included): {t['images_per_second']:.2f} images/s, "
        f"x{t['images_per_second'] / c['images_per_second']:.2f} of the cached loop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
