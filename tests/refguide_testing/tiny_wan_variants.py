"""Tiny Wan 2.x variants from ComfyUI's own configuration classes: toy configs (``tiny_wan.TINY_WAN`` plus each
variant's config keys) and the conditioning their ComfyUI nodes would hand the model (random tensors).

Sizes fixed by the model classes themselves stay as they are (HuMo's audio projection reads 8 x 5 x 1280 audio
features, Animate's motion encoder 512 x 512 face crops, the CLIP-image projection 1280-wide states). The
conditioning fits the family tests' clip: ``FRAMES`` latent frames of ``SIZE`` x ``SIZE`` (2 x 2 tokens a frame).
"""

from __future__ import annotations

import types

import comfy.model_management as mm
import comfy.model_patcher
import torch

from .tiny_dits import init_weights_
from .tiny_wan import TINY_WAN

FRAMES, SIZE = 3, 4  # tests/host/test_temporal_families.py's clip

TINY_WAN_FUN_REFERENCE = dict(TINY_WAN, model_type="i2v", in_dim=48, in_dim_ref_conv=16)  # Fun 1.1: ref_conv
TINY_VACE = dict(TINY_WAN, model_type="vace", vace_layers=1, vace_in_dim=96)  # control 16+16, mask 64 channels
TINY_CAMERA21 = dict(TINY_WAN, model_type="camera", in_dim=32)
TINY_CAMERA22 = dict(TINY_WAN, model_type="camera_2.2", in_dim=36)
TINY_S2V = dict(TINY_WAN, model_type="s2v", audio_dim=16, audio_inject_layers=[0, 1])
TINY_HUMO = dict(TINY_WAN, model_type="humo")  # the 1.7B layout: no concat channels
TINY_ANIMATE = dict(TINY_WAN, model_type="animate", in_dim=36)  # num_layers // 5 = 0 face adapter blocks
TINY_SCAIL = dict(TINY_WAN, model_type="scail", in_dim=20)
TINY_SCAIL2 = dict(TINY_WAN, model_type="scail2", in_dim=20)
TINY_WANDANCER = dict(TINY_WAN, model_type="wandancer", in_dim=36, audio_inject_layers=[0], music_dim=16,
                      music_heads=2, music_latent_dim=16)  # fmt: skip
TINY_CAUSAL_AR = dict(TINY_WAN, causal_ar=True)


def picture_frame_first(tokens, video_tokens, context_tokens):
    """[one reference picture frame; video; ...]: the video starts one latent frame (its tokens) in."""
    return video_tokens // FRAMES


def vace_block_call(block_index, n):
    """VaceWanModel runs VACE block ``vace_layers_mapping[i]`` after main block i, with the same block_index: every
    self-attention of a block index after its first is a VACE block's."""
    return n > 0


def latent(generator, channels=16, frames=FRAMES, size=SIZE):
    return torch.randn(1, channels, frames, size, size, generator=generator)


def clip_vision(generator):
    """CLIPVisionEncode's output as the Wan nodes pass it (257 penultimate ViT-H states, 1280 wide)."""
    return types.SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 1280, generator=generator))


def reference_picture_conds(rows, generator):
    """A reference picture (``reference_latents``: one latent frame) as the Wan nodes set it."""
    return {"reference_latents": [latent(generator, frames=1)]}


def vace_conds(rows, generator):
    """WanVaceToVideo: one control video (inactive + reactive latents, 32 channels), its mask, its strength."""
    return {"vace_frames": [latent(generator, 32)], "vace_mask": [torch.ones(1, 64, FRAMES, SIZE, SIZE)],
            "vace_strength": [0.2]}  # fmt: skip


def camera_conds(rows, generator):
    """WanCameraImageToVideo: Plücker embeddings (24 channels) at pixel size (8x the latent); scaled down so that the
    tiny adapter's random weights do not drown the video tokens."""
    return {"camera_conditions": 0.1 * torch.randn(1, 24, FRAMES, SIZE * 8, SIZE * 8, generator=generator)}


def s2v_conds(rows, generator):
    """WanSoundImageToVideo: audio features (25 encoder layers x audio_dim x 4 per latent frame), a reference."""
    return {"audio_embed": torch.randn(1, 25, 16, 4 * FRAMES, generator=generator),
            "reference_latents": [latent(generator, frames=1)]}  # fmt: skip


def s2v_motion_conds(rows, generator, size=8):
    """S2V with FramePack motion latents (``reference_motion``; its 4x-compressed bucket needs an 8x8 latent)."""
    return {"audio_embed": torch.randn(1, 25, 16, 4 * FRAMES, generator=generator),
            "reference_latents": [latent(generator, frames=1, size=size)],
            "reference_motion": latent(generator, frames=5, size=size)}  # fmt: skip


def humo_conds(rows, generator):
    """WanHuMoImageToVideo: audio (per latent frame 8 windows x 5 layers x 1280) and a reference picture."""
    return {"audio_embed": torch.randn(1, FRAMES, 8, 5, 1280, generator=generator),
            "reference_latents": [latent(generator, frames=1)]}  # fmt: skip


def animate_conds(rows, generator):
    """WanAnimateToVideo: pose latents of the video frames (added from latent frame 1 on)."""
    return {"pose_video_latent": latent(generator)}


def scail_conds(rows, generator):
    """SCAIL: a reference picture (one latent frame in front of the video) and half-size pose latents."""
    return {"reference_latents": [latent(generator, frames=1)], "pose_video_latent": latent(generator, size=SIZE // 2)}


def scail2_conds(rows, generator):
    """SCAIL-2 in replacement mode: plus the identity masks of the reference and video frames (28 channels)."""
    masks = torch.rand(1, 1 + FRAMES, 28, SIZE, SIZE, generator=generator)
    return dict(scail_conds(rows, generator), ref_mask_28ch=masks, ref_mask_flag=False)


def wandancer_conds(rows, generator):
    """WanDancer: the CLIP image of the start frame (its i2v cross-attention needs image tokens)."""
    return {"clip_vision_output": clip_vision(generator)}


def tiny_wan_variant(config_class, config: dict, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher around ComfyUI's model of ``config_class`` built from the toy ``config`` (float32)."""
    model_config = config_class(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_weights_(model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())
