"""The older / other image configurations of ComfyUI's comfy.supported_models: AuraFlow, OmniGen2, Boogu and PixelDiT
are supported (block names here; guidance in the family-parametrized tests through ``tiny_dits.ENTRIES``); PixArt,
HunyuanDiT, Stable Cascade, PiD and the SD x4 upscaler are refused, and the reason each refusal gives is checked
against the model's own behaviour (tiny real instances, random weights)."""

from __future__ import annotations

import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import pytest
import torch
from comfy.ldm.modules.attention import BasicTransformerBlock
from refguide.comfy_patches import coverage
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY
from refguide.comfy_patches.model_families import IMAGE_DIT, model_family
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import tiny_dits


def apply_refdrop(model, strength=0.4, reference_count=1, exclude_blocks=""):
    return ApplyRefDrop.execute(model, strength, reference_count, False, "", exclude_blocks).args[0]


class CallRecorder:
    """An override set before the pack's: records every plain call (q tokens, k tokens) and how many extra
    (reference) attentions the pack computed after it."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        q, k = args[0], args[1]
        axis = 2 if kwargs.get("skip_reshape") else 1
        if options.get(EXTRA_CALL_KEY):
            self.calls[-1]["extras"] += 1
        else:
            self.calls.append({"q": q.shape[axis], "k": k.shape[axis], "extras": 0})
        return func(*args, **kwargs)


def recorded(model):
    base = model.clone()
    recorder = CallRecorder()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = recorder
    return base, recorder


def sample(name, model, batch=3, size=(11, 13), extras=None):
    """One euler step of ComfyUI's sampler on a (batch, C, *size) latent with 8-token prompts."""
    entry = tiny_dits.ENTRIES[name]
    g = torch.Generator().manual_seed(1)
    shape = (batch, entry.latent_channels, *size)
    conds = entry.conditioning_extras(batch, g) | (extras or {})
    positive = [[torch.randn(batch, 8, entry.context_width, generator=g), conds]]
    negative = [[torch.randn(1, 8, entry.context_width, generator=g), dict(conds)]]
    noise = torch.randn(shape, generator=g)
    return comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, negative, torch.zeros(shape), seed=3,
                               disable_pbar=True)  # fmt: skip


def guided_per_call(name, exclude_blocks="", extras=None):
    """(q tokens, extra attentions) of every plain attention call of one forward, in the model's order."""
    model = tiny_dits.tiny_dit(name, seed=1)
    base, recorder = recorded(model)
    sample(name, apply_refdrop(base, exclude_blocks=exclude_blocks), extras=extras)
    return [(call["q"], call["extras"]) for call in recorder.calls]


# 11 x 13 latent -> 6 x 7 = 42 image tokens; 8 prompt tokens.
IMAGE = 42

BLOCKS = {
    "auraflow": (["double 0", "single 0"], "double 0", [(8 + 8 + IMAGE, 0), (8 + 8 + IMAGE, 1)]),  # + 8 registers
    "pixeldit": (["patch 0", "patch 1", "pixel 0"], "patch 1", [(8 + IMAGE, 1), (8 + IMAGE, 0), (IMAGE, 1)]),
    "omnigen2": (
        ["context refiner 0", "noise refiner 0", "reference refiner 0", "layer 0", "layer 1"],
        "context refiner 0, layer 1",
        [(8, 0), (IMAGE, 1), (8 + IMAGE, 1), (8 + IMAGE, 0)],
    ),
    "boogu": (
        ["context refiner 0", "noise refiner 0", "reference refiner 0", "double 0", "single 0"],
        "double 0",
        [(8, 1), (IMAGE, 1), (8 + IMAGE, 0), (IMAGE, 0), (8 + IMAGE, 1)],  # double 0: joint, then image-only
    ),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_exclude_blocks_uses_the_model_names(name):
    names, excluded, expected = BLOCKS[name]
    model = tiny_dits.tiny_dit(name)
    family = model_family(model)
    assert family.kind == IMAGE_DIT and list(family.block_names) == names
    assert guided_per_call(name, exclude_blocks=excluded) == expected  # the excluded blocks run plain
    assert all(extras == 1 for _, extras in guided_per_call(name))  # every self-attention call otherwise
    with pytest.raises(ValueError, match=rf"'output 0'.*Valid names: {re.escape(', '.join(names))}\."):
        apply_refdrop(model, exclude_blocks="output 0")


# With an edit's reference latent (8 x 8 latent = 16 tokens): (q tokens, extra attentions) of each call.
REFS, JOINT = 16, 8 + 16 + IMAGE
EDIT_PLAN = {
    "omnigen2": [(8, 1), (IMAGE, 1), (REFS, 1), (JOINT, 1), (JOINT, 1)],
    "boogu": [(8, 1), (IMAGE, 1), (REFS, 1), (JOINT, 1), (REFS + IMAGE, 1), (JOINT, 1)],
}


def edit_latent():
    return {"reference_latents": [torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))]}


@pytest.mark.parametrize("name", list(EDIT_PLAN))
def test_edit_reference_latents_add_the_reference_refiner_and_stay_part_of_the_row(name):
    """With reference latents (an edit's input picture) the reference-image refiner runs after the noise refiner,
    and every later call carries [text; reference tokens; image]: all guided, named by their blocks."""
    assert guided_per_call(name, extras=edit_latent()) == EDIT_PLAN[name]
    excluded = [(tokens, 0 if tokens == REFS else extras) for tokens, extras in EDIT_PLAN[name]]
    assert guided_per_call(name, exclude_blocks="reference refiner 0", extras=edit_latent()) == excluded


def test_edit_reference_latents_are_guided_on_the_real_sampler():
    """OmniGen2 with an edit's reference latent: the reference row is unchanged, the others are guided."""
    references = edit_latent()
    model = tiny_dits.tiny_dit("omnigen2", seed=2)
    plain = sample("omnigen2", model, extras=references)
    guided = sample("omnigen2", apply_refdrop(model), extras=references)
    torch.testing.assert_close(guided[0], plain[0], rtol=1e-5, atol=1e-5)
    assert (guided[1:] - plain[1:]).abs().mean() > 1e-4 * plain.abs().mean()


@pytest.mark.parametrize("name", list(EDIT_PLAN))
def test_reference_pictures_with_an_edit_reference_latent(name):
    """Apply RefDrop (Reference Image) with an edit's reference latent: the picture rows get the edit latent too
    (a per-row input), every self-attention call of the generated rows is guided once, the result changes."""
    references = edit_latent()
    model = tiny_dits.tiny_dit(name, seed=2)
    base, recorder = recorded(model)  # set before the node: the pack chains it
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    patched = ApplyRefDropImage.execute(base, tiny_dits.tiny_dit_vae(name), image, 0.4, 0, False, "").args[0]
    plain, guided = sample(name, model, extras=references), sample(name, patched, extras=references)
    assert torch.isfinite(guided).all() and (guided - plain).abs().mean() > 1e-4 * plain.abs().mean()
    assert [(c["q"], c["extras"]) for c in recorder.calls] == EDIT_PLAN[name]  # each call guided once


# ---- refused configurations: tiny real instances -------------------------------------------------------------

TINY_PIXART = {
    "input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 96, "depth": 1, "num_heads": 2,
    "caption_channels": 32, "model_max_length": 8,
}  # fmt: skip
TINY_HYDIT = {
    "input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2, "num_heads": 2,
    "text_states_dim": 32, "text_states_dim_t5": 32, "text_len": 8, "text_len_t5": 8,
}  # fmt: skip
TINY_CASCADE_C = {
    "stable_cascade_stage": "c", "c_in": 16, "c_out": 16, "c_r": 16, "c_cond": 32, "c_hidden": [32, 32],
    "nhead": [2, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]], "level_config": ["CTA", "CTA"],
    "c_clip_text": 32, "c_clip_text_pooled": 32, "c_clip_img": 32, "c_clip_seq": 1,
}  # fmt: skip
TINY_CASCADE_B = {
    "stable_cascade_stage": "b", "c_in": 4, "c_out": 4, "c_r": 16, "patch_size": 1, "c_cond": 32,
    "c_hidden": [16, 32], "nhead": [-1, 2], "blocks": [[1, 1], [1, 1]], "block_repeat": [[1, 1], [1, 1]],
    "level_config": ["CT", "CTA"], "c_clip": 32, "c_clip_seq": 1, "c_effnet": 16,
}  # fmt: skip
TINY_PID = dict(
    tiny_dits.TINY_PIXELDIT, image_model="pid", lq_latent_channels=16, lq_hidden_dim=16, lq_num_res_blocks=1
)
TINY_X4_UPSCALER = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "in_channels": 7, "model_channels": 32, "num_res_blocks": [1, 1, 1, 1], "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1] * 8,
    "use_linear_in_transformer": True, "context_dim": 32, "adm_in_channels": None, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}  # fmt: skip
REFUSED = {
    "PixArtAlpha": (comfy.supported_models.PixArtAlpha, dict(TINY_PIXART, image_model="pixart_alpha")),
    "PixArtSigma": (comfy.supported_models.PixArtSigma, dict(TINY_PIXART, image_model="pixart_sigma")),
    "HunyuanDiT": (comfy.supported_models.HunyuanDiT, dict(TINY_HYDIT, image_model="hydit")),
    "HunyuanDiT1": (
        comfy.supported_models.HunyuanDiT1,
        dict(TINY_HYDIT, image_model="hydit1", size_cond=True, use_style_cond=True),
    ),
    "Stable_Cascade_C": (comfy.supported_models.Stable_Cascade_C, TINY_CASCADE_C),
    "Stable_Cascade_B": (comfy.supported_models.Stable_Cascade_B, TINY_CASCADE_B),
    "PiD": (comfy.supported_models.PiD, TINY_PID),
    "SD_X4Upscaler": (comfy.supported_models.SD_X4Upscaler, TINY_X4_UPSCALER),
}


def tiny_refused(config: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    cls, unet_config = REFUSED[config]
    model_config = cls(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = tiny_dits.init_weights_(model_config.get_model({}), seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def test_every_configuration_here_is_refused_with_a_reason():
    assert set(REFUSED) <= set(coverage.REFUSED)


@pytest.mark.parametrize("config", list(REFUSED))
def test_apply_refdrop_refuses_with_the_reason(config):
    model = tiny_refused(config)
    assert type(model.model.model_config).__name__ == config
    reason = coverage.REFUSED[config]
    with pytest.raises(ValueError, match=rf"does not work with {config} models: {re.escape(reason)}\."):
        apply_refdrop(model)


def run_with_recorder(model, x, **kwargs):
    """One model call with a recording override in transformer_options (as the pack sets it)."""
    recorder = CallRecorder()
    t = torch.full((x.shape[0],), 0.5)
    with torch.no_grad():
        model.model.apply_model(x, t, transformer_options={OVERRIDE_KEY: recorder}, **kwargs)
    return recorder.calls


def attention_modules_run(model, kinds, run):
    """How many times modules of the given classes ran during ``run()`` (forward hooks)."""
    count = [0]
    hooks = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
             for m in model.model.diffusion_model.modules() if isinstance(m, kinds)]  # fmt: skip
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return count[0]


def test_pixart_attention_never_reaches_the_override():
    """The reason given: PixArt's attention is called without transformer_options."""
    from comfy.ldm.pixart.blocks import AttentionKVCompress, MultiHeadCrossAttention

    model = tiny_refused("PixArtAlpha")
    x = torch.randn(2, 4, 48, 48)  # PixArt's position table needs latents of about 32+ (base size 64 // 2)
    context = torch.randn(2, 8, 32)
    calls = []
    ran = attention_modules_run(
        model, (AttentionKVCompress, MultiHeadCrossAttention),
        lambda: calls.extend(run_with_recorder(model, x, c_crossattn=context)),
    )  # fmt: skip
    assert ran == 2 and calls == []  # one self- and one cross-attention ran; the override saw neither


def test_hunyuan_dit_attention_never_reaches_the_override():
    """The reason given: HunyuanDiT's attention is called without transformer_options."""
    from comfy.ldm.hydit.attn_layers import Attention, CrossAttention

    model = tiny_refused("HunyuanDiT")
    x = torch.randn(2, 4, 8, 8)
    inputs = {
        "c_crossattn": torch.randn(2, 8, 32), "text_embedding_mask": torch.ones(2, 8),
        "encoder_hidden_states_t5": torch.randn(2, 8, 32), "text_embedding_mask_t5": torch.ones(2, 8),
    }  # fmt: skip
    calls = []
    ran = attention_modules_run(
        model, (Attention, CrossAttention), lambda: calls.extend(run_with_recorder(model, x, **inputs))
    )
    assert ran == 4 and calls == []  # two blocks: self- and cross-attention each; the override saw none


def test_stable_cascade_attention_has_image_queries_against_image_and_text_keys():
    """The reason given: stage C's attention keys are the image tokens with the text and CLIP tokens appended."""
    model = tiny_refused("Stable_Cascade_C")
    x = torch.randn(2, 16, 6, 6)
    inputs = {"clip_text": torch.randn(2, 8, 32), "clip_text_pooled": torch.randn(2, 1, 32),
              "clip_img": torch.randn(2, 1, 32)}  # fmt: skip
    calls = run_with_recorder(model, x, **inputs)
    assert len(calls) == 4  # two levels, down and up
    assert all(call["q"] == 36 and call["k"] == 36 + 8 + 1 + 1 for call in calls)  # image; image + text + pooled + img


def test_x4_upscaler_attn1_is_cross_attention_at_three_levels():
    """The reason given: disable_self_attentions makes attn1 a cross-attention to the text at levels 0..2."""
    model = tiny_refused("SD_X4Upscaler")
    unet = model.model.diffusion_model
    by_level = {}
    for level, block in enumerate(unet.input_blocks[1:]):  # level = index // 2 with one res-block a level
        for module in block.modules():
            if isinstance(module, BasicTransformerBlock):
                by_level[level // 2] = module.disable_self_attn
    assert by_level == {0: True, 1: True, 2: True, 3: False}


def test_pid_needs_the_latent_it_decodes():
    """The reason given: PiD decodes a given latent (lq_latent), which fixes the content."""
    model = tiny_refused("PiD")
    with pytest.raises(ValueError, match="requires lq_latent"):
        run_with_recorder(model, torch.randn(1, 3, 8, 8), c_crossattn=torch.randn(1, 8, 32))
