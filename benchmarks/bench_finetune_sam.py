"""SAM fine-tuning: the image-embedding cache against running the encoder every step, and
the peak memory of decoder-only training.

``fusynth.segment.finetune.finetune_sam`` (with the image encoder frozen, the default)
computes each image's embedding once through an ``EmbeddingCache`` (a safetensors file
per image under a key of the encoder's weights) and trains the mask decoder on those;
a plain loop runs the frozen encoder on every batch instead. Both variants here share
everything else, written as ``finetune_sam``'s loop is: the same random-init SAM
(``build_sam(model_type, seed=0)``), synthetic head images (a bright-rimmed ellipse on
noise, ``--height`` x ``--width`` native, through ``sam_input``), data order
(``epoch_order``), box jitter (``jittered_boxes`` with one ``step_generator`` per step),
the real ``BoxPromptedSam`` forward, ``segmentation_loss`` (dice+bce) plus the IoU-head
MSE, gradient clipping and AdamW on the mask decoder's parameters only. The only
difference is ``BoxPromptedSam(boxes, embeddings=...)`` against
``BoxPromptedSam(boxes, images=...)``; with the encoder's parameters frozen, the
``images=`` path records no autograd graph for the encoder (as under ``no_grad``).

``--what cache`` (default ``tiny``, 256 px): every epoch is timed separately.

* ``cached``: epoch 1 also builds the ``EmbeddingCache`` (hashing the encoder's weights)
  in a fresh folder and computes and writes every embedding; later epochs only train.
* ``cached_warm``: a new process on the same cache folder: epoch 1 reads the embeddings
  from disk (what a second seed or another mix of the same images gets).
* ``recompute``: the frozen encoder runs on every batch, every epoch.

It prints seconds per epoch and the ratios recompute / cached for epoch 1 and for epochs
2..N (the target in the issue is at least 10x from the second epoch). The tiny model's
encoder is a toy (2 blocks of width 32), so its ratio says little about a real one; for
that run ``--model_type vit_b --n 4 --batch 2 --epochs 2 --rounds 1`` (minutes on a CPU).

``--what memory`` (default ``vit_b``, 1024 px): peak resident memory of ``--steps``
training steps, each variant in its own process.

* ``embed``: a separate process computes the embeddings into an ``EmbeddingCache``
  folder and saves the prompt encoder's and mask decoder's weights (setup; its peak is
  shown as what encoding alone takes).
* ``decoder_only``: no image encoder in memory at all: the SAM is built on the meta
  device, its encoder replaced by ``nn.Identity``, the decoder weights loaded from the
  ``embed`` process's file, and the embeddings read straight from the cache's files.
* ``decoder_full_sam``: as ``finetune_sam`` does it: the whole SAM is built, the
  embeddings come from the ``EmbeddingCache`` (all hits), and the encoder's weights stay
  in memory (``finetune_sam`` moves them to the CPU, which on a CPU frees nothing).
* ``encoder_in_loop``: the frozen encoder runs on every batch.

Peak RSS is ``ru_maxrss`` of the variant's own process; the table also shows it above
the process's RSS right after its imports. On a GPU (``--device cuda``, or ``auto`` when
one is there) each variant also reports ``torch.cuda.max_memory_allocated``, which is the
figure to compare there (RSS then mostly measures the host side).

    .venv/bin/python benchmarks/bench_finetune_sam.py --what cache
    .venv/bin/python benchmarks/bench_finetune_sam.py --what memory

The variants run ``--rounds`` times (cache: 2, memory: 1), alternating. The cache table
shows, per variant, each epoch's fastest round (the least disturbed by other load on a
shared machine: a busy spell can slow a sub-second epoch several-fold) with every
round's total seconds beside it; the memory table shows each variant's fastest round by
steps/s. Peak RSS is the highest of the rounds. On a machine where other work holds a
core, torch's default of one thread per core makes the decoder's many small operations
wait on each other (steps swing several-fold, e.g. 0.6 to 8 s at 1024 px on 2 cores);
``--threads 1`` then gives steadier figures. Children get ``FUSYNTH_CACHE`` in a
temporary folder, so nothing is written to the home folder. Results end with one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import best_round, run_child  # benchmarks/ is on sys.path when run as a script

CACHE_VARIANTS = ("cached", "cached_warm", "recompute")
MEMORY_VARIANTS = ("decoder_only", "decoder_full_sam", "encoder_in_loop")
MODEL_TYPES = ("tiny", "vit_b", "vit_l", "vit_h")  # fusynth.segment.sam.SAM_CONFIGS
DEFAULTS = {  # --what: model_type, n, batch, rounds
    "cache": {"model_type": "tiny", "n": 16, "batch": 4, "rounds": 2},
    "memory": {"model_type": "vit_b", "n": 4, "batch": 2, "rounds": 1},
}
SEED = 0
LR = 1e-3  # finetune_sam's default from a random init
BOX_JITTER = 10
DECODER_FILE = "decoder.safetensors"
MANIFEST_FILE = "embeddings.json"


# ----------------------------------------------------------------------------- child side


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device(cfg: dict[str, Any]) -> Any:
    import torch

    if cfg["device"] == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg["device"])


def _samples(cfg: dict[str, Any]) -> list[Any]:
    """Synthetic head images: noise, a filled ellipse and a brighter rim; mask = ellipse."""
    import numpy as np

    from fusynth.data.geometry import Ellipse, ellipse_mask
    from fusynth.segment.data import SegSample

    h, w = cfg["height"], cfg["width"]
    out = []
    for i in range(cfg["n"]):
        rng = np.random.default_rng([SEED, i])
        a = rng.uniform(0.25, 0.38) * min(h, w)
        head = Ellipse(
            cx=w * rng.uniform(0.4, 0.6),
            cy=h * rng.uniform(0.4, 0.6),
            a=a,
            b=a * rng.uniform(0.7, 0.9),
            angle=rng.uniform(0, math.pi),
        )
        mask = ellipse_mask((h, w), head)
        rim = ellipse_mask((h, w), head._replace(a=head.a * 1.06, b=head.b * 1.06)) & ~mask
        image = rng.normal(40, 15, (h, w))
        image[mask] += 50
        image[rim] += 140
        out.append(
            SegSample(
                key=f"synthetic-{i}",
                image=np.clip(image, 0, 255).astype(np.uint8),
                mask=mask,
                subject_id=f"s{i}",
                synthetic=True,
                pixel_spacing_mm=None,
                head_circumference_mm=None,
            )
        )
    return out


def _inputs(cfg: dict[str, Any], size: int) -> list[Any]:
    from fusynth.segment.data import sam_input

    return [sam_input(s, size) for s in _samples(cfg)]


class _Trainer:
    """``finetune_sam``'s step, decoder only: the same for every variant but the inputs."""

    def __init__(self, sam: Any, inputs: list[Any], size: int, device: Any) -> None:
        import torch

        from fusynth.segment.model import BoxPromptedSam

        sam.to(device)
        sam.requires_grad_(False)
        sam.mask_decoder.requires_grad_(True)
        torch.manual_seed(SEED)
        self.model = BoxPromptedSam(sam, train_prompt_encoder=False)
        self.model.train()
        self.params = [p for p in sam.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)
        self.inputs, self.size, self.device = inputs, size, device
        self.micro = 0

    def step(self, idx: Any, embeddings: Any | None) -> float:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from fusynth.core.loop import step_generator
        from fusynth.segment.model import jittered_boxes, segmentation_loss

        gen = step_generator(SEED, self.micro, 0)
        self.micro += 1
        batch = [self.inputs[i] for i in idx]
        boxes = jittered_boxes(batch, BOX_JITTER, self.size, gen).to(self.device)
        target = torch.from_numpy(np.stack([x.mask for x in batch]))[:, None].to(self.device)
        if embeddings is not None:
            emb = embeddings[torch.from_numpy(idx)].to(self.device)
            low, iou_pred = self.model(boxes, embeddings=emb)
        else:
            images = [
                torch.as_tensor(x.image, device=self.device).permute(2, 0, 1).float() for x in batch
            ]
            low, iou_pred = self.model(boxes, images=images)
        logits = F.interpolate(
            low.float(), (self.size, self.size), mode="bilinear", align_corners=False
        )
        loss, iou = segmentation_loss(logits, target, "dice+bce")
        loss = loss + F.mse_loss(iou_pred.float()[:, 0], iou)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()  # syncs a GPU

    def batches(self, step: int, batch: int) -> Any:
        """Indices of global step ``step`` (epochs follow ``epoch_order``)."""
        from fusynth.core.loop import epoch_order

        n = len(self.inputs)
        per_epoch = math.ceil(n / batch)
        epoch, b = divmod(step, per_epoch)
        return epoch_order(n, SEED, epoch, 0, 1)[b * batch : (b + 1) * batch]


def _model_mb(module: Any) -> float:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _cache_child(variant: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fusynth.segment.cache import EmbeddingCache
    from fusynth.segment.sam import build_sam

    device = _device(cfg)
    sam = build_sam(cfg["model_type"], seed=SEED)
    size = sam.image_encoder.img_size
    inputs = _inputs(cfg, size)  # untimed: the same for every variant
    trainer = _Trainer(sam, inputs, size, device)
    per_epoch = math.ceil(len(inputs) / cfg["batch"])
    embeddings = cache = None
    epoch_seconds, epoch_losses, embed_seconds = [], [], 0.0
    for epoch in range(cfg["epochs"]):
        started = time.perf_counter()
        if variant != "recompute" and embeddings is None:  # as finetune_sam, before the loop
            cache = EmbeddingCache(cfg["embedding_cache"], sam, cfg["model_type"])
            embeddings = cache.embed(sam, [x.image for x in inputs])
            sam.image_encoder.to("cpu")
            embed_seconds = time.perf_counter() - started
        losses = [
            trainer.step(trainer.batches(epoch * per_epoch + b, cfg["batch"]), embeddings)
            for b in range(per_epoch)
        ]
        epoch_seconds.append(time.perf_counter() - started)
        epoch_losses.append(sum(losses) / len(losses))
    return {
        "epoch_seconds": epoch_seconds,
        "embed_seconds": embed_seconds,
        "hits": cache.hits if cache else 0,
        "misses": cache.misses if cache else 0,
        "epoch_losses": epoch_losses,
        "size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _embed_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Setup of ``--what memory``: embeddings into the cache, decoder weights to a file."""
    from safetensors.torch import save_file

    from fusynth.segment.cache import EmbeddingCache
    from fusynth.segment.sam import build_sam

    device = _device(cfg)
    sam = build_sam(cfg["model_type"], seed=SEED).to(device)
    inputs = _inputs(cfg, sam.image_encoder.img_size)
    started = time.perf_counter()
    cache = EmbeddingCache(cfg["embedding_cache"], sam, cfg["model_type"])
    cache.embed(sam, [x.image for x in inputs])
    seconds = time.perf_counter() - started
    work = Path(cfg["work"])
    (work / MANIFEST_FILE).write_text(json.dumps([str(cache.path(x.image)) for x in inputs]))
    state = dict(sam.state_dict(), pixel_mean=sam.pixel_mean, pixel_std=sam.pixel_std)
    rest = {
        k: v.detach().cpu().contiguous()
        for k, v in state.items()
        if not k.startswith("image_encoder.")
    }
    save_file(rest, str(work / DECODER_FILE))
    return {"embed_seconds": seconds, "misses": cache.misses, "model_mb": _model_mb(sam)}


def _decoder_only_sam(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """A SAM without an image encoder (never materialised) and the cached embeddings."""
    import torch
    from safetensors.torch import load_file

    from fusynth.segment.sam import build_sam

    with torch.device("meta"):
        sam = build_sam(cfg["model_type"], seed=SEED)
    sam.image_encoder = torch.nn.Identity()
    sam.to_empty(device="cpu")
    work = Path(cfg["work"])
    state = load_file(str(work / DECODER_FILE))
    with torch.no_grad():
        for name in ("pixel_mean", "pixel_std"):  # non-persistent: not in a state dict
            getattr(sam, name).copy_(state.pop(name))
    sam.load_state_dict(state, strict=True)
    files = json.loads((work / MANIFEST_FILE).read_text())
    embeddings = torch.stack([load_file(f)["embedding"] for f in files])
    return sam, embeddings


def _memory_child(variant: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fusynth.segment.cache import EmbeddingCache
    from fusynth.segment.sam import SAM_CONFIGS, build_sam

    device = _device(cfg)
    size = SAM_CONFIGS[cfg["model_type"]]["image_size"]
    hits = 0
    if variant == "decoder_only":
        sam, embeddings = _decoder_only_sam(cfg)
    else:
        sam = build_sam(cfg["model_type"], seed=SEED).to(device)
        embeddings = None
    inputs = _inputs(cfg, size)
    if variant == "decoder_full_sam":
        cache = EmbeddingCache(cfg["embedding_cache"], sam, cfg["model_type"])
        embeddings = cache.embed(sam, [x.image for x in inputs], write=False)
        if cache.misses:
            raise RuntimeError(f"{variant}: {cache.misses} embeddings missing from the cache")
        hits = cache.hits
        sam.image_encoder.to("cpu")  # as finetune_sam
    model_mb = _model_mb(sam)
    trainer = _Trainer(sam, inputs, size, device)
    step_seconds = []
    for step in range(cfg["steps"]):
        started = time.perf_counter()
        trainer.step(trainer.batches(step, cfg["batch"]), embeddings)
        step_seconds.append(time.perf_counter() - started)
    return {
        "step_seconds": step_seconds,
        "speed": len(step_seconds) / sum(step_seconds),
        "hits": hits,
        "model_mb": model_mb,
        "size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _child(variant: str, cfg_json: str) -> None:
    import segment_anything.modeling  # noqa: F401
    import torch

    import fusynth.segment.finetune  # noqa: F401  (imports counted in the baseline)

    cfg = json.loads(cfg_json)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    base_mb = _rss_mb()
    cuda = _device(cfg).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if variant == "embed":
        r = _embed_child(cfg)
    elif variant in CACHE_VARIANTS:
        r = _cache_child(variant, cfg)
    else:
        r = _memory_child(variant, cfg)
    r.update(variant=variant, peak_rss_mb=_rss_mb(), base_rss_mb=base_mb)
    if cuda:
        r["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(r))


# ----------------------------------------------------------------------------- parent side


def _cache_report(args: argparse.Namespace, cfg: dict[str, Any], env: dict[str, str]) -> dict:
    tmp = Path(cfg["work"])
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in CACHE_VARIANTS}
    for i in range(args.rounds):  # alternating, so a busy spell hits every variant alike
        round_cfg = dict(cfg, embedding_cache=str(tmp / f"cache-{i}"))  # fresh for `cached`
        for variant in CACHE_VARIANTS:  # cached_warm reads what cached wrote
            runs[variant].append(run_child(__file__, variant, round_cfg, env))
    best = {}
    for v, rs in runs.items():
        # Each epoch's and the embedding step's fastest round (the least disturbed: one
        # busy spell can slow a sub-second epoch several-fold); counts and losses are
        # the same in every round (fixed seeds); the highest peak RSS of the rounds.
        best[v] = dict(
            rs[0],
            epoch_seconds=[min(r["epoch_seconds"][e] for r in rs) for e in range(args.epochs)],
            embed_seconds=min(r["embed_seconds"] for r in rs),
            peak_rss_mb=max(r["peak_rss_mb"] for r in rs),
            rounds=" ".join(f"{sum(r['epoch_seconds']):.2f}" for r in rs),
        )
    c, w, u = (best[v] for v in CACHE_VARIANTS)
    epochs = len(c["epoch_seconds"])
    print(
        f"SAM {args.model_type} ({c['size']} px), {c['device']}, {c['threads']} threads, "
        f"{args.n} images {args.height}x{args.width}, batch {args.batch}, "
        f"{math.ceil(args.n / args.batch)} steps/epoch, {epochs} epochs, decoder only; "
        f"load average {cfg['load']:.1f} before the runs"
    )
    heads = " ".join(f"{f'epoch {e + 1} s':>10}" for e in range(epochs))
    print(
        f"{'variant':<12} {heads} {'embed s':>8} {'hits/miss':>10} {'last loss':>10} "
        f"{'peak RSS MB':>12}  total s of each round"
    )
    for r in (c, w, u):
        cells = " ".join(f"{s:>10.3f}" for s in r["epoch_seconds"])
        embed = f"{r['embed_seconds']:.3f}" if r["variant"] != "recompute" else "-"
        hm = f"{r['hits']}/{r['misses']}" if r["variant"] != "recompute" else "-"
        print(
            f"{r['variant']:<12} {cells} {embed:>8} {hm:>10} {r['epoch_losses'][-1]:>10.4f} "
            f"{r['peak_rss_mb']:>12.0f}  {r['rounds']}"
        )
    ratios = [us / cs for us, cs in zip(u["epoch_seconds"], c["epoch_seconds"], strict=True)]
    later = None
    if epochs > 1:
        later = sum(u["epoch_seconds"][1:]) / sum(c["epoch_seconds"][1:])
        each = " ".join(f"x{x:.2f}" for x in ratios[1:])
        print(f"recompute / cached, epochs 2..{epochs}: x{later:.2f} (each: {each}; target >= 10)")
    warm1 = u["epoch_seconds"][0] / w["epoch_seconds"][0]
    print(
        f"epoch 1: recompute / cached x{ratios[0]:.2f} (cached computes and writes the "
        f"{c['misses']} embeddings in it: {c['embed_seconds']:.3f} s); recompute / "
        f"cached_warm x{warm1:.2f} (a new process reads them from disk: "
        f"{w['embed_seconds']:.3f} s)"
    )
    return {
        "recompute_over_cached_epochs_2_on": later,
        "recompute_over_cached_per_epoch": ratios,
        "recompute_over_cached_warm_epoch_1": warm1,
        "variants": best,
    }


def _memory_report(args: argparse.Namespace, cfg: dict[str, Any], env: dict[str, str]) -> dict:
    embed = run_child(__file__, "embed", cfg, env)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in MEMORY_VARIANTS}
    for _ in range(args.rounds):
        for variant in MEMORY_VARIANTS:
            runs[variant].append(run_child(__file__, variant, cfg, env))
    best = {v: best_round(runs[v], "speed", ".3f") for v in MEMORY_VARIANTS}
    d, f, e = (best[v] for v in MEMORY_VARIANTS)
    cuda = "cuda_peak_mb" in d
    print(
        f"SAM {args.model_type} ({d['size']} px), {d['device']}, {d['threads']} threads, "
        f"{args.n} images {args.height}x{args.width}, batch {args.batch}, {args.steps} "
        f"training steps, decoder only; load average {cfg['load']:.1f} before the runs"
    )
    gpu_head = f" {'cuda peak MB':>13}" if cuda else ""
    print(
        f"{'variant':<17} {'peak RSS MB':>12} {'after imports':>14} {'above imports':>14} "
        f"{'weights MB':>11} {'s/step':>8}{gpu_head}"
    )
    print(
        f"{'embed (setup)':<17} {embed['peak_rss_mb']:>12.0f} {embed['base_rss_mb']:>14.0f} "
        f"{embed['peak_rss_mb'] - embed['base_rss_mb']:>14.0f} {embed['model_mb']:>11.0f} "
        f"{embed['embed_seconds'] / args.n:>8.2f}"
        + (f" {embed['cuda_peak_mb']:>13.0f}" if cuda else "")
        + "  (s/step: per image encoded)"
    )
    for r in (d, f, e):
        print(
            f"{r['variant']:<17} {r['peak_rss_mb']:>12.0f} {r['base_rss_mb']:>14.0f} "
            f"{r['peak_rss_mb'] - r['base_rss_mb']:>14.0f} {r['model_mb']:>11.0f} "
            f"{1 / r['speed']:>8.2f}" + (f" {r['cuda_peak_mb']:>13.0f}" if cuda else "")
        )
    above = {v: r["peak_rss_mb"] - r["base_rss_mb"] for v, r in best.items()}
    ratio = e["peak_rss_mb"] / d["peak_rss_mb"]
    ratio_above = above["encoder_in_loop"] / above["decoder_only"]
    print(
        f"encoder_in_loop / decoder_only: peak RSS x{ratio:.2f} (above imports "
        f"x{ratio_above:.2f}); decoder_full_sam / decoder_only x"
        f"{f['peak_rss_mb'] / d['peak_rss_mb']:.2f} (above imports "
        f"x{above['decoder_full_sam'] / above['decoder_only']:.2f})"
    )
    out = {
        "encoder_in_loop_over_decoder_only_rss": ratio,
        "encoder_in_loop_over_decoder_only_rss_above_imports": ratio_above,
        "embed": embed,
        "variants": best,
    }
    if cuda:
        out["encoder_in_loop_over_decoder_only_cuda"] = e["cuda_peak_mb"] / d["cuda_peak_mb"]
        print(
            f"GPU: torch.cuda.max_memory_allocated encoder_in_loop / decoder_only "
            f"x{out['encoder_in_loop_over_decoder_only_cuda']:.2f}"
        )
    else:
        print(
            "no GPU here: on one, compare the 'cuda peak MB' column "
            "(torch.cuda.max_memory_allocated), printed when the children run on CUDA"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("cache", "memory"), default="cache")
    parser.add_argument("--model_type", choices=MODEL_TYPES, help="tiny (cache), vit_b (memory)")
    parser.add_argument("--n", type=int, help="training images (cache: 16, memory: 4)")
    parser.add_argument("--batch", type=int, help="images per step (cache: 4, memory: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="cache: epochs, each timed")
    parser.add_argument("--steps", type=int, default=3, help="memory: training steps")
    parser.add_argument("--height", type=int, default=256, help="native image height")
    parser.add_argument("--width", type=int, default=320, help="native image width")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--rounds", type=int, help="runs per variant, alternating (cache 2, memory 1)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    for name, value in DEFAULTS[args.what].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # This process imports nothing heavy: a child's ru_maxrss starts from its parent's
    # RSS at fork.
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, FUSYNTH_CACHE=str(Path(tmp) / "fusynth-cache"))
        cfg = {
            "model_type": args.model_type,
            "n": args.n,
            "batch": args.batch,
            "epochs": args.epochs,
            "steps": args.steps,
            "height": args.height,
            "width": args.width,
            "device": args.device,
            "threads": args.threads,
            "work": tmp,
            "embedding_cache": str(Path(tmp) / "cache"),
            "load": os.getloadavg()[0],
        }
        report = (_cache_report if args.what == "cache" else _memory_report)(args, cfg, env)
    print(json.dumps({"what": args.what, "settings": {**cfg, "work": None}, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
