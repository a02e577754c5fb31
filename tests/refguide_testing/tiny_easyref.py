"""Tiny EasyRef checkpoints whose ``unet.`` weights fit the tiny SDXL-layout UNets, and a tiny SDXL ControlNet.

The processor names are written out per layout (diffusers naming -> the ComfyUI block they belong to), so the
tests check the pack's diffusers -> ComfyUI mapping against an independent table.
"""

from __future__ import annotations

import os

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management as mm
import comfy.ops
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential

from refguide_testing import tiny_models
from refguide_testing import tiny_qwen2vl as tq

CROSS_DIM = 2048
LORA_RANK = 4


def _layout(entries):
    """[(diffusers transformer block, ComfyUI attn key, width)] from (attentions prefix, block, depth, width) rows."""
    table = []
    for prefix, (group, first_id), count, depth, width in entries:
        for a in range(count):
            for t in range(depth):
                table.append((f"{prefix}.attentions.{a}.transformer_blocks.{t}", (group, first_id + a, t), width))
    return table


# tiny_unet("sdxl"): input 4,5 (depth 1, width 128), input 7,8 / middle 0 / output 0..2 (depth 2, width 192),
# output 3..5 (depth 1, width 128).
SDXL_TINY_LAYOUT = _layout(
    [
        ("down_blocks.1", ("input", 4), 2, 1, 128),
        ("down_blocks.2", ("input", 7), 2, 2, 192),
        ("mid_block", ("middle", 0), 1, 2, 192),
        ("up_blocks.0", ("output", 0), 3, 2, 192),
        ("up_blocks.1", ("output", 3), 3, 1, 128),
    ]
)
# tiny_unet("sdxl_light"): attention only at input 7,8 / middle 0 / output 0..2, depth 1, width 64.
SDXL_LIGHT_LAYOUT = _layout(
    [
        ("down_blocks.2", ("input", 7), 2, 1, 64),
        ("mid_block", ("middle", 0), 1, 1, 64),
        ("up_blocks.0", ("output", 0), 3, 1, 64),
    ]
)
LAYOUTS = {"sdxl": (SDXL_TINY_LAYOUT, (128, 192)), "sdxl_light": (SDXL_LIGHT_LAYOUT, (64, 64))}


def make_easyref_checkpoint_for(path: str, config: dict, family: str, seed: int = 2) -> dict[str, torch.Tensor]:
    """The released checkpoint's layout with ``unet.`` processors exactly for the tiny UNet ``family`` (cross dim 2048)."""
    layout, widths = LAYOUTS[family]
    present = {name for name, _, _ in layout}
    drop = tuple(
        key
        for block, _ in tq.SDXL_BLOCKS
        if block not in present
        for attn in ("attn1", "attn2")
        for key in _processor_keys(f"unet.{block}.{attn}.processor.", attn)
    )
    return tq.make_easyref_checkpoint(
        path,
        config,
        seed=seed,
        cross_dim=CROSS_DIM,
        with_mllm=False,
        unet_widths=widths,
        lora_rank=LORA_RANK,
        drop=drop,
    )


def _processor_keys(prefix: str, attn: str) -> list[str]:
    keys = [f"{prefix}{n}_lora.{d}.weight" for n in ("to_q", "to_k", "to_v", "to_out") for d in ("down", "up")]
    if attn == "attn2":
        keys += [prefix + "to_k_ip.weight", prefix + "to_v_ip.weight"]
    return keys


def make_models_for(root: str, family: str, name: str = "easyref.safetensors", seed: int = 2) -> tuple[str, str]:
    """``root/LLM/Qwen2-VL-2B-Instruct`` (reused when present) and ``root/easyref/<name>`` for ``family``."""
    folder = os.path.join(root, "LLM", "Qwen2-VL-2B-Instruct")
    if os.path.isfile(os.path.join(folder, "config.json")):
        config = _config(folder)
    else:
        config = tq.make_qwen2vl_folder(folder)
    os.makedirs(os.path.join(root, "easyref"), exist_ok=True)
    path = os.path.join(root, "easyref", name)
    if not os.path.isfile(path):
        make_easyref_checkpoint_for(path, config, family, seed=seed)
    return folder, path


def _config(folder: str) -> dict:
    import json

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def tiny_controlnet(family: str = "sdxl_light", seed: int = 5) -> comfy.controlnet.ControlNet:
    """A real comfy.controlnet.ControlNet (cldm) for the tiny SDXL layout, random non-zero weights.

    The hint encoder (cldm's stack of seven convolutions at up to full image resolution, which dominates a tiny
    ControlNet's cost at 1024x1024) is replaced by one 8x8 stride-8 convolution with the same output shape.
    """
    config = dict(tiny_models.TINY_SDXL_LIGHT_UNET if family == "sdxl_light" else tiny_models.TINY_SDXL_UNET)
    config.pop("out_channels")
    config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
    control_model = comfy.cldm.cldm.ControlNet(**config)
    control_model.input_hint_block = TimestepEmbedSequential(
        torch.nn.Conv2d(3, config["model_channels"], kernel_size=8, stride=8)
    )
    tiny_models.init_module_(control_model, seed, scale=0.5)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device())
