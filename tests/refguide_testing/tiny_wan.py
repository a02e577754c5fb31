"""Tiny, randomly initialised Wan 2.x stand-ins built from ComfyUI's own classes (model, VAE, text encoder).

- ``tiny_wan("t2v" | "i2v" | "i2v_22" | "ti2v_5b")``: ComfyUI's real ``WanModel`` through the supported-model
  classes ComfyUI picks for each file: Wan 2.1 text-to-video (WAN21_T2V), Wan 2.1 image-to-video with the
  CLIP-image cross-attention (WAN21_I2V, in_dim 36), the Wan 2.2 14B image-to-video experts (WAN21_T2V with
  in_dim 36: no CLIP branch, as ComfyUI detects them) and the Wan 2.2 5B TI2V (WAN22_T2V, 48 channels).
- ``tiny_wan_vae()``: ComfyUI's real Wan 2.1 VAE (4x temporal, 8x spatial compression) at toy width, loaded
  from a state dict through ``comfy.sd.VAE`` exactly as a file would be.
- ``tiny_wan_text_encoder()``: a real comfy.sd.CLIP whose conditioning is TEXT_DIM wide (the stand-in for
  umt5-xxl, whose tokenizer comes from the weights file).
"""

from __future__ import annotations

import comfy.sd
import comfy.supported_models
import torch
from comfy.ldm.wan.vae import WanVAE

from .tiny_models import _patcher, init_module_, tiny_clip

TEXT_DIM = 64
CLIP_VISION_WIDTH = 1280  # Wan's MLPProj reads ViT-H penultimate states (fixed 1280 wide in ComfyUI)

TINY_WAN = {
    "image_model": "wan2.1",
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 64,
    "ffn_dim": 128,
    "freq_dim": 256,
    "text_dim": TEXT_DIM,
    "out_dim": 16,
    "num_heads": 2,
    "num_layers": 2,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}

VARIANTS = {
    "t2v": (comfy.supported_models.WAN21_T2V, {}),
    "i2v": (comfy.supported_models.WAN21_I2V, {"model_type": "i2v", "in_dim": 36}),
    "i2v_22": (comfy.supported_models.WAN21_T2V, {"in_dim": 36}),
    "ti2v_5b": (comfy.supported_models.WAN22_T2V, {"in_dim": 48, "out_dim": 48}),
}


def tiny_wan(variant: str = "t2v", seed: int = 0, num_layers: int = 2):
    """A ModelPatcher around ComfyUI's real Wan model of ``variant`` at toy size (float32, weights std ~0.1-1)."""
    config_class, overrides = VARIANTS[variant]
    config = config_class(dict(TINY_WAN, num_layers=num_layers, **overrides))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_module_(model, seed)
    return _patcher(model)


def latent_channels(variant: str) -> int:
    return 48 if variant == "ti2v_5b" else 16


def tiny_wan_vae(seed: int = 2) -> comfy.sd.VAE:
    """ComfyUI's real Wan 2.1 VAE class at width 8, loaded through comfy.sd.VAE from its state dict."""
    vae = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)  # fmt: skip
    return comfy.sd.VAE(sd=init_module_(vae, seed, scale=0.5).state_dict())


def tiny_wan_text_encoder(seed: int = 1) -> comfy.sd.CLIP:
    """A real comfy.sd.CLIP whose conditioning (B, 77, TEXT_DIM) fits the tiny Wan's text embedding."""
    return tiny_clip(seed=seed, context_dim=TEXT_DIM)
