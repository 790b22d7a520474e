"""One registry of image embedders, named by a spec.

``pixels`` (the image itself, padded to square and downsampled), ``clip:NAME[@PRETRAINED]``
(an open_clip image tower, :mod:`fusynth.embed.clip`), ``ssl:DIR`` (a SimCLR encoder
trained with ``recipes/train_ssl.py``, :mod:`fusynth.embed.ssl`) and ``inception:PATH`` (a
local torchvision Inception-v3 weights file, :mod:`fusynth.embed.inception`). Clustering,
cohort audits and anything else that compares images in a feature space take their
embedder from here.
"""

from __future__ import annotations

from fusynth.core.errors import UserInputError
from fusynth.embed.base import Embedder, pixel_embedder

KINDS = ("pixels", "clip", "ssl", "inception")
SPEC_HELP = "pixels, clip:NAME[@PRETRAINED], ssl:DIR or inception:PATH"


def embedder_from_spec(spec: str, flag: str = "--encoder") -> Embedder:
    """Build the embedder a spec names.

    Args:
        spec: ``pixels``, ``clip:NAME[@PRETRAINED]``, ``ssl:DIR`` or ``inception:PATH``.
        flag: the flag to name in errors.

    Raises:
        UserInputError: an unknown kind, or a model that cannot be loaded (naming it).
    """
    kind, _, arg = spec.partition(":")
    if kind == "pixels" and not arg:
        return pixel_embedder()
    if kind == "clip" and arg:
        from fusynth.embed.clip import clip_embedder

        name, _, pretrained = arg.partition("@")
        return clip_embedder(name, pretrained or None, flag)
    if kind == "ssl" and arg:
        from fusynth.embed.ssl import ssl_embedder

        return ssl_embedder(arg, flag)
    if kind == "inception":
        if not arg:
            raise UserInputError(f"{flag}: inception needs a weights file: inception:PATH")
        from fusynth.embed.inception import inception_embedder

        return inception_embedder(arg, flag)
    noun = "encoder" if "encoder" in flag else "embedder"  # the word of the flag named
    raise UserInputError(f"{flag}: {spec!r} is not an {noun}; use {SPEC_HELP}")
