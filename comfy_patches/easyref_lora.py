"""Map EasyRef's ``unet.`` attention processors onto a ComfyUI UNet, and turn its LoRA into ComfyUI weight patches.

The checkpoint names its UNet-side weights after diffusers attention processors, e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.weight`` and
``...attn1.processor.to_q_lora.down.weight``. ComfyUI already knows the diffusers -> ComfyUI UNet naming
(``comfy.utils.unet_to_diffusers``, exposed for LoRA files by ``comfy.lora.model_lora_keys_unet``, which maps
``<block>.attnN.processor.to_q`` to ``diffusion_model.<...>.attnN.to_q.weight``); this module only uses that map,
checks that the processors fit the model (same layers, same widths) and builds the patches with ComfyUI's own
LoRA loader, so the LoRA composes with other LoRAs, low-VRAM loading and unpatching. The checkpoint's key format
is read through ``easyref/checkpoint.py`` (its one owner).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import comfy.lora
import torch

from ..easyref import checkpoint as ckpt

# The ComfyUI UNet weight behind each LoRA projection of a processor.
MODEL_WEIGHT = {"to_q": "to_q.weight", "to_k": "to_k.weight", "to_v": "to_v.weight", "to_out": "to_out.0.weight"}
_MODEL_ATTENTION = re.compile(r"^(?P<prefix>diffusion_model\..+\.transformer_blocks\.\d+\.attn[12])\.to_q\.weight$")
_BLOCK = re.compile(
    r"^diffusion_model\.(?:(?P<group>input|output)_blocks\.(?P<id>\d+)\.\d+|middle_block\.\d+)"
    r"\.transformer_blocks\.(?P<index>\d+)\.attn[12]$"
)


class EasyRefModelMismatch(ValueError):
    """The EasyRef checkpoint's UNet-side weights do not fit this diffusion model."""


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One attn2 of the UNet with its EasyRef processor: where to patch it and the reference K/V projections."""

    processor: str  # diffusers processor name, e.g. "mid_block.attentions.0.transformer_blocks.3.attn2.processor"
    block_key: tuple[str, int, int]  # ComfyUI's attn2 patch key (block_name, block_id, block_index)

    @property
    def name(self) -> str:
        return "{}_{}_{}".format(*self.block_key)


@dataclass
class ProcessorMap:
    """The checkpoint's processors resolved against one model: LoRA targets and the cross-attention layers."""

    lora_targets: dict[str, str] = field(default_factory=dict)  # "<proc>.to_q" -> "diffusion_model....to_q.weight"
    cross_layers: list[CrossAttentionLayer] = field(default_factory=list)


def block_key(module_prefix: str) -> tuple[str, int, int]:
    """``diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2`` -> ("input", 4, 0); middle -> ("middle", 0, i)."""
    match = _BLOCK.match(module_prefix)
    if match is None:
        raise EasyRefModelMismatch(f"{module_prefix} is not a UNet transformer block attention")
    index = int(match.group("index"))
    if match.group("group") is None:
        return ("middle", 0, index)
    return (match.group("group"), int(match.group("id")), index)


def _listing(problems: list[str], limit: int = 12) -> str:
    shown = "\n".join(f"  - {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more


def map_processors(model_patcher, unet_state_dict: dict[str, torch.Tensor], cross_dim: int) -> ProcessorMap:
    """Resolve every processor of the checkpoint against the model; raise :class:`EasyRefModelMismatch` listing
    every layer that is missing on either side or has another width."""
    model = model_patcher.model
    state = model.state_dict()
    model_layers = {m.group("prefix") for m in map(_MODEL_ATTENTION.match, state) if m}
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    grouped, _ = ckpt.unet_processors(unet_state_dict)  # stray keys: refused when the checkpoint loads
    result = ProcessorMap()
    layer_problems: list[str] = []  # layers missing on either side: listed first
    shape_problems: list[str] = []
    covered: set[str] = set()
    for proc, names in sorted(grouped.items()):
        target = key_map.get(f"{proc}.to_q")
        if target is None:
            layer_problems.append(f"{proc}: this model has no such attention layer")
            continue
        prefix = target[: -len(".to_q.weight")]
        covered.add(prefix)
        mismatched = []
        for projection in ckpt.LORA_PROJECTIONS:
            weight_key = f"{prefix}.{MODEL_WEIGHT[projection]}"
            weight = state.get(weight_key)
            up = names.get(ckpt.lora_weight_name(projection, "up"))
            down = names.get(ckpt.lora_weight_name(projection, "down"))
            if weight is None or up is None or down is None:
                shape_problems.append(
                    f"{proc}.{projection}_lora: missing on the {'model' if weight is None else 'checkpoint'}"
                )
            elif (up.shape[0], down.shape[1]) != tuple(weight.shape[:2]):
                mismatched.append(f"{projection} {up.shape[0]}x{down.shape[1]} vs {weight.shape[0]}x{weight.shape[1]}")
            else:
                result.lora_targets[f"{proc}.{projection}"] = weight_key
        if mismatched:
            shape_problems.append(f"{proc}: LoRA shapes do not fit {prefix} ({', '.join(mismatched)})")
        if ckpt.is_cross_attention(proc):
            width = state[f"{prefix}.to_k.weight"].shape[0]
            for name in (f"{n}.weight" for n in ckpt.REFERENCE_PROJECTIONS):
                ip = names.get(name)
                if ip is None or tuple(ip.shape) != (width, cross_dim):
                    got = "missing" if ip is None else list(ip.shape)
                    shape_problems.append(f"{proc}.{name}: {got}, the model's layer needs [{width}, {cross_dim}]")
            result.cross_layers.append(CrossAttentionLayer(proc, block_key(prefix)))
    for prefix in sorted(model_layers - covered):
        layer_problems.append(f"{prefix[len('diffusion_model.') :]}: the checkpoint has no processor for this layer")
    problems = layer_problems + shape_problems
    if problems:
        raise EasyRefModelMismatch(
            f"The EasyRef checkpoint's UNet weights do not fit this model ({len(problems)} problems):\n"
            f"{_listing(problems)}\nEasyRef was trained on SDXL base 1.0: use an SDXL-architecture checkpoint."
        )
    return result


def lora_patches(unet_state_dict: dict[str, torch.Tensor], processor_map: ProcessorMap) -> dict:
    """ComfyUI weight patches ({model key: LoRA adapter}) for the checkpoint's rank-r UNet LoRA (scale 1, no alpha).

    ComfyUI's LoRA loader reads the diffusers ``<proc>.to_q_lora.{up,down}.weight`` naming itself; the patched
    weight is W + strength * up @ down (``ModelPatcher.add_patches(patches, strength)``).
    """
    patches = comfy.lora.load_lora(ckpt.lora_tensors(unet_state_dict), dict(processor_map.lora_targets))
    missing = sorted(set(processor_map.lora_targets.values()) - set(patches))
    if missing:
        raise EasyRefModelMismatch(
            f"ComfyUI's LoRA loader did not read the EasyRef LoRA for {len(missing)} weights:\n{_listing(missing)}"
        )
    return patches
