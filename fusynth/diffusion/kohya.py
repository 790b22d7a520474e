"""Convert Stable Diffusion 1.x/2.x LoRA adapters between the diffusers and kohya-ss layouts.

One cohesive thing over 600 lines: one key mapping between two LoRA layouts, both ways.

fusynth saves LoRA adapters the way stock diffusers does (``save_lora_weights``): keys such as
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight`` (or the
PEFT spelling ``...to_q.lora_A.weight``) and
``text_encoder.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight``, with rank and
alpha in the safetensors header: ``__metadata__["lora_adapter_metadata"]`` is a JSON object of
the PEFT ``LoraConfig`` fields, each prefixed by its component (``"unet.r"``,
``"unet.lora_alpha"``, ``"unet.alpha_pattern"``, ``"text_encoder.r"``...). FU-LoRA and most
community tools (sd-scripts, AUTOMATIC1111, ComfyUI) use the kohya-ss layout instead:
``lora_unet_<module path with "." as "_">.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
(a scalar per module) and ``lora_te_text_model_...`` for the text encoder.

In both layouts a module's weight delta is ``scale * up @ down`` with ``scale = alpha / rank``
(``alpha / sqrt(rank)`` for rsLoRA in PEFT). The conversion keeps that scale exactly: the
``up``/``down`` tensors are copied unchanged and only the place the alpha lives changes (a
``.alpha`` tensor per module in kohya; ``lora_alpha`` plus ``alpha_pattern``/``rank_pattern``
in the diffusers metadata). :func:`effective_deltas` computes the deltas for either layout, so
a conversion can be checked to lose nothing.

kohya flattens ``.`` to ``_``, which is ambiguous (``to_q`` versus ``down_blocks_0``). This
module undoes it with the identifiers that SD 1.x/2.x ``UNet2DConditionModel`` and
``CLIPTextModel`` actually use (:data:`UNET_COMPOUND_NAMES` and friends; a test checks them
against those models built from the SD 1.5 and SD 2.1 configs). An adapter on any other
architecture is refused rather than guessed; pass ``module_names`` (see
:func:`sd_module_names`) to resolve names against a real model instead.

Module names in this module's API are the canonical dotted ones: ``unet.<path>`` and
``text_encoder.text_model.<path>`` (the text encoder always with ``text_model.``, as kohya
writes it, whether or not the installed transformers nests ``CLIPTextModel`` that way).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fusynth.core.artifacts import LORA_WEIGHTS as DIFFUSERS_WEIGHT_NAME
from fusynth.core.errors import UserInputError, suggest
from fusynth.core.io import atomic_write_bytes

#: The layouts :func:`convert_lora_file` converts between.
FORMATS = ("kohya", "diffusers")

#: File name stock diffusers saves and looks for in a LoRA folder.

#: Header key under which diffusers stores the LoraConfig fields
#: (``diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY``).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"

#: diffusers component -> kohya key prefix. SDXL's ``lora_te1_``/``lora_te2_`` are refused:
#: its kohya UNet names follow a different (sgm) scheme.
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}

#: Identifiers containing ``_`` in SD 1.x/2.x ``UNet2DConditionModel`` module paths.
UNET_COMPOUND_NAMES = frozenset(
    {
        "conv_act", "conv_in", "conv_norm_out", "conv_out", "conv_shortcut", "down_blocks",
        "linear_1", "linear_2", "mid_block", "proj_in", "proj_out", "time_emb_proj",
        "time_embedding", "time_proj", "to_k", "to_out", "to_q", "to_v", "transformer_blocks",
        "up_blocks",
    }
)  # fmt: skip
#: Identifiers without ``_`` in those module paths.
UNET_WORDS = frozenset(
    {
        "act", "attentions", "attn1", "attn2", "conv", "conv1", "conv2", "downsamplers",
        "dropout", "ff", "net", "nonlinearity", "norm", "norm1", "norm2", "norm3", "proj",
        "resnets", "upsamplers",
    }
)  # fmt: skip
#: Identifiers containing ``_`` in ``CLIPTextModel`` module paths (SD 1.x and 2.x).
TEXT_ENCODER_COMPOUND_NAMES = frozenset(
    {
        "activation_fn", "final_layer_norm", "k_proj", "layer_norm1", "layer_norm2", "out_proj",
        "position_embedding", "q_proj", "self_attn", "text_model", "token_embedding", "v_proj",
    }
)  # fmt: skip
#: Identifiers without ``_`` in those module paths.
TEXT_ENCODER_WORDS = frozenset({"embeddings", "encoder", "fc1", "fc2", "layers", "mlp"})

_VOCABULARY = {
    "unet": (UNET_COMPOUND_NAMES, UNET_WORDS),
    "text_encoder": (TEXT_ENCODER_COMPOUND_NAMES, TEXT_ENCODER_WORDS),
}

# diffusers/PEFT spellings of the two LoRA factors, as save_lora_weights writes them:
# PEFT's lora_A/lora_B, diffusers' ".lora.down"/".lora.up" (UNet attention) and
# ".lora_linear_layer.down"/".up" (text encoder attention).
_DIFFUSERS_KEY = re.compile(
    r"^(?P<component>unet|text_encoder)\.(?P<module>.+?)\."
    r"(?P<factor>lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)"
    r"\.weight$"
)
_KOHYA_KEY = re.compile(
    r"^(?P<name>lora_(?:unet|te)_[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$"
)
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_DORA_MARKERS = ("dora_scale", "lora_magnitude_vector")


@dataclass
class _Lora:
    """One adapted module: ``delta = alpha / rank * up @ down`` (kohya's convention)."""

    component: str  # "unet" or "text_encoder"
    path: str  # canonical module path inside the component (text encoder: "text_model....")
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def name(self) -> str:
        return f"{self.component}.{self.path}"


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell which LoRA layout a state dict is in.

    Args:
        state_dict: tensors as loaded from a ``.safetensors`` file.

    Returns:
        ``"kohya"`` (``lora_unet_*``/``lora_te_*`` keys) or ``"diffusers"`` (``unet.*``/
        ``text_encoder.*`` keys with ``lora`` in them).

    Raises:
        UserInputError: the keys are neither, or a mix of both; the message quotes some.
    """
    keys = list(state_dict)
    if not keys:
        raise UserInputError("not a LoRA state dict: it holds no tensors")
    kohya = [k for k in keys if k.startswith(_KOHYA_PREFIXES)]
    diffusers = [k for k in keys if k.startswith(_DIFFUSERS_PREFIXES) and "lora" in k]
    if len(kohya) == len(keys):
        return "kohya"
    if len(diffusers) == len(keys):
        return "diffusers"
    if kohya and diffusers:
        raise UserInputError(
            f"mixes kohya keys (e.g. {kohya[0]!r}) and diffusers keys (e.g. {diffusers[0]!r})"
        )
    known = set(kohya) | set(diffusers)
    other = [k for k in keys if k not in known]
    raise UserInputError(
        f"not a LoRA state dict in kohya or diffusers layout: {len(other)} of {len(keys)} keys "
        f"are neither, e.g. {', '.join(repr(k) for k in other[:3])}"
    )


def diffusers_to_kohya(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Convert a diffusers-layout LoRA state dict to the kohya-ss layout.

    Args:
        state_dict: diffusers/PEFT keys (``unet.…`` and optionally ``text_encoder.…``).
        metadata: the safetensors header (``__metadata__``) the tensors came with, or its
            parsed ``lora_adapter_metadata`` object. Each module's ``.alpha`` is chosen so that
            kohya's ``alpha / rank`` equals the scale PEFT would apply: ``lora_alpha``, or its
            ``alpha_pattern`` entry, over the rank (over ``sqrt(rank)`` for rsLoRA). A component
            without metadata gets ``alpha = rank`` (scale 1), which is what diffusers assumes
            when it loads such a file.

    Returns:
        ``lora_unet_…``/``lora_te_…`` keys with ``.lora_down.weight``, ``.lora_up.weight`` and a
        float32 scalar ``.alpha`` per module; the up/down tensors are the input's, unchanged.
        sd-scripts, AUTOMATIC1111 and ComfyUI apply each module's alpha; diffusers' own kohya
        loader gets only a file-wide alpha right (it mis-derives per-module alphas), so to use
        an adapter with per-module alphas in diffusers, load it via :func:`kohya_to_diffusers`.

    Raises:
        UserInputError: the state dict is not a diffusers LoRA this module can convert.
    """
    return _emit_kohya(_parse_diffusers(state_dict, metadata))


def kohya_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], module_names: Iterable[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert a kohya-ss LoRA state dict to the layout stock diffusers loads.

    The scale is carried by metadata, not by rescaling tensors, so the up/down tensors are
    copied bit for bit: per component, ``r`` and ``lora_alpha`` are the most common rank and
    alpha, and modules that differ get ``rank_pattern``/``alpha_pattern`` entries (regexes of
    their full escaped path, which PEFT matches as a suffix; text-encoder paths are written
    without ``text_model.`` so they match both transformers' nested and flattened
    ``CLIPTextModel``). ``pipe.load_lora_weights(folder)`` builds its ``LoraConfig`` from this
    metadata and so applies every module's own ``alpha / rank``.

    Args:
        state_dict: kohya keys (``lora_unet_…``/``lora_te_…`` with ``.lora_down.weight``,
            ``.lora_up.weight`` and optional ``.alpha``; a missing or zero alpha means
            ``alpha = rank``, as in sd-scripts).
        module_names: the base model's module names (``unet.<path>`` and
            ``text_encoder.<path>``, e.g. from :func:`sd_module_names`) to resolve kohya's
            flattened names against; by default the SD 1.x/2.x naming rules are used.

    Returns:
        ``(tensors, metadata)``: PEFT-style UNet keys (``unet.<path>.lora_A.weight``/
        ``.lora_B.weight``), diffusers-style text-encoder keys
        (``text_encoder.text_model.<path>.lora_linear_layer.down.weight``/``.up.weight``),
        and the safetensors header (``format`` and ``lora_adapter_metadata``) to save them with.

    Raises:
        UserInputError: the state dict is not a kohya LoRA this module can convert.
    """
    return _emit_diffusers(_parse_kohya(state_dict, module_names))


def effective_deltas(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    module_names: Iterable[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Each module's weight delta ``scale * up @ down``, for either layout.

    Args:
        state_dict: a kohya or diffusers LoRA state dict.
        metadata: the safetensors header of a diffusers file (ignored for kohya, whose alphas
            are tensors).
        module_names: as for :func:`kohya_to_diffusers`.
        dtype: dtype to compute in.

    Returns:
        Canonical module name (``unet.down_blocks.0.….to_q``,
        ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``) -> delta with the
        module weight's shape (``[out, in]`` or ``[out, in, kh, kw]``).
    """
    fmt = detect_format(state_dict)
    mods = (
        _parse_kohya(state_dict, module_names)
        if fmt == "kohya"
        else _parse_diffusers(state_dict, metadata)
    )
    out = {}
    for name, m in mods.items():
        down, up = m.down.to(dtype), m.up.to(dtype)
        delta = up.flatten(1) @ down.flatten(1)
        out[name] = (delta * m.scale).reshape(up.shape[0], *down.shape[1:])
    return out


def sd_module_names(
    unet: torch.nn.Module | None = None, text_encoder: torch.nn.Module | None = None
) -> list[str]:
    """A model's module names as :func:`kohya_to_diffusers` takes them in ``module_names``.

    Args:
        unet: the UNet (names get ``unet.``).
        text_encoder: the CLIP text encoder (names get ``text_encoder.``; ``text_model.`` is
            added where the installed transformers flattens it away).

    Returns:
        Canonical dotted module names.
    """
    names = []
    if unet is not None:
        names += [f"unet.{n}" for n, _ in unet.named_modules() if n]
    if text_encoder is not None:
        names += [
            f"text_encoder.{_canonical_te_path(n)}" for n, _ in text_encoder.named_modules() if n
        ]
    return names


def convert_lora_file(src: str | Path, dst: str | Path, to: str, overwrite: bool = False) -> Path:
    """Convert a LoRA ``.safetensors`` file between the diffusers and kohya-ss layouts.

    Args:
        src: a ``.safetensors`` file, or a folder holding ``pytorch_lora_weights.safetensors``.
        dst: for ``to="diffusers"``, a folder (the file written is
            ``dst/pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights(dst)``
            finds); for ``to="kohya"``, a ``.safetensors`` path, or a folder in which
            ``<name>.safetensors`` is written, ``<name>`` being the source file's stem (its
            folder's name for ``pytorch_lora_weights.safetensors``).
        to: ``"kohya"`` or ``"diffusers"``.
        overwrite: replace an existing output file.

    Returns:
        The file written (atomically: it is complete or absent).

    Raises:
        UserInputError: ``src`` is missing, not a safetensors file, not a LoRA, or already in
            the ``to`` layout; ``to`` is unknown; the output exists and ``overwrite`` is False.
            The message names the file.
    """
    import safetensors
    from safetensors.torch import safe_open
    from safetensors.torch import save as save_safetensors

    src = Path(src)
    if to not in FORMATS:
        raise UserInputError(
            f"--to: unknown target format {to!r}; choose one of {', '.join(FORMATS)}"
            f"{suggest(to, FORMATS)}"
        )
    src_file = _resolve_source(src)
    # Settle the output before the (possibly large) read, so a refusal costs nothing.
    out_file = _resolve_destination(src_file, Path(dst), to)
    if out_file.exists() and not overwrite:
        raise UserInputError(f"{out_file}: already exists; pass --overwrite to replace it")
    if out_file.exists() and not out_file.is_file():
        raise UserInputError(f"{out_file}: exists and is not a file")
    try:
        with safe_open(str(src_file), framework="pt", device="cpu") as fh:
            header = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise UserInputError(f"{src_file}: not a readable safetensors file ({exc})") from None

    try:
        fmt = detect_format(tensors)
        if fmt == to:
            raise UserInputError(f"already in {to} layout; nothing to convert")
        if to == "kohya":
            out_tensors = diffusers_to_kohya(tensors, header)
            out_header = _kohya_header(out_tensors)
        else:
            out_tensors, out_header = kohya_to_diffusers(tensors)
    except UserInputError as exc:
        raise UserInputError(f"{src_file}: {exc}") from None

    data = save_safetensors({k: v.contiguous() for k, v in out_tensors.items()}, out_header)
    return atomic_write_bytes(out_file, data)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _canonical_te_path(path: str) -> str:
    # transformers 5 flattens CLIPTextModel (no ``text_model`` level); kohya and older files
    # keep it. One spelling is needed to compare modules across layouts: kohya's.
    if path.startswith(("text_model.", "text_projection")) or path == "text_model":
        return path
    return f"text_model.{path}"


def _parse_diffusers(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> dict[str, _Lora]:
    if detect_format(state_dict) != "diffusers":
        raise UserInputError("not in diffusers layout")
    factors: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    file_paths: dict[tuple[str, str], str] = {}
    for key, tensor in state_dict.items():
        _refuse_unsupported_key(key)
        if key.startswith("text_encoder_2."):
            raise UserInputError(
                f"{key!r} is an SDXL text-encoder key; only SD 1.x/2.x adapters are supported"
            )
        # ".processor." is the old attention-processor spelling; diffusers drops it on load.
        match = _DIFFUSERS_KEY.match(key.replace(".processor.", "."))
        if match is None:
            raise UserInputError(f"unrecognised diffusers LoRA key {key!r}")
        component, path = match["component"], match["module"]
        canonical = _canonical_te_path(path) if component == "text_encoder" else path
        factor = (
            "down" if match["factor"] in ("lora_A", "lora.down", "lora_linear_layer.down") else "up"
        )
        slot = factors.setdefault((component, canonical), {})
        if factor in slot:
            raise UserInputError(f"module {component}.{canonical} has two {factor} tensors")
        slot[factor] = tensor
        file_paths[(component, canonical)] = path

    configs = _adapter_configs(metadata)
    mods: dict[str, _Lora] = {}
    for (component, path), slot in factors.items():
        down, up = _check_pair(f"{component}.{path}", slot.get("down"), slot.get("up"))
        rank = int(down.shape[0])
        config = configs.get(component)
        if config is None:
            alpha = float(rank)  # no metadata: diffusers/PEFT load it at scale 1
        else:
            # PEFT matches patterns against the module path as the loading model names it;
            # for the text encoder that depends on the transformers version, so try both.
            variants = [file_paths[(component, path)], path]
            if component == "text_encoder":
                variants.append(path.removeprefix("text_model."))
            alpha = _config_alpha(config, variants, rank, f"{component}.{path}")
        mods[f"{component}.{path}"] = _Lora(component, path, down, up, alpha)
    return dict(sorted(mods.items()))


def _adapter_configs(metadata: Mapping[str, str] | None) -> dict[str, dict]:
    """Per-component LoraConfig fields from a header or a parsed adapter-metadata object."""
    if not metadata:
        return {}
    if LORA_ADAPTER_METADATA_KEY in metadata:
        raw = metadata[LORA_ADAPTER_METADATA_KEY]
        try:
            fields = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{LORA_ADAPTER_METADATA_KEY} is not valid JSON ({exc})") from None
    else:
        fields = dict(metadata)
    configs = {}
    for component in KOHYA_PREFIXES:
        sub = {
            k[len(component) + 1 :]: v for k, v in fields.items() if k.startswith(f"{component}.")
        }
        if sub:
            configs[component] = sub
    return configs


def _pattern_value(patterns: Mapping[str, object] | None, names: list[str]):
    # Same matching as peft.utils.other.get_pattern_key: the first key that matches the end
    # of the module path (at a "." boundary) wins.
    for key in patterns or {}:
        if any(re.match(rf"(.*\.)?({key})$", name) for name in names):
            return patterns[key]
    return None


def _config_alpha(config: Mapping, names: list[str], rank: int, label: str) -> float:
    if config.get("use_dora"):
        raise UserInputError(f"{label}: DoRA adapters are not supported")
    r = _pattern_value(config.get("rank_pattern"), names)
    r = config.get("r", 8) if r is None else r  # 8 and 8: LoraConfig's defaults
    alpha = _pattern_value(config.get("alpha_pattern"), names)
    alpha = config.get("lora_alpha", 8) if alpha is None else alpha
    if int(r) != rank:
        raise UserInputError(f"{label}: metadata says rank {r} but the tensors have rank {rank}")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    # kohya only knows alpha / rank, so rsLoRA's scale is carried as the equivalent alpha.
    return float(scale * rank)


def _parse_kohya(
    state_dict: Mapping[str, torch.Tensor], module_names: Iterable[str] | None
) -> dict[str, _Lora]:
    if detect_format(state_dict) != "kohya":
        raise UserInputError("not in kohya layout")
    lookup = _flat_name_lookup(module_names) if module_names is not None else None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        _refuse_unsupported_key(key)
        if key.startswith(("lora_te1_", "lora_te2_")):
            raise UserInputError(
                f"{key!r} is an SDXL text-encoder key; only SD 1.x/2.x adapters are supported"
            )
        match = _KOHYA_KEY.match(key)
        if match is None:
            raise UserInputError(
                f"unrecognised kohya LoRA key {key!r} (expected <module>.lora_down.weight, "
                ".lora_up.weight or .alpha; LoCon/LoHa/LoKr variants are not supported)"
            )
        parts.setdefault(match["name"], {})[match["part"]] = tensor

    mods: dict[str, _Lora] = {}
    for kohya_name, slot in parts.items():
        down, up = _check_pair(kohya_name, slot.get("lora_down.weight"), slot.get("lora_up.weight"))
        component = "unet" if kohya_name.startswith("lora_unet_") else "text_encoder"
        flat = kohya_name.removeprefix(KOHYA_PREFIXES[component])
        if lookup is not None:
            path = lookup.get((component, flat))
            if path is None:
                raise UserInputError(f"{kohya_name!r} matches no module of the given base model")
        else:
            path = _unflatten(flat, component, kohya_name)
        if component == "text_encoder":
            path = _canonical_te_path(path)
        rank = int(down.shape[0])
        alpha = float(slot["alpha"].item()) if "alpha" in slot else 0.0
        # sd-scripts (networks/lora.py) treats a missing or zero alpha as alpha = rank.
        alpha = alpha or float(rank)
        name = f"{component}.{path}"
        if name in mods:
            raise UserInputError(f"{kohya_name!r} names module {name} twice")
        mods[name] = _Lora(component, path, down, up, alpha)
    return dict(sorted(mods.items()))


def _flat_name_lookup(module_names: Iterable[str]) -> dict[tuple[str, str], str]:
    lookup = {}
    for full in module_names:
        component, _, path = full.partition(".")
        if component not in KOHYA_PREFIXES or not path:
            raise ValueError(f"module name {full!r} must start with 'unet.' or 'text_encoder.'")
        if component == "text_encoder":
            path = _canonical_te_path(path)
        lookup[(component, path.replace(".", "_"))] = path
    return lookup


def _unflatten(flat: str, component: str, kohya_name: str) -> str:
    """Undo kohya's ``.`` -> ``_`` with the known identifiers, longest match first."""
    compounds, words = _VOCABULARY[component]
    tokens = flat.split("_")
    out = []
    i = 0
    while i < len(tokens):
        for j in range(len(tokens), i, -1):
            candidate = "_".join(tokens[i:j])
            if candidate in compounds or j == i + 1:
                break
        if not (candidate.isdigit() or candidate in compounds or candidate in words):
            raise UserInputError(
                f"{kohya_name!r}: {candidate!r} is not part of an SD 1.x/2.x "
                f"{'UNet' if component == 'unet' else 'CLIP text encoder'} module name; "
                "only SD 1.x/2.x adapters are supported"
            )
        out.append(candidate)
        i = j
    return ".".join(out)


def _refuse_unsupported_key(key: str) -> None:
    if any(marker in key for marker in _DORA_MARKERS):
        raise UserInputError(f"{key!r}: DoRA adapters are not supported")
    if key.endswith(".bias"):
        raise UserInputError(f"{key!r}: LoRA bias terms are not supported")


def _check_pair(
    label: str, down: torch.Tensor | None, up: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if down is None or up is None:
        raise UserInputError(
            f"{label}: has a LoRA {'up' if down is not None else 'down'} tensor but no {'down' if down is None else 'up'} tensor"
        )
    if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        raise UserInputError(
            f"{label}: LoRA tensors of shapes {tuple(down.shape)} (down) and "
            f"{tuple(up.shape)} (up) do not multiply"
        )
    return down, up


# ---------------------------------------------------------------------------------------------
# Emitting
# ---------------------------------------------------------------------------------------------


def _emit_kohya(mods: Mapping[str, _Lora]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for m in mods.values():
        name = KOHYA_PREFIXES[m.component] + m.path.replace(".", "_")
        out[f"{name}.lora_down.weight"] = m.down
        out[f"{name}.lora_up.weight"] = m.up
        # sd-scripts keeps alpha as a float32 scalar buffer.
        out[f"{name}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    return out


def _kohya_header(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    # No lora_adapter_metadata here: diffusers refuses a kohya file that has both its network
    # alphas and that metadata. The ss_* fields are what sd-scripts writes and UIs display.
    ranks = Counter(int(v.shape[0]) for k, v in tensors.items() if k.endswith(".lora_down.weight"))
    alphas = Counter(_number(float(v.item())) for k, v in tensors.items() if k.endswith(".alpha"))
    return {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks.most_common(1)[0][0]),
        "ss_network_alpha": str(alphas.most_common(1)[0][0]),
        "fusynth_converted_from": "diffusers",
    }


def _emit_diffusers(mods: Mapping[str, _Lora]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    fields: dict[str, object] = {}
    for component in KOHYA_PREFIXES:
        members = [m for m in mods.values() if m.component == component]
        if not members:
            continue
        for m in members:
            if component == "unet":
                # PEFT keys for every UNet module: diffusers' loader only converts the
                # ".lora.down" spelling when the *first* key has it, so a mix would half-load.
                tensors[f"unet.{m.path}.lora_A.weight"] = m.down
                tensors[f"unet.{m.path}.lora_B.weight"] = m.up
            else:
                # The text-encoder loader round-trips keys through diffusers' spelling and
                # fails on PEFT keys when no q/k/v/out projection is among them.
                tensors[f"text_encoder.{m.path}.lora_linear_layer.down.weight"] = m.down
                tensors[f"text_encoder.{m.path}.lora_linear_layer.up.weight"] = m.up
        fields.update({f"{component}.{k}": v for k, v in _lora_config(members).items()})
    header = {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(fields, indent=2, sort_keys=True),
    }
    return tensors, header


def _module_pattern_path(m: _Lora) -> str:
    # Text-encoder paths without "text_model." match as a suffix in both the nested and the
    # flattened CLIPTextModel.
    return m.path.removeprefix("text_model.") if m.component == "text_encoder" else m.path


def _lora_config(members: list[_Lora]) -> dict[str, object]:
    """LoraConfig fields giving every module its own rank and alpha."""
    r = Counter(m.rank for m in members).most_common(1)[0][0]
    lora_alpha = Counter(_number(m.alpha) for m in members).most_common(1)[0][0]
    rank_pattern = {}
    alpha_pattern = {}
    for m in members:
        key = re.escape(_module_pattern_path(m))
        if m.rank != r:
            rank_pattern[key] = m.rank
        if _number(m.alpha) != lora_alpha:
            alpha_pattern[key] = _number(m.alpha)
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": sorted(_module_pattern_path(m) for m in members),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "peft_type": "LORA",
    }


def _number(x: float) -> int | float:
    """An integral float as int, so metadata reads ``8`` rather than ``8.0``."""
    return int(x) if float(x).is_integer() else float(x)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _resolve_source(src: Path) -> Path:
    if not src.exists():
        raise UserInputError(f"{src}: no such file or folder")
    if src.is_dir():
        candidate = src / DIFFUSERS_WEIGHT_NAME
        if not candidate.is_file():
            raise UserInputError(f"{src}: folder has no {DIFFUSERS_WEIGHT_NAME}")
        return candidate
    if src.suffix != ".safetensors":
        raise UserInputError(f"{src}: not a .safetensors file")
    return src


def _resolve_destination(src_file: Path, dst: Path, to: str) -> Path:
    if to == "diffusers":
        if dst.suffix == ".safetensors" or dst.is_file():
            raise UserInputError(
                f"{dst}: for --to diffusers give a folder; {DIFFUSERS_WEIGHT_NAME} is written in it"
            )
        return dst / DIFFUSERS_WEIGHT_NAME
    if dst.suffix == ".safetensors":
        return dst
    if dst.is_file() or (dst.suffix and not dst.is_dir()):
        raise UserInputError(f"{dst}: for --to kohya give a .safetensors file or a folder")
    stem = src_file.parent.name if src_file.name == DIFFUSERS_WEIGHT_NAME else src_file.stem
    return dst / f"{stem or 'lora'}.safetensors"
