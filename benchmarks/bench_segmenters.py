"""Segmenters on a CPU at HC18's native size: a U-Net per encoder against SAM ViT-B.

For each model, images/s and peak resident memory of

* ``infer``: one image at a time, from the native ``--height`` x ``--width`` grayscale
  frame to a native-resolution mask. U-Net: the frame padded to a multiple of 32
  (540 -> 544) and normalised, one forward pass (as ``fusynth evaluate segmentation``
  does at ``--resolution`` equal to the frame's longest side). SAM: ``SamPredictor``'s
  ``set_image`` (the ViT-B encoder at 1024 px) and ``predict`` with a box; with the
  embedding cache (``infer_cached``) the embedding is read from an ``EmbeddingCache``
  file instead of computed (what a second evaluation of the same images costs).
* ``train``: optimizer steps on a batch of ``--batch`` images with AdamW, Dice+BCE,
  timed after one warm-up step.
  U-Net: every weight trains (``--train_parts all``, the costliest strategy). SAM: the
  mask decoder trains, as ``finetune_sam``'s default; without the cache the frozen
  encoder runs on every batch (``train``), with it the embeddings come from disk
  (``train_cached``).

SAM ViT-B is built from segment-anything's own registry with random weights (the
architecture, not the weights, sets the cost). Each variant runs in its own process
(``_harness.run_child``) so its peak RSS is its own; the table also shows the RSS above
the process's RSS after its imports and model build. Nothing is downloaded.

    .venv/bin/python benchmarks/bench_segmenters.py            # all encoders and SAM
    .venv/bin/python benchmarks/bench_segmenters.py --models mobilenet_v2,sam_vit_b

The last line is the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

from _harness import run_child  # benchmarks/ is on sys.path when run as a script

UNET_ENCODERS = ("mobilenet_v2", "resnet18", "resnet34", "efficientnet-b0")
SAM = "sam_vit_b"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frames(cfg: dict[str, Any], n: int):
    """``n`` native grayscale frames: a bright-rimmed head ellipse on noise, its mask."""
    import numpy as np

    from fusynth.data.geometry import Ellipse, ellipse_mask, mask_outline

    rng = np.random.default_rng(0)
    h, w = cfg["height"], cfg["width"]
    out = []
    for i in range(n):
        mask = ellipse_mask((h, w), Ellipse(w / 2 + 10 * i, h / 2, w / 4, h / 4, 0.2 * i))
        img = rng.integers(0, 80, (h, w), dtype=np.uint8)
        img[mask_outline(mask)] = 230
        out.append((img, mask))
    return out


def _unet_child(variant: str, encoder: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from fusynth.segment.model import segmentation_loss
    from fusynth.segment.unet import build_unet, set_train_parts, to_batch

    h, w = cfg["height"], cfg["width"]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    model = build_unet(encoder)
    params = set_train_parts(model, "all")["trainable_params"]
    frames = _frames(cfg, max(cfg["n_infer"], cfg["batch"]))

    def batch(items):
        x = to_batch([np.repeat(im[..., None], 3, axis=2) for im, _ in items], max(ph, pw))
        return x[:, :, :ph, :pw]

    base = _rss_mb()
    if variant == "infer":
        model.eval()
        with torch.no_grad():
            model(batch(frames[:1]))  # warm-up
            start = time.perf_counter()
            for item in frames[: cfg["n_infer"]]:
                logits = model(batch([item]))[0, 0, :h, :w]
                _ = (logits > 0).numpy()
            seconds = time.perf_counter() - start
        images = cfg["n_infer"]
    else:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        items = frames[: cfg["batch"]]
        x = batch(items)
        y = torch.zeros(len(items), 1, ph, pw)
        for i, (_, m) in enumerate(items):
            y[i, 0, :h, :w] = torch.from_numpy(m)

        def step():
            loss, _ = segmentation_loss(model(x), y, "dice+bce")
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()  # warm-up (optimizer state allocated)
        start = time.perf_counter()
        for _ in range(cfg["steps"]):
            step()
        seconds = time.perf_counter() - start
        images = cfg["steps"] * cfg["batch"]
    return {"images_per_s": images / seconds, "params": params, "base_rss_mb": base}


def _sam_child(variant: str, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from segment_anything import SamPredictor, sam_model_registry

    from fusynth.segment.cache import EmbeddingCache
    from fusynth.segment.data import SegSample, sam_input
    from fusynth.segment.model import BoxPromptedSam, segmentation_loss
    from fusynth.segment.sam import mask_box

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()  # no checkpoint: random weights
    params = sum(p.numel() for p in sam.mask_decoder.parameters())
    size = sam.image_encoder.img_size
    frames = _frames(cfg, max(cfg["n_sam"], cfg["batch"]))
    cache = EmbeddingCache(cfg["cache"], sam, "vit_b")
    cached = variant.endswith("cached")
    if variant == "fill":  # its own process, so the cached variants' peaks exclude encoding
        from segment_anything.utils.transforms import ResizeLongestSide

        rgbs = [np.repeat(im[..., None], 3, axis=2) for im, _ in frames]
        cache.embed(sam, [ResizeLongestSide(size).apply_image(x) for x in rgbs])
        return {"written": cache.misses}
    base = _rss_mb()
    if variant.startswith("infer"):
        predictor = SamPredictor(sam)
        start = time.perf_counter()
        for img, mask in frames[: cfg["n_sam"]]:
            rgb = np.repeat(img[..., None], 3, axis=2)
            with torch.no_grad():
                if cached:  # as fusynth evaluate segmentation --embedding_cache does
                    resized = predictor.transform.apply_image(rgb)
                    predictor.reset_image()
                    predictor.original_size = rgb.shape[:2]
                    predictor.input_size = resized.shape[:2]
                    predictor.features = cache.embed(sam, [resized])
                    predictor.is_image_set = True
                else:
                    predictor.set_image(rgb)
                predictor.predict(box=mask_box(mask), multimask_output=False)
        seconds = time.perf_counter() - start
        images = cfg["n_sam"]
    else:
        sam.requires_grad_(False)
        sam.mask_decoder.requires_grad_(True)
        model = BoxPromptedSam(sam, train_prompt_encoder=False)
        opt = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-4)
        inputs = [
            sam_input(SegSample(str(i), im, m, "s", False, None, None), size)
            for i, (im, m) in enumerate(frames[: cfg["batch"]])
        ]
        boxes = torch.from_numpy(np.stack([x.box for x in inputs]))
        target = torch.from_numpy(np.stack([x.mask for x in inputs]))[:, None].float()

        def step():
            if cached:
                emb = cache.embed(sam, [x.image for x in inputs], write=False)
                low, _ = model(boxes, embeddings=emb)
            else:
                ims = [torch.as_tensor(x.image).permute(2, 0, 1).float() for x in inputs]
                low, _ = model(boxes, images=ims)
            logits = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
            loss, _ = segmentation_loss(logits, target, "dice+bce")
            loss.backward()
            opt.step()
            opt.zero_grad()

        step()  # warm-up (optimizer state allocated), as for the U-Nets
        start = time.perf_counter()
        for _ in range(cfg["sam_steps"]):
            step()
        seconds = time.perf_counter() - start
        images = cfg["sam_steps"] * cfg["batch"]
    return {
        "images_per_s": images / seconds,
        "params": params,
        "base_rss_mb": base,
        "cache_hits": cache.hits,
    }


def child(variant: str, cfg: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    model, what = variant.split(":")
    result = _sam_child(what, cfg) if model == SAM else _unet_child(what, model, cfg)
    result["peak_rss_mb"] = _rss_mb()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join((*UNET_ENCODERS, SAM)))
    p.add_argument("--height", type=int, default=540)
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--n_infer", type=int, default=4, help="U-Net images timed")
    p.add_argument("--n_sam", type=int, default=2, help="SAM images timed")
    p.add_argument("--batch", type=int, default=2, help="training batch")
    p.add_argument("--steps", type=int, default=2, help="U-Net training steps timed")
    p.add_argument("--sam_steps", type=int, default=1, help="SAM training steps timed")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], json.loads(args.child[1]))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in (*UNET_ENCODERS, SAM)]
    if unknown:
        sys.exit(f"--models: unknown {unknown}; choose from {', '.join((*UNET_ENCODERS, SAM))}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {k: v for k, v in vars(args).items() if k not in ("models", "child")}
        cfg["cache"] = os.path.join(tmp, "sam_embeddings")
        env = {**os.environ, "FUSYNTH_CACHE": tmp, "PYTHONPATH": os.getcwd()}
        for model in models:
            whats = (
                ("infer", "infer_cached", "train", "train_cached")
                if model == SAM
                else (
                    "infer",
                    "train",
                )
            )
            if model == SAM:  # the embeddings the cached variants read
                run_child(__file__, f"{model}:fill", cfg, env)
            for what in whats:
                r = run_child(__file__, f"{model}:{what}", cfg, env)
                r.update(model=model, what=what)
                rows.append(r)
                print(
                    f"{model:16s} {what:13s} {r['images_per_s']:8.3f} images/s  "
                    f"peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['peak_rss_mb'] - r['base_rss_mb']:.0f})",
                    file=sys.stderr,
                )
    print(f"\n{args.height}x{args.width} frames, {args.threads} thread(s), batch {args.batch}\n")
    print("| model | trained params | step | images/s | peak RSS MB | above model build MB |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        name = f"U-Net {r['model']}" if r["model"] != SAM else "SAM ViT-B"
        print(
            f"| {name} | {r['params']:,} | {r['what']} | {r['images_per_s']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['base_rss_mb']:.0f} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
