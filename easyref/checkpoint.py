"""EasyRef checkpoint and Qwen2-VL weight files: safe loading, key routing, layout mapping, validation.

Expected EasyRef layout (as released at huggingface.co/zongzhuofan/EasyRef): one file, safetensors or a torch file
loaded with ``weights_only=True`` (a DeepSpeed dict keeps the weights under ``"module"``), keys routed
by prefix:

- ``image_proj_model.``: the projector (``proj.0`` Linear, ``proj.2`` Linear, ``proj.3`` LayerNorm).
- ``mllm_final_layer.``: ``reference_tokens`` and the trained final decoder layer ``layers.0.*`` + ``norm``.
- ``multimodal_llm.``: optional fine-tuned MLLM weights, in the old transformers layout
  (``model.layers.N``, ``model.embed_tokens``, ``model.norm``, ``visual.*``); they override the stock
  Qwen2-VL weights.
- ``unet.``: decoupled cross-attention K/V projections and the UNet LoRA, used by "Apply EasyRef".

Qwen2-VL weights are mapped explicitly between the old layout (transformers < 4.52 and the files on
the Hugging Face hub) and the new one (``model.language_model.*``, ``model.visual.*``) to one
canonical naming: ``embed_tokens.weight``, ``layers.N.*``, ``norm.weight``, ``visual.*``.
A file with missing, mis-shaped or unknown keys is an error that lists them; nothing is skipped
silently (the language-model head and decoder layers past the prefix are documented as unused).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

SAFE_TENSOR_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

PROJECTOR_PREFIX = "image_proj_model."
FINAL_LAYER_PREFIX = "mllm_final_layer."
MLLM_PREFIX = "multimodal_llm."
UNET_PREFIX = "unet."
KNOWN_PREFIXES = (PROJECTOR_PREFIX, FINAL_LAYER_PREFIX, MLLM_PREFIX, UNET_PREFIX)

NUM_REFERENCE_TOKENS = 64


class CheckpointError(ValueError):
    """A weight file does not have the expected keys or shapes; the message lists them."""


def _listing(items: Iterable[str], limit: int = 40) -> str:
    items = list(items)
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "  " + shown + more


# ---------------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------------


def load_weight_file(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``.

    A DeepSpeed checkpoint (a dict with the weights under ``"module"``) is unwrapped.
    """
    lower = path.lower()
    if lower.endswith(SAFE_TENSOR_SUFFIXES):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except SafetensorError as error:
            raise CheckpointError(unreadable_safetensors_message(path, error)) from None
    if lower.endswith(TORCH_SUFFIXES):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files written without the zip format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "module" in obj and isinstance(obj["module"], Mapping):
            obj = obj["module"]  # DeepSpeed layout
        if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise CheckpointError(f"{path} does not hold a flat dictionary of named tensors (nor one under 'module').")
        return dict(obj)
    raise CheckpointError(
        f"{os.path.basename(path)}: unsupported file type. Use .safetensors (preferred) or a torch file "
        f"({', '.join(TORCH_SUFFIXES)}) that loads with weights_only=True."
    )


def unreadable_safetensors_message(path: str, error: Exception) -> str:
    """Why a ``.safetensors`` file cannot be read, and what to do: the file's first bytes tell a renamed torch
    file (zip or pickle) from a damaged one."""
    with open(path, "rb") as f:
        head = f.read(2)
    name = os.path.basename(path)
    if head == b"PK" or head[:1] == b"\x80":
        return (
            f"{name} is a torch (pickle) file renamed to .safetensors, not a safetensors file ({error}). Give it "
            f"its real extension ({', '.join(TORCH_SUFFIXES)}; loaded with weights_only=True) or use the .safetensors "
            f"download. File: {path}"
        )
    return (
        f"{name} cannot be read as a safetensors file ({error}): it is damaged or incomplete (an interrupted "
        f"download?). Download it again. File: {path}"
    )


def file_fingerprint(path: str) -> str:
    """``sha256:<hex>`` of the file contents: identifies the checkpoint the embeds were made with."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(16 * 1024 * 1024), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Qwen2-VL key layouts
# ---------------------------------------------------------------------------------------------

_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")

# (source prefix, canonical prefix), longest first. Old layout (hub files, transformers < 4.52) and
# new layout (transformers >= 4.52 / 5.x save_pretrained).
_MLLM_LAYOUT = (
    ("model.language_model.", ""),
    ("model.visual.", "visual."),
    ("language_model.model.", ""),  # some conversion scripts
    ("model.", ""),
    ("visual.", "visual."),
)
# Keys of a Qwen2-VL file that EasyRef never uses: the language-model head (tied to the embeddings;
# the authors' code computed full logits and threw them away, README step 8).
_UNUSED = ("lm_head.", "model.lm_head.")


def canonical_mllm_key(key: str) -> str | None:
    """Old or new transformers layout -> canonical name; ``None`` for keys EasyRef does not use."""
    if key.startswith(_UNUSED):
        return None
    for src, dst in _MLLM_LAYOUT:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise CheckpointError(f"Unknown Qwen2-VL weight name: {key}")


def is_prefix_key(canonical: str, num_prefix_layers: int) -> bool:
    """True for weights of the MLLM part EasyRef runs (embeddings, vision, layers 0..N-1, final norm)."""
    m = _LAYER_RE.match(canonical)
    if m:
        return int(m.group(1)) < num_prefix_layers
    return True


def mllm_folder_weight_files(folder: str) -> list[str]:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise CheckpointError(
            f"No .safetensors weight files in {folder}. Download the complete Qwen/Qwen2-VL-2B-Instruct "
            "folder from https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct (only safetensors weights are loaded)."
        )
    return [os.path.join(folder, f) for f in files]


def read_mllm_folder_weights(folder: str, num_prefix_layers: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The stock weights EasyRef needs from a Qwen2-VL folder, canonical names, cast to ``dtype``.

    Only the needed tensors are read (decoder layers from ``num_prefix_layers`` on and the head are
    not loaded at all).
    """
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for path in mllm_folder_weight_files(folder):
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    canonical = canonical_mllm_key(key)
                    if canonical is None or not is_prefix_key(canonical, num_prefix_layers):
                        continue
                    out[canonical] = f.get_tensor(key).to(dtype)
        except SafetensorError as error:
            raise CheckpointError(unreadable_safetensors_message(path, error)) from None
    return out


# ---------------------------------------------------------------------------------------------
# EasyRef checkpoint routing and validation
# ---------------------------------------------------------------------------------------------


@dataclass
class RoutedCheckpoint:
    projector: dict[str, torch.Tensor] = field(default_factory=dict)  # "proj.0.weight", ...
    final_layer: dict[str, torch.Tensor] = field(default_factory=dict)  # "layers.0....", "norm.weight"
    reference_tokens: torch.Tensor | None = None
    mllm: dict[str, torch.Tensor] = field(default_factory=dict)  # canonical Qwen2-VL names
    unet: dict[str, torch.Tensor] = field(default_factory=dict)  # "unet." stripped


def route_checkpoint(state_dict: Mapping[str, torch.Tensor], num_prefix_layers: int) -> RoutedCheckpoint:
    """Split an EasyRef state dict by prefix; unknown keys are an error listing them."""
    routed = RoutedCheckpoint()
    unknown = []
    for key, tensor in state_dict.items():
        if key.startswith(PROJECTOR_PREFIX):
            routed.projector[key[len(PROJECTOR_PREFIX) :]] = tensor
        elif key.startswith(FINAL_LAYER_PREFIX):
            sub = key[len(FINAL_LAYER_PREFIX) :]
            if sub == "reference_tokens":
                routed.reference_tokens = tensor
            else:
                routed.final_layer[sub] = tensor
        elif key.startswith(MLLM_PREFIX):
            try:
                canonical = canonical_mllm_key(key[len(MLLM_PREFIX) :])
            except CheckpointError:
                unknown.append(key)
                continue
            # Layers past the prefix (the stock layer 27) and the head are never run.
            if canonical is not None and is_prefix_key(canonical, num_prefix_layers):
                routed.mllm[canonical] = tensor
        elif key.startswith(UNET_PREFIX):
            routed.unet[key[len(UNET_PREFIX) :]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"The EasyRef checkpoint has {len(unknown)} keys outside the known prefixes "
            f"({', '.join(KNOWN_PREFIXES)}):\n{_listing(sorted(unknown))}"
        )
    return routed


@dataclass(frozen=True)
class TextDims:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


def expected_final_layer_shapes(d: TextDims) -> dict[str, tuple[int, ...]]:
    q = d.heads * d.head_dim
    kv = d.kv_heads * d.head_dim
    p = "layers.0."
    return {
        p + "self_attn.q_proj.weight": (q, d.hidden),
        p + "self_attn.q_proj.bias": (q,),
        p + "self_attn.k_proj.weight": (kv, d.hidden),
        p + "self_attn.k_proj.bias": (kv,),
        p + "self_attn.v_proj.weight": (kv, d.hidden),
        p + "self_attn.v_proj.bias": (kv,),
        p + "self_attn.o_proj.weight": (d.hidden, q),
        p + "mlp.gate_proj.weight": (d.intermediate, d.hidden),
        p + "mlp.up_proj.weight": (d.intermediate, d.hidden),
        p + "mlp.down_proj.weight": (d.hidden, d.intermediate),
        p + "input_layernorm.weight": (d.hidden,),
        p + "post_attention_layernorm.weight": (d.hidden,),
        "norm.weight": (d.hidden,),
    }


def expected_projector_shapes(hidden: int, cross_dim: int) -> dict[str, tuple[int, ...]]:
    return {
        "proj.0.weight": (hidden, hidden),
        "proj.0.bias": (hidden,),
        "proj.2.weight": (cross_dim, hidden),
        "proj.2.bias": (cross_dim,),
        "proj.3.weight": (cross_dim,),
        "proj.3.bias": (cross_dim,),
    }


def compare_shapes(
    have: Mapping[str, torch.Tensor], want: Mapping[str, tuple[int, ...]], prefix: str, strict_extra: bool = True
) -> list[str]:
    """Problems as readable lines: missing keys, wrong shapes and (optionally) unexpected keys."""
    problems = []
    for key, shape in want.items():
        if key not in have:
            problems.append(f"missing {prefix}{key} (expected shape {list(shape)})")
        elif tuple(have[key].shape) != tuple(shape):
            problems.append(f"wrong shape {prefix}{key}: {list(have[key].shape)}, expected {list(shape)}")
    if strict_extra:
        for key in sorted(set(have) - set(want)):
            problems.append(f"unexpected {prefix}{key} {list(have[key].shape)}")
    return problems


# The ``unet.`` part names its tensors after diffusers attention processors:
# ``<block>.attn1.processor.to_q_lora.down.weight``, ``<block>.attn2.processor.to_k_ip.weight``. This module is the
# one place that parses these names; the UNet glue (comfy_patches/easyref_lora.py) asks the functions below.
_UNET_KEY_RE = re.compile(r"^(?P<proc>.+\.attn[12]\.processor)\.(?P<name>.+)$")
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")  # every processor: a rank-r LoRA on each projection
REFERENCE_PROJECTIONS = ("to_k_ip", "to_v_ip")  # attn2 processors: the reference K/V projections


def lora_weight_name(projection: str, direction: str) -> str:
    """``to_q``, ``up`` -> ``to_q_lora.up.weight`` (a tensor name inside one processor)."""
    return f"{projection}_lora.{direction}.weight"


def is_cross_attention(processor: str) -> bool:
    """True for attn2 (cross-attention) processors, the ones that carry the reference K/V projections."""
    return processor.endswith("attn2.processor")


def unet_processors(unet: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """The ``unet.`` tensors (prefix stripped) grouped by processor, and the keys that name no processor."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, tensor in unet.items():
        m = _UNET_KEY_RE.match(key)
        if m:
            grouped.setdefault(m.group("proc"), {})[m.group("name")] = tensor
        else:
            stray.append(key)
    return grouped, stray


def reference_projection_weights(unet: Mapping[str, torch.Tensor], processor: str) -> tuple[torch.Tensor, ...]:
    """(to_k_ip, to_v_ip) weights [width, cross_dim] of one attn2 processor."""
    return tuple(unet[f"{processor}.{name}.weight"] for name in REFERENCE_PROJECTIONS)


def lora_tensors(unet: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the ``unet.`` part, under their processor names (what ComfyUI's LoRA loader reads)."""
    lora_names = {lora_weight_name(p, d) for p in LORA_PROJECTIONS for d in ("down", "up")}
    return {key: t for key, t in unet.items() if (m := _UNET_KEY_RE.match(key)) and m.group("name") in lora_names}


def unet_problems(unet: Mapping[str, torch.Tensor], cross_dim: int) -> list[str]:
    """Structural check of the ``unet.`` part: every attention processor complete and consistent.

    attn1 and attn2 processors carry the rank-r LoRA (``to_{q,k,v,out}_lora.{down,up}.weight``); attn2
    processors also ``to_k_ip.weight`` / ``to_v_ip.weight`` [width, cross_dim]. Whether the processors
    match a given UNet is checked by "Apply EasyRef".
    """
    if not unet:
        return [f"missing {UNET_PREFIX}* (decoupled cross-attention and UNet LoRA weights)"]
    procs, stray = unet_processors(unet)
    problems = [f"unexpected {UNET_PREFIX}{key}" for key in stray]
    for proc, names in sorted(procs.items()):
        cross = is_cross_attention(proc)
        required = [lora_weight_name(p, d) for p in LORA_PROJECTIONS for d in ("down", "up")]
        if cross:
            required += [f"{n}.weight" for n in REFERENCE_PROJECTIONS]
        for r in required:
            if r not in names:
                problems.append(f"missing {UNET_PREFIX}{proc}.{r}")
        for extra in sorted(set(names) - set(required)):
            problems.append(f"unexpected {UNET_PREFIX}{proc}.{extra}")
        if any(r not in names for r in required):
            continue
        width = names[lora_weight_name("to_q", "up")].shape[0]
        rank = names[lora_weight_name("to_q", "down")].shape[0]
        for p in LORA_PROJECTIONS:
            in_dim = cross_dim if cross and p in ("to_k", "to_v") else width
            for d, shape in (("down", (rank, in_dim)), ("up", (width, rank))):
                t = names[lora_weight_name(p, d)]
                if tuple(t.shape) != shape:
                    problems.append(
                        f"wrong shape {UNET_PREFIX}{proc}.{lora_weight_name(p, d)}: {list(t.shape)}, "
                        f"expected {list(shape)}"
                    )
        if cross:
            for n in (f"{n}.weight" for n in REFERENCE_PROJECTIONS):
                if tuple(names[n].shape) != (width, cross_dim):
                    problems.append(
                        f"wrong shape {UNET_PREFIX}{proc}.{n}: {list(names[n].shape)}, expected {[width, cross_dim]}"
                    )
    return problems


def validate_checkpoint(routed: RoutedCheckpoint, dims: TextDims, source: str) -> int:
    """Raise :class:`CheckpointError` listing every problem; return the cross-attention dim."""
    problems = []
    cross_dim = None
    proj2 = routed.projector.get("proj.2.weight")
    if proj2 is not None and proj2.dim() == 2:
        cross_dim = int(proj2.shape[0])
    else:
        problems.append(f"missing {PROJECTOR_PREFIX}proj.2.weight (expected shape [2048, {dims.hidden}])")
    if cross_dim is not None:
        problems += compare_shapes(
            routed.projector, expected_projector_shapes(dims.hidden, cross_dim), PROJECTOR_PREFIX
        )
    if routed.reference_tokens is None:
        problems.append(
            f"missing {FINAL_LAYER_PREFIX}reference_tokens (expected shape [{NUM_REFERENCE_TOKENS}, {dims.hidden}])"
        )
    elif tuple(routed.reference_tokens.shape) != (NUM_REFERENCE_TOKENS, dims.hidden):
        problems.append(
            f"wrong shape {FINAL_LAYER_PREFIX}reference_tokens: {list(routed.reference_tokens.shape)}, "
            f"expected {[NUM_REFERENCE_TOKENS, dims.hidden]}"
        )
    problems += compare_shapes(routed.final_layer, expected_final_layer_shapes(dims), FINAL_LAYER_PREFIX)
    if cross_dim is not None:
        problems += unet_problems(routed.unet, cross_dim)
    if problems:
        raise CheckpointError(
            f"{source} is not an EasyRef checkpoint this pack can use ({len(problems)} problems):\n"
            f"{_listing(problems)}\nDownload the checkpoint from https://huggingface.co/zongzhuofan/EasyRef."
        )
    return cross_dim


def mllm_problems(
    have: Mapping[str, torch.Tensor], want: Mapping[str, tuple[int, ...]], source: str, require_all: bool
) -> list[str]:
    problems = []
    for key, tensor in have.items():
        if key not in want:
            problems.append(f"unexpected {source}{key} {list(tensor.shape)}")
        elif tuple(tensor.shape) != tuple(want[key]):
            problems.append(f"wrong shape {source}{key}: {list(tensor.shape)}, expected {list(want[key])}")
    if require_all:
        problems += [f"missing {source}{k} (expected shape {list(s)})" for k, s in want.items() if k not in have]
    return problems


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
