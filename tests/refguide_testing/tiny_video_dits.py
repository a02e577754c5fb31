"""Tiny real video diffusion transformers for the family-parametrized Temporal RefDrop tests (one entry a family).

Like :mod:`tiny_dits` for image families: each entry is ComfyUI's own configuration class with a toy config
(random weights), and what the tests need to know about its token layout, written from the model's code
(independently of the pack's family table). ``video_start(tokens, video_tokens, context_tokens)``: where the
video tokens of a self-attention call of ``tokens`` tokens start (the rest of the row, e.g. text, is its
non-video tokens), None for a self-attention call without video tokens (a text refiner).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch

from . import tiny_wan
from . import tiny_wan_variants as wan_variants
from .tiny_dits import TINY_COSMOS_PREDICT2, TINY_KANDINSKY5_IMAGE, init_weights_


def video_only(tokens, video_tokens, context_tokens):
    return 0


@dataclass(frozen=True)
class TinyVideoDiT:
    """A tiny real video DiT: configuration class, toy config, the pack's family name, its token layout."""

    config_class: type
    config: dict
    family: str
    video_start: Callable
    self_calls: int  # guided self-attention calls per forward (calls with video tokens)
    patch: tuple[int, int, int] = (1, 2, 2)  # latent pixels per token: frames, height, width
    context_width: int = tiny_wan.TEXT_DIM
    text_to_video: bool = True  # no picture conditions the first frame (picture references are allowed)
    conds: Callable | None = None  # extra conditioning a text encoder / conditioning node would hand the model
    init_std: float = 0.1  # the random weights' scale (init_weights_)
    picture_frames: int = 0  # latent frames in front of the clip that are a reference picture (Wan Animate: 1)
    # (block_index, n) -> True when the n-th self-attention call with that block index in a forward is an adapter
    # branch's that stays plain (Wan VACE's blocks run after main block i with the same block_index)
    plain_self_call: Callable | None = None

    @property
    def latent_channels(self) -> int:
        return self.config_class.latent_format().latent_channels

    def conditioning_extras(self, rows: int, generator: torch.Generator) -> dict:
        return self.conds(rows, generator) if self.conds is not None else {}


ENTRIES: dict[str, TinyVideoDiT] = {
    "wan_t2v": TinyVideoDiT(*tiny_wan.VARIANTS["t2v"][:1], dict(tiny_wan.TINY_WAN), "Wan 2.1 / 2.2", video_only, 2),
}


# --- HunyuanVideo, Kandinsky 5, CogVideoX, Cosmos, Mochi: width 64, 2 heads of 32, 1-2 blocks of each kind ---
PROMPT_TOKENS = 7  # the family tests' prompts (c_crossattn tokens); Mochi's attention mask has as many entries
TINY_HUNYUAN_VIDEO = {
    "image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
    "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True,
    "byt5": False, "meanflow": False, "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False,
}  # fmt: skip
# HunyuanVideo 1.5: no CLIP pooled vector, SigLIP image tokens (vision_in), ByT5 glyph tokens (byt5_in: its fixed
# 1472 -> 2048 -> 2048 widths), 65 input channels (latent 32 + image-to-video image 32 + mask 1).
TINY_HUNYUAN_VIDEO15 = dict(
    TINY_HUNYUAN_VIDEO, in_channels=65, out_channels=32, vec_in_dim=None, guidance_embed=False, byt5=True,
    use_cond_type_embedding=True, vision_in_dim=32, meanflow_sum=True,
)  # fmt: skip
# Kandinsky 5 video: the image entry's model on 33-channel input (latent 16 + image 16 + mask 1) x 1x2x2 patches.
TINY_KANDINSKY5_VIDEO = dict(TINY_KANDINSKY5_IMAGE, visual_embed_dim=132)
# CogVideoX 1.0 (the 2B's sincos positions: width 48, divisible by 3), 2 heads of 24. CogVideoX's zero-terminal-SNR
# schedule scales the noise input down ~4500x at the first step: weights of std 0.2 let guidance show in one step.
TINY_COGVIDEOX = {
    "image_model": "cogvideox", "num_attention_heads": 2, "attention_head_dim": 24, "in_channels": 16,
    "out_channels": 16, "time_embed_dim": 32, "text_embed_dim": 32, "num_layers": 2, "sample_width": 8,
    "sample_height": 8, "sample_frames": 9, "use_rotary_positional_embeddings": False,
}  # fmt: skip
# CogVideoX 1.5 image-to-video: 2x2x2 patches (two latent frames a token frame), 3-D RoPE instead of the 2B's sincos
# positions, the OFS embedding, 32 channels in (latent 16 + the start image's latent 16).
TINY_COGVIDEOX15_I2V = dict(
    TINY_COGVIDEOX, attention_head_dim=32, in_channels=32, patch_size=2, patch_size_t=2, ofs_embed_dim=32,
    use_rotary_positional_embeddings=True,
)  # fmt: skip
TINY_COSMOS1 = {
    "image_model": "cosmos", "max_img_h": 64, "max_img_w": 64, "max_frames": 16, "in_channels": 16,
    "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 64, "block_config": "FA-CA-MLP",
    "concat_padding_mask": True, "num_blocks": 2, "num_heads": 2, "crossattn_emb_channels": 32,
    "pos_emb_cls": "rope3d", "pos_emb_learnable": False, "pos_emb_interpolation": "crop", "block_x_format": "THWBD",
    "affline_emb_norm": True, "use_adaln_lora": True, "adaln_lora_dim": 16, "extra_per_block_abs_pos_emb": True,
    "extra_per_block_abs_pos_emb_type": "learnable",
}  # fmt: skip
TINY_COSMOS_PREDICT2_I2V = dict(TINY_COSMOS_PREDICT2, in_channels=17)
# Mochi: its block asserts the visual MLP's width (1536 x 8 = 12288 = 64 x 192).
TINY_MOCHI = {
    "image_model": "mochi_preview", "depth": 2, "patch_size": 2, "num_heads": 2, "hidden_size_x": 64,
    "hidden_size_y": 32, "mlp_ratio_x": 192.0, "mlp_ratio_y": 2.0, "learn_sigma": False, "in_channels": 12,
    "qk_norm": True, "qkv_bias": False, "out_bias": True, "attn_drop": 0.0, "patch_embed_bias": True,
    "posenc_preserve_area": True, "timestep_mlp_bias": True, "attend_to_padding": False, "timestep_scale": 1000.0,
    "use_t5": True, "t5_feat_dim": 32, "t5_token_length": 256, "rope_theta": 10000.0,
}  # fmt: skip

# LTX-Video 0.9.x: width 64, 2 heads, 2 blocks, one token per latent pixel of its 128-channel latent.
TINY_LTXV = {
    "image_model": "ltxv", "in_channels": 128, "cross_attention_dim": 64, "attention_head_dim": 32,
    "num_attention_heads": 2, "caption_channels": 32, "num_layers": 2,
}  # fmt: skip


def video_last(tokens, video_tokens, context_tokens):
    """[text (and other condition tokens); video]: CogVideoX (joint attention)."""
    return tokens - video_tokens


def hunyuan_video_layout(tokens, video_tokens, context_tokens):
    """HunyuanVideo: the token refiner (the prompt's tokens only), then blocks over [SigLIP image (1.5); ByT5 (1.5);
    text; reference image ("custom" i2v); video]: the video tokens last."""
    return None if tokens == context_tokens else tokens - video_tokens


def kandinsky5_video_layout(tokens, video_tokens, context_tokens):
    """Kandinsky 5: text blocks (the text tokens only), then visual blocks (the video tokens only)."""
    return None if tokens == context_tokens else 0


def pooled(width):
    return lambda rows, generator: {"pooled_output": torch.randn(rows, width, generator=generator)}


def hunyuan_video15_conds(rows, generator):
    """HunyuanVideo 1.5's extra text-side inputs: SigLIP image states (6 tokens) and ByT5 glyph states (5)."""
    vision = types.SimpleNamespace(last_hidden_state=torch.randn(1, 6, 32, generator=generator))
    byt5 = torch.randn(1, 5, 1472, generator=generator)
    return {"pooled_output": None, "clip_vision_output": vision, "conditioning_byt5small": byt5}


def start_image(rows, generator):
    """An image-to-video start image (CogVideoX: its latent in the first frame of the concatenated channels)."""
    return {"concat_latent_image": torch.randn(1, 16, 1, 4, 4, generator=generator)}


def mochi_mask(rows, generator):
    """The T5 attention mask (5 of the prompt's 7 tokens valid): Mochi crops the text of its joint attention to
    the valid count."""
    return {"attention_mask": torch.tensor([[1] * 5 + [0] * (PROMPT_TOKENS - 5)])}


def ltxv_mask(rows, generator):
    """The T5 attention mask LTX-Video's forward takes (its text cross-attention's key mask)."""
    return {"attention_mask": torch.ones(1, PROMPT_TOKENS, dtype=torch.long)}


ENTRIES |= {
    "hunyuan_video": TinyVideoDiT(comfy.supported_models.HunyuanVideo, TINY_HUNYUAN_VIDEO, "HunyuanVideo",
                                  hunyuan_video_layout, 2, context_width=32, conds=pooled(32)),
    "hunyuan_video15": TinyVideoDiT(comfy.supported_models.HunyuanVideo15, TINY_HUNYUAN_VIDEO15, "HunyuanVideo",
                                    hunyuan_video_layout, 2, context_width=32, conds=hunyuan_video15_conds),
    "kandinsky5": TinyVideoDiT(comfy.supported_models.Kandinsky5, TINY_KANDINSKY5_VIDEO, "Kandinsky 5 Video",
                               kandinsky5_video_layout, 2, context_width=32, conds=pooled(32)),
    "cogvideox_t2v": TinyVideoDiT(comfy.supported_models.CogVideoX_T2V, TINY_COGVIDEOX, "CogVideoX", video_last, 2,
                                  context_width=32, init_std=0.2),
    "cogvideox15_i2v": TinyVideoDiT(comfy.supported_models.CogVideoX_I2V, TINY_COGVIDEOX15_I2V, "CogVideoX",
                                    video_last, 2, patch=(2, 2, 2), context_width=32, conds=start_image,
                                    init_std=0.2),
    "cosmos_predict2_i2v": TinyVideoDiT(comfy.supported_models.CosmosI2VPredict2, TINY_COSMOS_PREDICT2_I2V,
                                        "Cosmos Predict2 Video", video_only, 2, context_width=32),
    "cosmos1": TinyVideoDiT(comfy.supported_models.CosmosT2V, TINY_COSMOS1, "Cosmos 1", video_only, 2,
                            context_width=32),
    "mochi": TinyVideoDiT(comfy.supported_models.GenmoMochi, TINY_MOCHI, "Mochi", video_only, 2, context_width=32,
                          conds=mochi_mask),
    "ltxv": TinyVideoDiT(comfy.supported_models.LTXV, TINY_LTXV, "LTX-Video", video_only, 2, patch=(1, 1, 1),
                         context_width=32, conds=ltxv_mask),
}  # fmt: skip

# --- Wan 2.x variants (tiny_wan_variants): TINY_WAN plus each variant's config keys and conditioning ---
_WAN = comfy.supported_models
ENTRIES |= {
    "wan_fun_reference": TinyVideoDiT(_WAN.WAN21_FunControl2V, wan_variants.TINY_WAN_FUN_REFERENCE, "Wan 2.1 / 2.2",
                                      wan_variants.picture_frame_first, 2, conds=wan_variants.reference_picture_conds),
    "wan_vace": TinyVideoDiT(_WAN.WAN21_Vace, wan_variants.TINY_VACE, "Wan 2.1 VACE", video_only, 2,
                             conds=wan_variants.vace_conds, plain_self_call=wan_variants.vace_block_call),
    "wan21_camera": TinyVideoDiT(_WAN.WAN21_Camera, wan_variants.TINY_CAMERA21, "Wan Camera", video_only, 2,
                                 conds=wan_variants.camera_conds),
    "wan22_camera": TinyVideoDiT(_WAN.WAN22_Camera, wan_variants.TINY_CAMERA22, "Wan Camera", video_only, 2,
                                 conds=wan_variants.camera_conds),
    "wan_s2v": TinyVideoDiT(_WAN.WAN22_S2V, wan_variants.TINY_S2V, "Wan 2.2 S2V", video_only, 2,
                            conds=wan_variants.s2v_conds),
    "wan_humo": TinyVideoDiT(_WAN.WAN21_HuMo, wan_variants.TINY_HUMO, "Wan HuMo", video_only, 2,
                             conds=wan_variants.humo_conds),
    "wan_animate": TinyVideoDiT(_WAN.WAN22_Animate, wan_variants.TINY_ANIMATE, "Wan 2.2 Animate",
                                wan_variants.picture_frame_first, 2, conds=wan_variants.animate_conds,
                                picture_frames=1),
    "wan_scail": TinyVideoDiT(_WAN.WAN21_SCAIL, wan_variants.TINY_SCAIL, "Wan SCAIL",
                              wan_variants.picture_frame_first, 2, conds=wan_variants.scail_conds),
    "wan_scail2": TinyVideoDiT(_WAN.WAN21_SCAIL2, wan_variants.TINY_SCAIL2, "Wan SCAIL",
                               wan_variants.picture_frame_first, 2, conds=wan_variants.scail2_conds),
    "wandancer": TinyVideoDiT(_WAN.WAN22_WanDancer, wan_variants.TINY_WANDANCER, "WanDancer", video_only, 2,
                              conds=wan_variants.wandancer_conds),
}  # fmt: skip


def tiny_video_dit(name: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around the tiny real video DiT of entry ``name`` (float32)."""
    entry = ENTRIES[name]
    model_config = entry.config_class(dict(entry.config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_weights_(model, seed, std=entry.init_std)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())
