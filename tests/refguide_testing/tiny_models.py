"""Tiny, randomly initialised stand-ins built from ComfyUI's own model classes.

Weights from ComfyUI's constructors are uninitialised, so every builder fills them from a fixed generator
(moderate scale: tiny random nets stay well-conditioned, so float32 comparisons stay tight).
"""

from __future__ import annotations

import functools
import types

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import torch
from comfy.ldm.models.autoencoder import AutoencoderKL

# SDXL block layout (input 4,5,7,8; middle 0; output 0..5 carry transformers) at toy widths.
# Context width 2048 as in SDXL (EasyRef checks it); attention widths 128 (2 heads) and 192 (3 heads).
TINY_POOLED_DIM = 64
TINY_SDXL_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": TINY_POOLED_DIM + 6 * 256,
    "in_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 2, 2],
    "channel_mult": [1, 2, 3],
    "transformer_depth_middle": 2,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# For whole workflows at SDXL resolutions on a CPU: attention only at the deepest level (input 7,8 / middle 0 /
# output 0..2, the blocks with SDXL's 1024-token feature maps), 32 channels at full latent resolution.
TINY_SDXL_LIGHT_UNET = dict(
    TINY_SDXL_UNET,
    model_channels=32,
    channel_mult=[1, 1, 2],
    transformer_depth=[0, 0, 0, 0, 1, 1],
    transformer_depth_middle=1,
    transformer_depth_output=[0, 0, 0, 0, 0, 0, 1, 1, 1],
)

# SD1.5 block layout (input 1,2,4,5,7,8; middle 0; output 3..11) at toy widths.
TINY_SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 1, 2, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 64,
    "num_heads": 2,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# Stable Video Diffusion's layout (spatial + temporal transformers and temporal res-blocks, input 1..8,
# output 3..11) at toy widths; context = the tiny CLIP vision embedding.
TINY_SVD_CONTEXT = 64
TINY_SVD_UNET = dict(
    TINY_SD15_UNET,
    in_channels=8,
    adm_in_channels=768,
    num_classes="sequential",
    context_dim=TINY_SVD_CONTEXT,
    use_linear_in_transformer=True,
    num_head_channels=64,
    extra_ff_mix_layer=True,
    use_spatial_context=True,
    merge_strategy="learned_with_images",
    merge_factor=0.0,
    video_kernel_size=[3, 1, 1],
    use_temporal_resblock=True,
    use_temporal_attention=True,
    disable_temporal_crossattention=False,
)
TINY_SVD_UNET.pop("num_heads")

# For whole SVD workflows (1024x576, 14 frames, cfg: 28 rows a call) on a CPU: one res-block per level, 32
# channels, spatial + temporal transformers only at the deepest level and the middle block (64 wide).
TINY_SVD_LIGHT_UNET = dict(
    TINY_SVD_UNET,
    model_channels=32,
    num_res_blocks=[1, 1, 1, 1],
    channel_mult=[1, 1, 1, 2],
    transformer_depth=[0, 0, 0, 1],
    transformer_depth_middle=1,
    transformer_depth_output=[0, 0, 0, 0, 0, 0, 1, 1],
)


def init_module_(module: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Fill every parameter deterministically: norms 1, biases small, matrices ~ N(0, scale^2/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1 and name.endswith("weight"):
                param.copy_(1.0 + 0.05 * torch.randn(param.shape, generator=generator))
            elif param.ndim <= 1:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) * (scale / fan_in**0.5))
    return module


def _patcher(model: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def tiny_unet(family: str = "sdxl", seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around a real ComfyUI model of the given family ("sdxl", "sdxl_light", "sd15", "svd" or "svd_light") at toy size."""
    if family == "sdxl":
        model = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET)).get_model({})
    elif family == "sdxl_light":
        model = comfy.supported_models.SDXL(dict(TINY_SDXL_LIGHT_UNET)).get_model({})
    elif family == "sd15":
        model = comfy.supported_models.SD15(dict(TINY_SD15_UNET)).get_model({})
    elif family == "svd":
        model = comfy.supported_models.SVD_img2vid(dict(TINY_SVD_UNET)).get_model({})
    elif family == "svd_light":
        model = comfy.supported_models.SVD_img2vid(dict(TINY_SVD_LIGHT_UNET)).get_model({})
    else:
        raise ValueError(family)
    init_module_(model, seed)
    return _patcher(model)


class TinyWideClip(comfy.sd1_clip.SDClipModel):
    """A 1-layer CLIP text model (real tokenizer, real ComfyUI encoder) widened to SDXL's 2048 context."""

    CONFIG = {
        "hidden_act": "quick_gelu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "projection_dim": TINY_POOLED_DIM,
        "vocab_size": 49408,
        "eos_token_id": 49407,
    }

    def __init__(self, device="cpu", dtype=None, model_options={}, context_dim=2048, **kwargs):
        super().__init__(
            device=device, dtype=dtype, textmodel_json_config=dict(self.CONFIG), model_options=model_options
        )
        self.widen = torch.nn.Linear(self.CONFIG["hidden_size"], context_dim, bias=False, device=device)

    def forward(self, tokens):
        z, pooled = super().forward(tokens)[:2]
        return self.widen(z), pooled


def tiny_clip(seed: int = 1, context_dim: int = 2048) -> comfy.sd.CLIP:
    """A real comfy.sd.CLIP (SD1 tokenizer, CLIP text encoder) whose conditioning fits the tiny UNets."""
    target = types.SimpleNamespace(
        clip=functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=TinyWideClip, context_dim=context_dim),
        tokenizer=comfy.sd1_clip.SD1Tokenizer,
        params={},
    )
    clip = comfy.sd.CLIP(target=target)
    init_module_(clip.cond_stage_model, seed)
    return clip


TINY_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 0,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def tiny_vae(seed: int = 2) -> comfy.sd.VAE:
    """A real comfy.sd.VAE (AutoencoderKL, 8x down-sampling, 4 latent channels) at toy width."""
    config = {"params": {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}}
    state_dict = init_module_(AutoencoderKL(**config["params"]), seed, scale=0.5).state_dict()
    return comfy.sd.VAE(sd=state_dict, config=config)


TINY_CLIP_VISION = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 64,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 2,
    "num_channels": 3,
    "num_hidden_layers": 2,  # SVD conditioning reads the penultimate layer
    "patch_size": 32,
    "projection_dim": TINY_SVD_CONTEXT,
    "torch_dtype": "float32",
}


def tiny_clip_vision(seed: int = 3) -> comfy.clip_vision.ClipVisionModel:
    """A real comfy.clip_vision.ClipVisionModel (ViT, patch 32) whose image embeds fit the tiny SVD UNet."""
    clip_vision = comfy.clip_vision.ClipVisionModel(dict(TINY_CLIP_VISION))
    init_module_(clip_vision.model, seed)
    return clip_vision
