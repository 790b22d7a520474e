"""The report's plotting style: the one shared by every figure fusynth draws.

Kept as a module of its own so the report's figures import their style from one
place; the definitions live in :mod:`fusynth.core.style`.
"""

from __future__ import annotations

from fusynth.core.style import DPI, PALETTE, RC, new_figure, png_bytes, style

__all__ = ["DPI", "PALETTE", "RC", "new_figure", "png_bytes", "style"]
