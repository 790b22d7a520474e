"""SimCLR: the encoder with its projection head, the NT-Xent loss and a training monitor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fusynth.embed.ssl import FEATURE_DIM, build_encoder


class SimClr(nn.Module):
    """The encoder and the MLP projection head (512 -> 512 -> ``projection_dim``)."""

    def __init__(self, projection_dim: int) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.projector = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.ReLU(inplace=True),
            nn.Linear(FEATURE_DIM, projection_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def build_simclr(projection_dim: int, seed: int) -> SimClr:
    """A SimCLR model whose random init depends on ``seed`` only (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SimClr(projection_dim)


# ----------------------------------------------------------------------------- loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's normalised temperature-scaled cross-entropy), mean over 2B anchors.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are two views of one image; every other
    row of either is a negative.

    Args:
        z1: ``[B, D]`` projections of the first views.
        z2: ``[B, D]`` projections of the second views.
        temperature: the softmax temperature.

    Returns:
        The scalar loss.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


@torch.no_grad()
def positive_top1(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Share of anchors whose most similar other sample is their own second view."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T).fill_diagonal_(-math.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return float((sim.argmax(dim=1) == targets).float().mean())
