"""Command-line flags of the U-Net segmenter: ``fusynth experiment seg-augment
--segmenter unet`` and its settings. ``fusynth evaluate segmentation`` needs no flag of
its own: it recognises a U-Net folder by its ``unet_config.json``."""

from __future__ import annotations

import argparse


def add_seg_augment_segmenter_flags(p: argparse.ArgumentParser) -> None:
    """Add ``--segmenter`` and the U-Net arm's flags to ``experiment seg-augment``
    (defaults None: each config resolves its own)."""
    from fusynth.segment.experiment import SEGMENTERS
    from fusynth.segment.unet import ENCODERS

    p.add_argument(
        "--segmenter", choices=SEGMENTERS, help="what every cell trains: sam or unet (sam)"
    )
    p.add_argument("--encoder", help=f"U-Net encoder: {', '.join(ENCODERS)} (mobilenet_v2)")
    p.add_argument(
        "--encoder_weights", help="U-Net: local encoder state dict every cell starts from"
    )
    p.add_argument("--resolution", type=int, help="U-Net input side, a multiple of 32 (256)")
