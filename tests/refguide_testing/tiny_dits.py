"""Tiny diffusion transformers built from ComfyUI's own model classes (random weights, seconds on a CPU).

``tiny_dit(name)`` -> ModelPatcher around comfy.supported_models.<Class>(config).get_model({}), float32,
weights from a fixed generator (std ~0.1 for matrices, so attention choices are visible).
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch

# Flux: width 64, 2 heads (axes 4+14+14 = 32 per head), 2 double + 2 single blocks, T5 width 32, CLIP pooled 64
# (the pooled width of tiny_models.tiny_clip, which stands in for Flux's CLIP-L + T5 in the workflows).
TINY_FLUX = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 64, "context_in_dim": 32,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [4, 14, 14], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [],
}  # fmt: skip
TINY_CHROMA = {
    "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 32, "hidden_size": 64,
    "mlp_ratio": 2.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [4, 14, 14],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 64,
    "n_layers": 1, "txt_ids_dims": [], "vec_in_dim": None,
}  # fmt: skip
TINY_QWEN_IMAGE = {
    "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (8, 12, 12),
}  # fmt: skip
TINY_LUMINA2 = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 32, "n_layers": 2,
    "qk_norm": True, "n_heads": 2, "n_kv_heads": 1, "axes_dims": [8, 12, 12], "axes_lens": [300, 64, 64],
    "rope_theta": 10000.0, "ffn_dim_multiplier": 2.0,
}  # fmt: skip
TINY_ZIMAGE = dict(
    TINY_LUMINA2, dim=256, n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], rope_theta=256.0,
    z_image_modulation=True, time_scale=1000.0,
)  # fmt: skip
TINY_SD3 = {
    "in_channels": 16, "patch_size": 2, "depth": 2, "pos_embed_max_size": 16, "num_patches": 256,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
    "adm_in_channels": 32, "x_block_self_attn_layers": [0],
}  # fmt: skip
# Cosmos Predict2 text-to-image: width 64, 2 heads, 2 blocks (self-attention, then cross-attention to the text).
TINY_COSMOS_PREDICT2 = {
    "image_model": "cosmos_predict2", "max_img_h": 64, "max_img_w": 64, "max_frames": 4, "in_channels": 16,
    "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "concat_padding_mask": True, "model_channels": 64,
    "num_blocks": 2, "num_heads": 2, "crossattn_emb_channels": 32, "pos_emb_cls": "rope3d",
    "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
    "use_adaln_lora": True, "adaln_lora_dim": 16, "rope_h_extrapolation_ratio": 4.0,
    "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0, "extra_per_block_abs_pos_emb": False,
}  # fmt: skip
# For whole Flux workflows at 1024x1024 (4096 image tokens a row) on a CPU: width 32, one head, one double-stream
# block (the single-stream path is covered by the host tests).
TINY_FLUX_LIGHT = dict(TINY_FLUX, hidden_size=32, num_heads=1, depth=1, depth_single_blocks=0)

CLASSES = {
    "flux": (comfy.supported_models.Flux, TINY_FLUX),
    "flux_light": (comfy.supported_models.Flux, TINY_FLUX_LIGHT),
    "chroma": (comfy.supported_models.Chroma, TINY_CHROMA),
    "qwen_image": (comfy.supported_models.QwenImage, TINY_QWEN_IMAGE),
    "lumina2": (comfy.supported_models.Lumina2, TINY_LUMINA2),
    "zimage": (comfy.supported_models.ZImage, TINY_ZIMAGE),
    "sd3": (comfy.supported_models.SD3, TINY_SD3),
    "cosmos_predict2": (comfy.supported_models.CosmosT2IPredict2, TINY_COSMOS_PREDICT2),
}


def init_weights_(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Norm weights ~1, biases small, matrices (and buffers left uninitialised, e.g. SD3's pos_embed) N(0, std^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if tensor.ndim == 1 and (name.endswith("weight") or name.endswith("scale")):
                tensor.copy_(1.0 + 0.05 * torch.randn(tensor.shape, generator=generator))
            elif tensor.ndim <= 1:
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(std * torch.randn(tensor.shape, generator=generator))
    return module


def tiny_dit(name: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around a tiny real ComfyUI DiT: "flux", "flux_light", "chroma", "qwen_image", "lumina2", "zimage", "sd3", "cosmos_predict2"."""
    cls, config = CLASSES[name]
    model_config = cls(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_weights_(model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def tiny_flux_vae(seed: int = 2):
    """A real comfy.sd.VAE (AutoencoderKL, 8x down-sampling) with Flux's 16 latent channels, at toy width."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from refguide_testing.tiny_models import TINY_VAE_DDCONFIG, init_module_

    config = {"params": {"ddconfig": dict(TINY_VAE_DDCONFIG, z_channels=16), "embed_dim": 16}}
    state_dict = init_module_(AutoencoderKL(**config["params"]), seed, scale=0.5).state_dict()
    vae = comfy.sd.VAE(sd=state_dict, config=config)
    vae.latent_channels = 16
    return vae


# Families whose checkpoints come with a 3-D VAE (the Wan 2.1 VAE): latents (B, C, T, H, W), one frame a picture.
VIDEO_VAE_FAMILIES = ("qwen_image", "cosmos_predict2")


def tiny_dit_vae(name: str, seed: int = 2):
    """The VAE a tiny DiT's checkpoint would come with: ComfyUI's Wan 2.1 VAE class (3-D, 16 channels) for
    Qwen-Image and Cosmos Predict2, else the 16-channel image AutoencoderKL of :func:`tiny_flux_vae`."""
    if name in VIDEO_VAE_FAMILIES:
        from refguide_testing.tiny_wan import tiny_wan_vae

        return tiny_wan_vae(seed)
    return tiny_flux_vae(seed)
