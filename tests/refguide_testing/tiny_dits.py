"""Tiny diffusion transformers built from ComfyUI's own model classes (random weights, seconds on a CPU).

``tiny_dit(name)`` -> ModelPatcher around comfy.supported_models.<Class>(config).get_model({}), float32,
weights from a fixed generator (std ~0.1 for matrices, so attention choices are visible).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
# Flux 2 (dev): ComfyUI's Flux class with model_detection's Flux 2 parameters (128 latent channels, patch 1, global
# modulation, SiLU-gated MLP, no biases, no pooled vector, 4 rotary axes) at width 64, 2 heads (axes 4 x 8 = 32).
TINY_FLUX2 = {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": 32,
    "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True,
    "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
    "default_ref_method": "index", "ref_index_scale": 10.0,
}  # fmt: skip
TINY_FLUX2_KLEIN = dict(TINY_FLUX2, guidance_embed=False)  # Klein: the same configuration class, no guidance embed
# For the Flux 2 workflow on a CPU (4096 image + 512 text tokens a row at 1024x1024): width 32, one head, one
# double-stream block.
TINY_FLUX2_LIGHT = dict(TINY_FLUX2, hidden_size=32, num_heads=1, depth=1, depth_single_blocks=0)
# LongCat-Image: the Flux class without guidance or pooled vector, text positions on rotary axes 1 and 2.
TINY_LONGCAT_IMAGE = dict(TINY_FLUX, guidance_embed=False, vec_in_dim=None, txt_ids_dims=[1, 2])
# Chroma Radiance (pixel space, 3 channels): patch 2 here (16 in the released model) keeps the images small.
TINY_CHROMA_RADIANCE = dict(
    TINY_CHROMA, image_model="chroma_radiance", in_channels=3, out_channels=3, nerf_hidden_size=16,
    nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=2, nerf_tile_size=0, nerf_final_head_type="linear",
    nerf_embedder_dtype=None, use_x0=False, use_sequential_txt_ids=False,
)  # fmt: skip
# Z-Image pixel space (NextDiTPixelSpace, 3 channels): patch 2 here, a small per-patch decoder.
TINY_ZIMAGE_PIXEL = dict(
    TINY_ZIMAGE, image_model="zimage_pixel", in_channels=3, decoder_hidden_size=32, decoder_num_res_blocks=1,
    decoder_max_freqs=2,
)  # fmt: skip
# MageFlow: Qwen-Image blocks at patch 1 on Flux 2's 128-channel latents; width 64, 2 heads.
TINY_MAGE_FLOW = {
    "image_model": "mage_flow", "in_channels": 128, "out_channels": 128, "num_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (8, 12, 12),
}  # fmt: skip
# Anima: Cosmos Predict2's MiniTrainDIT (+ ComfyUI's fixed-size LLM adapter, not run here: the conditioning gives
# the DiT's text input directly).
TINY_ANIMA = dict(TINY_COSMOS_PREDICT2, image_model="anima")

# AuraFlow: width 64, 2 heads, 1 double (joint) + 1 single layer, text width 32, an 8 x 8 positional table.
TINY_AURAFLOW = {
    "in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 2, "n_double_layers": 1,
    "n_heads": 2, "global_conddim": 64, "cond_seq_dim": 32, "max_seq": 64,
}  # fmt: skip
# OmniGen2 / Boogu: width 64, 2 query heads sharing 1 key/value head (grouped-query attention, as the real ones),
# one refiner of each kind, 2 layers (Boogu: 1 double-stream + 1 single-stream layer), text width 32.
TINY_OMNIGEN2 = {
    "image_model": "omnigen2", "patch_size": 2, "in_channels": 16, "hidden_size": 64, "num_layers": 2,
    "num_refiner_layers": 1, "num_attention_heads": 2, "num_kv_heads": 1, "multiple_of": 16,
    "axes_dim_rope": (8, 12, 12), "axes_lens": (300, 64, 64), "text_feat_dim": 32,
}  # fmt: skip
TINY_BOOGU = {
    "image_model": "boogu", "patch_size": 2, "in_channels": 16, "hidden_size": 64, "num_layers": 1,
    "num_double_stream_layers": 1, "num_refiner_layers": 1, "num_attention_heads": 2, "num_kv_heads": 1,
    "multiple_of": 16, "axes_dim_rope": (8, 12, 12), "axes_lens": (300, 64, 64), "instruction_feat_dim": 32,
}  # fmt: skip
# PixelDiT (pixel space, 3 channels): 2 x 2 pixel patches, width 64, 2 heads, 2 patch blocks + 1 pixel block.
TINY_PIXELDIT = {
    "image_model": "pixeldit_t2i", "in_channels": 3, "num_groups": 2, "hidden_size": 64, "pixel_hidden_size": 8,
    "pixel_attn_hidden_size": 32, "pixel_num_groups": 2, "patch_depth": 2, "pixel_depth": 1, "patch_size": 2,
    "txt_embed_dim": 32, "txt_max_length": 16,
}  # fmt: skip
# Kandinsky 5 image: width 64, 2 heads (axes 8+12+12 = 32 per head), 1 text block + 2 visual blocks, text width 32,
# pooled width 32 (visual_embed_dim 64 = 16 channels x 1x2x2 patch).
TINY_KANDINSKY5_IMAGE = {
    "image_model": "kandinsky5", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": 32, "in_text_dim2": 32,
    "time_dim": 32, "model_dim": 64, "ff_dim": 128, "visual_embed_dim": 64, "patch_size": (1, 2, 2),
    "num_text_blocks": 1, "num_visual_blocks": 2, "axes_dims": (8, 12, 12),
}  # fmt: skip
# Lens: width 64, 2 heads, 2 dual-stream blocks; 4 text-encoder layers of width 8 (context width 32).
TINY_LENS = {
    "image_model": "lens", "patch_size": 2, "in_channels": 128, "out_channels": 32, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": 2, "enc_hidden_dim": 8, "axes_dims_rope": (8, 12, 12),
}  # fmt: skip
# JoyImage: width 64, 2 heads, 2 blocks, text width 32 (rope_dim_list 8+12+12 = 32 per head: tiny_dit lets the tiny
# sizes win over the configuration's unet_extra_config, which fixes the real 16+56+56).
TINY_JOYIMAGE = {
    "image_model": "joyimage", "patch_size": [1, 2, 2], "in_channels": 16, "hidden_size": 64,
    "num_attention_heads": 2, "text_dim": 32, "mlp_width_ratio": 2.0, "num_layers": 2, "rope_dim_list": [8, 12, 12],
}  # fmt: skip
# Krea 2: width 64, 2 query heads sharing 1 key/value head, 2 blocks; text fusion over 2 encoder layers of width 16
# (context width 32), its 2 layerwise + 2 refiner blocks are fixed by the model.
TINY_KREA2 = {
    "image_model": "krea2", "features": 64, "tdim": 32, "txtdim": 16, "heads": 2, "kvheads": 1, "multiplier": 2,
    "layers": 2, "patch": 2, "channels": 16, "txtlayers": 2, "txtheads": 2, "txtkvheads": 2,
}  # fmt: skip
# Ideogram 4: width 64, 2 heads of 32 (MRoPE sections 6+5+5 = 16 pairs), 2 layers, text features 32 (the real
# widths come from unet_extra_config; tiny_dit lets these win).
TINY_IDEOGRAM4 = {
    "image_model": "ideogram4", "in_channels": 128, "num_layers": 2, "num_attention_heads": 2,
    "attention_head_dim": 32, "intermediate_size": 128, "adaln_dim": 32, "llm_features_dim": 32, "rope_theta": 10000,
    "mrope_section": [6, 5, 5], "norm_eps": 1e-5,
}  # fmt: skip

# HiDream I1 / E1: width 64, 2 heads of 32 (rope axes 16+8+8), 2 double-stream + 2 single-stream blocks with
# 2-expert MoE feed-forwards; T5 (context) and Llama widths 32, 2 Llama layers (llama_layers: one per block).
TINY_HIDREAM = {
    "image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
    "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2, "caption_channels": [32, 32],
    "text_emb_dim": 32, "num_routed_experts": 2, "num_activated_experts": 2, "axes_dims_rope": [16, 8, 8],
    "max_resolution": [32, 32], "llama_layers": [0, 1, 1, 1],
}  # fmt: skip
HIDREAM_LLAMA_LAYERS, HIDREAM_LLAMA_TOKENS = 2, 5
# HunyuanImage 2.1 (ComfyUI's HunyuanVideo class, 2-D 1x1 patches, 64-channel latent): width 64, 2 heads,
# 2 double + 2 single blocks (and the model's fixed 2 token-refiner blocks), no ByT5 mapper (7M parameters).
TINY_HUNYUAN_IMAGE21 = {
    "image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64, "vec_in_dim": None,
    "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 2,
    "depth_single_blocks": 2, "axes_dim": [16, 16], "theta": 256, "patch_size": [1, 1], "qkv_bias": True,
    "guidance_embed": False, "byt5": False, "meanflow": False, "use_cond_type_embedding": False,
    "vision_in_dim": None, "meanflow_sum": False,
}  # fmt: skip


def text_then_image(tokens, image_count, context_tokens, multiple=None):
    """[text (the conditioning's tokens); image; appended tokens]: Flux, Chroma, Qwen-Image."""
    return context_tokens


def flux2_text_then_image(tokens, image_count, context_tokens, multiple=None):
    """Flux 2: model_base.Flux2.extra_conds pads the text to at least 512 tokens (zeros in front); [text; image]."""
    return max(context_tokens, 512)


def image_last(tokens, image_count, context_tokens, multiple=None):
    """[context; image]: SD3's joint attention and SD3.5 Medium's image-only one."""
    return tokens - image_count


def image_only(tokens, image_count, context_tokens, multiple=None):
    return 0


def lumina_layout(tokens, image_count, context_tokens, multiple=None):
    """Lumina 2 / Z-Image: caption refiner (caption only, padded), noise refiner (image, padded), layers
    [caption (padded); image (padded)]: the image tokens are the last padded block."""
    multiple = multiple or 1
    if tokens == -(-context_tokens // multiple) * multiple:
        return None  # the context refiner: caption tokens only
    return tokens - -(-image_count // multiple) * multiple


def omnigen_layout(tokens, image_count, context_tokens, multiple=None):
    """OmniGen2 / Boogu: context refiner (text only), noise refiner (image only), then [text; image]."""
    return None if tokens == context_tokens else tokens - image_count


# image_start's answer for a call that is not one image's self-attention: it must run as the unpatched model.
PLAIN = "plain"


def kandinsky5_layout(tokens, image_count, context_tokens, multiple=None):
    """Kandinsky 5: text blocks (the text tokens only), visual blocks (the image tokens only)."""
    return None if tokens == context_tokens and tokens != image_count else 0


def image_first(tokens, image_count, context_tokens, multiple=None):
    """[image; reference images; text]: Lens, JoyImage (the image tokens first)."""
    return 0


def krea2_layout(tokens, image_count, context_tokens, multiple=None):
    """Krea 2: text fusion attention across the encoder layers (txtlayers tokens, B x text-tokens rows: not one
    image's sequence, plain), its refiner (the text tokens only), then blocks [text; image; reference images]."""
    if tokens == TINY_KREA2["txtlayers"]:
        return PLAIN
    return None if tokens == context_tokens else context_tokens


def padded_prompt_mask(rows, generator):
    """An 8-token prompt whose last 2 tokens are padding (the text encoder's attention mask)."""
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[:, -2:] = 0
    return {"attention_mask": mask}


def prompt_mask(rows, generator):
    """The text encoder's attention mask of an 8-token prompt (the host tests' prompts): OmniGen2 and Boogu read
    the prompt length (num_tokens) from it."""
    return {"attention_mask": torch.ones(1, 8, dtype=torch.long)}


def hunyuan_image_layout(tokens, image_count, context_tokens, multiple=None):
    """HunyuanImage 2.1: the token refiner attends over the prompt only; the blocks over [prompt; image]."""
    return None if tokens == context_tokens else tokens - image_count


def hidream_llama(rows, generator):
    """HiDream's Llama hidden states (rows, layers, tokens, width): the conditioning_llama3 of its text encoder."""
    llama = torch.randn(rows, HIDREAM_LLAMA_LAYERS, HIDREAM_LLAMA_TOKENS, 32, generator=generator)
    return {"conditioning_llama3": llama}


@dataclass(frozen=True)
class TinyDiT:
    """A tiny real instance of one family, and what the family-parametrized tests need to know about it, written
    from the model's code (independently of the pack's family table).

    ``image_start(tokens, image_count, context_tokens, multiple)``: where the image tokens of a self-attention call
    of ``tokens`` tokens start (None: a call without image tokens). ``self_calls``: self-attention calls per
    forward. ``conds(rows, generator)``: the extra conditioning a text encoder would hand the model (pooled output,
    attention masks, ...). ``five_d``: latents (B, C, T, H, W). ``family``: the pack's family name for it.
    """

    config_class: type
    config: dict
    family: str
    image_start: Callable
    self_calls: int
    five_d: bool = False
    pooled: int | None = None
    context_width: int = 32
    video_vae: bool = False  # its checkpoints come with a 3-D (Wan 2.1) VAE
    conds: Callable | None = None
    pads_latent: bool = True  # the model pads odd latents up to whole patches (Cosmos does not)
    patch: int = 2  # latent pixels per token side (height and width)

    @property
    def latent_channels(self) -> int:
        return self.config_class.latent_format().latent_channels

    def conditioning_extras(self, rows: int, generator: torch.Generator) -> dict:
        extras = {}
        if self.pooled:
            extras["pooled_output"] = torch.randn(rows, self.pooled, generator=generator)
        if self.conds is not None:
            extras.update(self.conds(rows, generator))
        return extras


ENTRIES: dict[str, TinyDiT] = {
    "flux": TinyDiT(comfy.supported_models.Flux, TINY_FLUX, "Flux", text_then_image, 4, pooled=64),
    "chroma": TinyDiT(comfy.supported_models.Chroma, TINY_CHROMA, "Chroma", text_then_image, 4),
    "qwen_image": TinyDiT(comfy.supported_models.QwenImage, TINY_QWEN_IMAGE, "Qwen-Image", text_then_image, 2,
                          five_d=True, video_vae=True),
    "lumina2": TinyDiT(comfy.supported_models.Lumina2, TINY_LUMINA2, "Lumina 2 / Z-Image", lumina_layout, 6),
    "zimage": TinyDiT(comfy.supported_models.ZImage, TINY_ZIMAGE, "Lumina 2 / Z-Image", lumina_layout, 6),
    "sd3": TinyDiT(comfy.supported_models.SD3, TINY_SD3, "SD3 / SD3.5", image_last, 3, pooled=32),
    "cosmos_predict2": TinyDiT(comfy.supported_models.CosmosT2IPredict2, TINY_COSMOS_PREDICT2, "Cosmos Predict2",
                               image_only, 2, five_d=True, video_vae=True, pads_latent=False),
    "flux2": TinyDiT(comfy.supported_models.Flux2, TINY_FLUX2, "Flux 2", flux2_text_then_image, 4, patch=1),
    "longcat_image": TinyDiT(comfy.supported_models.LongCatImage, TINY_LONGCAT_IMAGE, "LongCat-Image",
                             text_then_image, 4),
    "chroma_radiance": TinyDiT(comfy.supported_models.ChromaRadiance, TINY_CHROMA_RADIANCE, "Chroma Radiance",
                               text_then_image, 4),
    "zimage_pixel": TinyDiT(comfy.supported_models.ZImagePixelSpace, TINY_ZIMAGE_PIXEL, "Z-Image pixel space",
                            lumina_layout, 6),
    "mage_flow": TinyDiT(comfy.supported_models.MageFlow, TINY_MAGE_FLOW, "MageFlow", text_then_image, 2, patch=1),
    "anima": TinyDiT(comfy.supported_models.Anima, TINY_ANIMA, "Anima", image_only, 2, five_d=True, video_vae=True,
                     pads_latent=False),
    "auraflow": TinyDiT(comfy.supported_models.AuraFlow, TINY_AURAFLOW, "AuraFlow", image_last, 2),
    "omnigen2": TinyDiT(comfy.supported_models.Omnigen2, TINY_OMNIGEN2, "OmniGen2", omnigen_layout, 4,
                        conds=prompt_mask),
    "boogu": TinyDiT(comfy.supported_models.Boogu, TINY_BOOGU, "Boogu", omnigen_layout, 5, conds=prompt_mask),
    "pixeldit": TinyDiT(comfy.supported_models.PixelDiTT2I, TINY_PIXELDIT, "PixelDiT", image_last, 3),
    "kandinsky5_image": TinyDiT(comfy.supported_models.Kandinsky5Image, TINY_KANDINSKY5_IMAGE, "Kandinsky 5 Image",
                                kandinsky5_layout, 3, pooled=32, pads_latent=False),  # pads, never crops back
    "lens": TinyDiT(comfy.supported_models.Lens, TINY_LENS, "Lens", image_first, 2, conds=padded_prompt_mask,
                    patch=1),
    "joyimage": TinyDiT(comfy.supported_models.JoyImage, TINY_JOYIMAGE, "JoyImage", image_first, 2, five_d=True,
                        video_vae=True),
    "krea2": TinyDiT(comfy.supported_models.Krea2, TINY_KREA2, "Krea 2", krea2_layout, 4, five_d=True,
                     video_vae=True),
    "ideogram4": TinyDiT(comfy.supported_models.Ideogram4, TINY_IDEOGRAM4, "Ideogram 4", text_then_image, 2,
                         patch=1),
    "hidream": TinyDiT(comfy.supported_models.HiDream, TINY_HIDREAM, "HiDream", image_first, 4, pooled=32,
                       conds=hidream_llama),
    "hunyuan_image21": TinyDiT(comfy.supported_models.HunyuanImage21, TINY_HUNYUAN_IMAGE21, "HunyuanImage 2.1",
                               hunyuan_image_layout, 6, patch=1),
}  # fmt: skip
# Light stand-ins for whole workflows at real sizes (not in the family-parametrized tests).
LIGHT: dict[str, tuple[type, dict]] = {
    "flux_light": (comfy.supported_models.Flux, TINY_FLUX_LIGHT),
    "flux2_light": (comfy.supported_models.Flux2, TINY_FLUX2_LIGHT),
}
CLASSES = {name: (entry.config_class, entry.config) for name, entry in ENTRIES.items()} | LIGHT


def init_weights_(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Norm weights ~1, biases small, matrices (and buffers left uninitialised, e.g. SD3's pos_embed) N(0, std^2);
    the noise schedule (``model_sampling``'s sigmas) is left as the model made it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point() or name.startswith("model_sampling."):
                continue  # the noise schedule (sigmas) is the model's own
            if tensor.ndim == 1 and (name.endswith("weight") or name.endswith("scale")):
                tensor.copy_(1.0 + 0.05 * torch.randn(tensor.shape, generator=generator))
            elif tensor.ndim <= 1:
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(std * torch.randn(tensor.shape, generator=generator))
    return module


def tiny_dit(name: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around a tiny real ComfyUI DiT: a name of :data:`ENTRIES` or :data:`LIGHT`."""
    cls, config = CLASSES[name]
    model_config = cls(dict(config))
    model_config.unet_config.update(config)  # the tiny sizes win over unet_extra_config (Ideogram 4's real widths)
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


def tiny_flux2_vae(seed: int = 2):
    """A real comfy.sd.VAE shaped like Flux 2's: AutoencoderKL with 32 latent channels and the batch-norm latent
    (2x2 patches -> 128 channels, 16x down-sampling), at toy width. ComfyUI's loader sets latent_channels and the
    ratios from the state dict ('bn.running_mean'); the toy config path needs them set as it sets them."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from refguide_testing.tiny_models import TINY_VAE_DDCONFIG, init_module_

    ddconfig = dict(TINY_VAE_DDCONFIG, z_channels=32, batch_norm_latent=True)
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 32}}
    model = init_module_(AutoencoderKL(**config["params"]), seed, scale=0.5)
    generator = torch.Generator().manual_seed(seed)
    model.bn.running_mean.copy_(0.1 * torch.randn(model.bn.running_mean.shape, generator=generator))
    model.bn.running_var.copy_(0.5 + torch.rand(model.bn.running_var.shape, generator=generator))
    vae = comfy.sd.VAE(sd=model.state_dict(), config=config)
    vae.latent_channels, vae.downscale_ratio, vae.upscale_ratio = 128, 16, 16
    return vae


def tiny_hunyuan_image_vae(seed: int = 2):
    """A real comfy.sd.VAE with HunyuanImage 2.1's latent: 64 channels, 32x down-sampling (AutoencoderKL with five
    down-samplings, at toy width). ComfyUI builds its own HunyuanImage 2.1 VAE class only at the full width (a
    fixed config in comfy.sd.VAE), so the toy stands in with the same latent; the ratios are set as ComfyUI sets
    them for that VAE."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from refguide_testing.tiny_models import TINY_VAE_DDCONFIG, init_module_

    ddconfig = dict(TINY_VAE_DDCONFIG, z_channels=64, ch_mult=[1, 1, 1, 1, 1, 1])
    config = {"params": {"ddconfig": ddconfig, "embed_dim": 64}}
    state_dict = init_module_(AutoencoderKL(**config["params"]), seed, scale=0.5).state_dict()
    vae = comfy.sd.VAE(sd=state_dict, config=config)
    vae.latent_channels, vae.downscale_ratio, vae.upscale_ratio = 64, 32, 32
    return vae


def tiny_dit_vae(name: str, seed: int = 2):
    """The VAE a tiny DiT's checkpoint would come with: ComfyUI's Wan 2.1 VAE class (3-D, 16 channels) for
    Qwen-Image and Cosmos Predict2, else the 16-channel image AutoencoderKL of :func:`tiny_flux_vae`."""
    if name in ENTRIES and ENTRIES[name].video_vae:
        from refguide_testing.tiny_wan import tiny_wan_vae

        return tiny_wan_vae(seed)
    if name in ENTRIES and ENTRIES[name].config_class.latent_format.spacial_downscale_ratio == 1:
        import comfy.sd

        return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})  # pixel-space models: ComfyUI's pixel "VAE"
    if name in ENTRIES and ENTRIES[name].config_class.latent_format.latent_channels == 128:  # Flux 2, MageFlow
        return tiny_flux2_vae(seed)
    if name in ENTRIES and ENTRIES[name].config_class.latent_format.spacial_downscale_ratio == 32:  # HunyuanImage 2.1
        return tiny_hunyuan_image_vae(seed)
    if name in ENTRIES and ENTRIES[name].latent_channels == 4:  # AuraFlow: SDXL's 4-channel AutoencoderKL
        from refguide_testing.tiny_models import tiny_vae

        return tiny_vae(seed)
    return tiny_flux_vae(seed)
