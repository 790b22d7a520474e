"""A dress rehearsal at real size: SD 1.5-shaped LoRA training and generation, ViT-B SAM
fine-tuning, through fusynth's own entry points.

    .venv/bin/python benchmarks/real_size.py [--parts lora,generate,sam_decoder,sam_all]
        [--work .bench/real_size] [--resolution 512] [--sam_model vit_b]

The base is ``scripts/make_random_base.py --size sd15`` (SD 1.5's architecture, random
weights), saved once under ``--work`` as a diffusers folder and as an A1111-layout
single file. Each part runs in its own process so its peak resident memory is its own:

* ``lora``: one ``train_lora`` step from the diffusers folder at the base's own
  resolution (512 px), batch 1, ``--mixed_precision bf16``, ``--gradient_checkpointing``,
  latents cached on disk first.
* ``generate``: the single file converted offline and loaded, then one 20-step image at
  512 px (DPM-Solver multistep, guidance 7.5).
* ``sam_decoder``: one ``finetune_sam`` step of the mask decoder from cached image
  embeddings (ViT-B, 1024 px).
* ``sam_all``: one ``--train_parts all --gradient_checkpointing`` step (ViT-B, 1024 px).
* ``sam_all_plain`` (not run by default): the same without checkpointing.
* ``lora_mem``, ``generate_mem`` (not run by default): the LoRA step and the image on
  the SD 1.5-shaped pipeline built in memory, for a machine without the ~13 GB of disk
  the folder, the single file and its one-time conversion take.

Each part prints peak RSS, seconds per step (the loop only; loading and caching are
reported apart) and GPU memory: ``torch.cuda.max_memory_allocated`` on a GPU; without
one, an estimate: the weights at their training dtype, 16 bytes per trained parameter
(fp32 weight, gradient, two Adam moments) and the activations the step saved for
backward, measured with ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_child  # noqa: E402

PARTS = ("lora", "generate", "sam_decoder", "sam_all")
#: The same work on the SD 1.5-shaped model built in memory, for a machine without the
#: ~13 GB of disk the folder, the single file and its conversion take.
MEMORY_PARTS = ("lora_mem", "generate_mem")
MIB = 1024**2


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SavedActivations:
    """Bytes of the tensors autograd keeps for backward (each storage counted once)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def __enter__(self) -> SavedActivations:
        import torch

        def pack(t: Any) -> Any:
            if t.device.type != "meta":
                s = t.untyped_storage()
                self.storages[s.data_ptr()] = s.nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)

    @property
    def mb(self) -> float:
        return sum(self.storages.values()) / MIB


def _gpu(measured_est_mb: float) -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / MIB, "measured"
    return measured_est_mb, "estimated"


def _file_mb(folder: Path, sub: str) -> float:
    return sum(p.stat().st_size for p in (folder / sub).glob("*.safetensors")) / MIB


def ensure_base(work: Path) -> tuple[Path, Path]:
    """The SD 1.5-shaped random base as a diffusers folder and as a single file."""
    from fusynth.diffusion.single_file_export import save_single_file
    from fusynth.diffusion.tiny import build_tiny_pipeline, save_tiny_base

    folder, single = work / "sd15-random", work / "sd15-random.safetensors"
    if not (folder / "model_index.json").is_file():
        save_tiny_base(folder, size="sd15", overwrite=True)
    if not single.is_file():
        save_single_file(build_tiny_pipeline(0, "sd15"), single)
    return folder, single


def _lora(cfg: dict[str, Any]) -> dict[str, Any]:

    from fusynth.diffusion.lora import LoraTrainConfig, train_lora

    work, folder = Path(cfg["work"]), Path(cfg["folder"])
    config = LoraTrainConfig(
        pretrained_model_name_or_path=str(folder),
        resolution=cfg["resolution"],  # None: the base's own (64 x 8 = 512)
        views=["head"],
        train_batch_size=1,
        max_train_steps=1,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        rank=cfg["rank"],
        output_dir=str(work / "lora-run"),
        overwrite_output_dir=True,
    )
    started = time.perf_counter()
    with SavedActivations() as saved:
        result = train_lora(config)
    total = time.perf_counter() - started
    run = json.loads((result.output_dir / "config.json").read_text())
    from safetensors.torch import load_file

    lora = load_file(str(result.output_dir / "pytorch_lora_weights.safetensors"))
    lora_params = sum(t.numel() for t in lora.values())
    # UNet and text encoder at bf16 (half their fp32 files), VAE fp32, LoRA 16 B/param
    weights = _file_mb(folder, "unet") / 2 + _file_mb(folder, "text_encoder") / 2
    weights += _file_mb(folder, "vae")
    est = weights + lora_params * 16 / MIB + saved.mb
    gpu, how = _gpu(est)
    step_s = 1 / result.images_per_second if result.images_per_second else None
    return {
        "part": f"LoRA step, {run['resolution']} px, bf16, grad. ckpt, cached latents",
        "step_s": step_s,
        "load_s": total - (step_s or 0),
        "activations_mb": saved.mb,
        "gpu_mb": gpu,
        "gpu_how": how,
        "peak_rss_mb": _rss_mb(),
    }


def _generate(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fusynth.diffusion.base import resolve_base
    from fusynth.diffusion.pipelines import generate_images, load_pipeline

    started = time.perf_counter()
    ref = resolve_base(cfg["single"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = load_pipeline(ref, "dpm", device=device, dtype=dtype)
    load_s = time.perf_counter() - started
    resolution = cfg["resolution"] or 512
    started = time.perf_counter()
    with torch.no_grad():
        images = generate_images(
            pipe,
            ["an ultrasound image of the fetal head"],
            [0],
            negative_prompt=None,
            steps=20,
            guidance=7.5,
            resolution=resolution,
        )
    gen_s = time.perf_counter() - started
    assert images[0].shape == (resolution, resolution)
    weights = sum(
        p.numel() * p.element_size()
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        for p in m.parameters()
    )
    gpu, how = _gpu(weights / MIB)
    return {
        "part": f"single file -> one 20-step image (s per image), {resolution} px",
        "step_s": gen_s,
        "load_s": load_s,
        "activations_mb": None,
        "gpu_mb": gpu,
        "gpu_how": how + ("" if device == "cuda" else " (weights only; fp16 on GPU halves it)"),
        "peak_rss_mb": _rss_mb(),
    }


def _sam(cfg: dict[str, Any], parts: str, checkpointing: bool = True) -> dict[str, Any]:
    from fusynth.segment.finetune import SamFinetuneConfig, finetune_sam
    from fusynth.segment.sam import SAM_CONFIGS, build_sam

    work = Path(cfg["work"])
    config = SamFinetuneConfig(
        model_type=cfg["sam_model"],
        train_parts=parts,
        gradient_checkpointing=parts == "all" and checkpointing,
        n_real=2,
        train_batch_size=1,
        max_train_steps=1,
        embedding_cache=str(work / "sam-embeddings"),
        output_dir=str(work / f"sam-{parts}"),
        overwrite_output_dir=True,
    )
    started = time.perf_counter()
    with SavedActivations() as saved:
        result = finetune_sam(config)
    total = time.perf_counter() - started
    sam = build_sam(cfg["sam_model"])
    total_params = sum(p.numel() for p in sam.parameters())
    trained = (
        total_params if parts == "all" else sum(p.numel() for p in sam.mask_decoder.parameters())
    )
    est = (total_params * 4 + trained * 12) / MIB + saved.mb
    gpu, how = _gpu(est)
    step_s = 1 / result.images_per_second if result.images_per_second else None
    size = SAM_CONFIGS[cfg["sam_model"]]["image_size"]
    what = (
        "decoder step from cached embeddings"
        if parts == "decoder"
        else "--train_parts all step" + (", grad. ckpt" if checkpointing else "")
    )
    return {
        "part": f"SAM {cfg['sam_model']} {what}, {size} px",
        "step_s": step_s,
        "load_s": total - (step_s or 0),
        "activations_mb": saved.mb,
        "gpu_mb": gpu,
        "gpu_how": how,
        "peak_rss_mb": _rss_mb(),
    }


def _lora_mem(cfg: dict[str, Any]) -> dict[str, Any]:
    """One LoRA step as ``train_lora`` takes it (frozen bf16 UNet, fp32 LoRA weights,
    bf16 autocast, gradient checkpointing, a latent from the cached VAE distribution),
    on the SD 1.5-shaped pipeline built in memory."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from fusynth.diffusion.dataset import encode_captions, encode_images, tokenize
    from fusynth.diffusion.lora import lora_target_modules
    from fusynth.diffusion.tiny import build_tiny_pipeline

    started = time.perf_counter()
    pipe = build_tiny_pipeline(0, "sd15")
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    for m in (unet, vae, te):
        m.requires_grad_(False)
    r = cfg["resolution"] or unet.config.sample_size * pipe.vae_scale_factor
    pixels = torch.rand(1, 3, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_images(vae, pixels, flip=False)
    cond = encode_captions(te, tokenize(pipe.tokenizer, ["fetal head"]))
    unet.to(dtype=torch.bfloat16)
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(
            r=cfg["rank"],
            lora_alpha=cfg["rank"],
            init_lora_weights="gaussian",
            target_modules=lora_target_modules(cfg["targets"], text_encoder=False),
        )
    )
    cast_training_params([unet], dtype=torch.float32)
    unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    load_s = time.perf_counter() - started
    sched = pipe.scheduler
    x0 = (latents.mean[:, 0] + latents.std[:, 0] * torch.randn_like(latents.mean[:, 0])) * 0.18215
    noise = torch.randn_like(x0)
    t = torch.tensor([500])
    started = time.perf_counter()
    with SavedActivations() as saved:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = unet(sched.add_noise(x0, noise, t).bfloat16(), t, cond.bfloat16()).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
    opt.step()
    step_s = time.perf_counter() - started
    lora_params = sum(p.numel() for p in params)
    weights = sum(p.numel() * p.element_size() for m in (unet, vae, te) for p in m.parameters())
    est = weights / MIB + lora_params * 12 / MIB + saved.mb  # + grad and 2 Adam moments
    return {
        "part": f"LoRA step ({cfg['targets']}, r{cfg['rank']}), {r} px, bf16, grad. ckpt, "
        "cached latent; in memory",
        "step_s": step_s,
        "load_s": load_s,
        "activations_mb": saved.mb,
        "gpu_mb": est,
        "gpu_how": "estimated",
        "peak_rss_mb": _rss_mb(),
    }


def _generate_mem(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fusynth.diffusion.pipelines import _set_scheduler, generate_images
    from fusynth.diffusion.tiny import build_tiny_pipeline

    started = time.perf_counter()
    pipe = build_tiny_pipeline(0, "sd15")
    _set_scheduler(pipe, "dpm")
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started
    r = cfg["resolution"] or 512
    started = time.perf_counter()
    with torch.no_grad():
        images = generate_images(
            pipe, ["fetal head"], [0], negative_prompt=None, steps=20, guidance=7.5, resolution=r
        )
    assert images[0].shape == (r, r)
    weights = sum(
        p.numel() * p.element_size()
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        for p in m.parameters()
    )
    return {
        "part": f"one 20-step image (s per image), {r} px, fp32; in memory",
        "step_s": time.perf_counter() - started,
        "load_s": load_s,
        "activations_mb": None,
        "gpu_mb": weights / MIB / 2,
        "gpu_how": "estimated: fp16 weights",
        "peak_rss_mb": _rss_mb(),
    }


def child(part: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one part in this process; returns its measurements."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    if part == "base":
        started = time.perf_counter()
        folder, single = ensure_base(Path(cfg["work"]))
        return {"folder": str(folder), "single": str(single),
                "seconds": time.perf_counter() - started}  # fmt: skip
    if part == "lora":
        return _lora(cfg)
    if part == "generate":
        return _generate(cfg)
    if part == "lora_mem":
        return _lora_mem(cfg)
    if part == "generate_mem":
        return _generate_mem(cfg)
    if part == "sam_all_plain":
        return _sam(cfg, "all", checkpointing=False)
    return _sam(cfg, "decoder" if part == "sam_decoder" else "all")


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--work", default=".bench/real_size")
    parser.add_argument("--resolution", type=int, default=None, help="(the base's: 512)")
    parser.add_argument("--sam_model", default="vit_b")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--targets", default="attn", help="--lora_targets of lora_mem")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    cfg: dict[str, Any] = {
        "work": str(work),
        "resolution": args.resolution,
        "sam_model": args.sam_model,
        "rank": args.rank,
        "targets": args.targets,
    }
    if {"lora", "generate"} & set(parts):
        # In a child too: the parent stays light, so each part's peak RSS is its own (a
        # child's ru_maxrss starts from its parent's).
        base = run_child(__file__, "base", cfg, dict(os.environ))
        print(f"base ready in {base['seconds']:.0f} s: {base['folder']}, {base['single']}")
        cfg.update(folder=base["folder"], single=base["single"])
    rows = []
    for part in parts:
        result = run_child(__file__, part, cfg, dict(os.environ))
        rows.append(result)
        print(json.dumps(result), flush=True)
    print()
    print("| part | s/step | load, cache s | peak RSS GiB | saved activations GiB | GPU GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        act = r["activations_mb"] / 1024 if r["activations_mb"] is not None else None
        print(
            f"| {r['part']} | {_fmt(r['step_s'])} | {_fmt(r['load_s'], '.0f')} | "
            f"{r['peak_rss_mb'] / 1024:.1f} | {_fmt(act, '.2f')} | "
            f"{r['gpu_mb'] / 1024:.1f} ({r['gpu_how']}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
