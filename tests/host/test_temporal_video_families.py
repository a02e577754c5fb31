"""Temporal RefDrop on HunyuanVideo, Kandinsky 5, CogVideoX, Cosmos, Mochi and LTX-Video: what the family-
parametrized test (test_temporal_families.py) does not cover, and the video models the node refuses.

- HunyuanVideo's image-to-video inputs: "custom" (the start image's latent as reference tokens between the text
  and the video: non-video tokens, in K_r, never guided) and "v2 (replace)" (guiding_frame_index);
- CogVideoX 1.5's 2-frame temporal patches on an odd latent frame count (the model pads the last token frame);
- LTX-Video clips with keyframe guides run unchanged, with one warning;
- SeedVR2, LTX-2 (LTXAV) and MiniMax H3 are refused with their reasons.
"""

from __future__ import annotations

import logging
import math
import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.nested_tensor
import comfy.patcher_extension
import comfy.sample
import comfy.supported_models
import pytest
import torch
from comfy.ldm.seedvr.model import NaMMAttention
from comfy_extras.nodes_lt import LTXVAddGuide, _append_guide_attention_entry
from refguide.comfy_patches import coverage
from refguide.comfy_patches.dit_families.ltxv import KEYFRAME_GUIDES
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY
from refguide.nodes.refdrop import ApplyRefDrop
from refguide.nodes.video_dit import TemporalRefDrop
from refguide_testing import reference, tiny_dits, tiny_video_dits

TEXT_TOKENS, SIZE = tiny_video_dits.PROMPT_TOKENS, 4


def apply(model, strength=0.3, reference_frame=0, exclude_blocks=""):
    return TemporalRefDrop.execute(model, strength, reference_frame, 0.0, 1.0, exclude_blocks).args[0]


def recording(patched):
    """Every plain call whose q and k are one sequence (self-attention), with the pack's output."""
    options = patched.model_options["transformer_options"]
    pack, calls = options[OVERRIDE_KEY], []

    def recorder(func, q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        out = pack(func, q, k, v, heads, mask=mask, skip_reshape=skip_reshape,
                   skip_output_reshape=skip_output_reshape, **kwargs)  # fmt: skip
        axis = 2 if skip_reshape else 1
        extra = (kwargs.get("transformer_options") or {}).get(EXTRA_CALL_KEY)
        if not extra and q.shape[axis] == k.shape[axis]:
            assert mask is None  # none of the calls checked here has a self-attention mask
            calls.append((q, k, v, heads, skip_reshape, skip_output_reshape, out.detach().clone()))
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def sample(name, model, latent_frames, batch=2, cfg=1.0, extras=None, latent=None, noise_mask=None, positive=None,
           negative=None):  # fmt: skip
    entry = tiny_video_dits.ENTRIES[name]
    shape = (batch, entry.latent_channels, latent_frames, SIZE, SIZE)
    g = torch.Generator().manual_seed(3)
    extras = entry.conditioning_extras if extras is None else extras
    positive = positive or [[torch.randn(batch, TEXT_TOKENS, entry.context_width, generator=g), extras(batch, g)]]
    negative = negative or [[torch.randn(1, TEXT_TOKENS, entry.context_width, generator=g), extras(1, g)]]
    latent = torch.zeros(shape) if latent is None else latent
    noise = torch.randn(latent.shape, generator=g)
    return comfy.sample.sample(model, noise, 1, cfg, "euler", "simple", positive, negative, latent,
                               noise_mask=noise_mask, seed=3, disable_pbar=True)  # fmt: skip


def check_calls(calls, c, reference_frame, frames, per_frame, video_start):
    """Every recorded self-attention call against the direct float64 Eq. 5 (temporal form); returns how many calls
    had video tokens. ``video_start(tokens)``: where the call's video tokens start (None: no video tokens)."""
    guided = 0
    for q, k, v, heads, skip_reshape, skip_output_reshape, out in calls:
        layout, tokens = ("heads", q.shape[2]) if skip_reshape else ("flat", q.shape[1])
        start = video_start(tokens)
        video, frame_r = range(0), range(0)
        if start is not None:
            guided += 1
            assert start + frames * per_frame == tokens  # the video tokens end the sequence here
            video = range(start, start + frames * per_frame)
            frame_r = range(start + reference_frame * per_frame, start + (reference_frame + 1) * per_frame)
        keys = [t for t in range(tokens) if t in frame_r or t not in video]

        def guidance(b, t, video=video, frame_r=frame_r, keys=keys):
            return [(b, keys, c)] if t in video and t not in frame_r else []

        expected = reference.direct_guidance(q.double(), k.double(), v.double(), heads, guidance, layout)
        if layout == "heads" and not skip_output_reshape:
            expected = expected.transpose(1, 2).reshape(q.shape[0], tokens, -1)
        torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)
    return guided


def hunyuan_custom_i2v(rows, generator):
    """HunyuanImageToVideo "custom": the start image's latent (1 frame, 4 tokens) as ``ref_latent``."""
    return {"pooled_output": torch.randn(rows, 32, generator=generator),
            "ref_latent": torch.randn(1, 16, 1, SIZE, SIZE, generator=generator)}  # fmt: skip


def hunyuan_replace_i2v(rows, generator):
    """HunyuanImageToVideo "v2 (replace)": the first latent frame is the start image (guiding_frame_index 0)."""
    return {"pooled_output": torch.randn(rows, 32, generator=generator), "guiding_frame_index": 0}


@pytest.mark.parametrize(
    ("extras", "batch", "reference_tokens"),
    [(hunyuan_custom_i2v, 1, 4), (hunyuan_replace_i2v, 2, 0)],
    ids=["custom", "v2-replace"],
)
@pytest.mark.parametrize("reference_frame", [0, 2])
def test_hunyuan_video_image_to_video_inputs(extras, batch, reference_tokens, reference_frame):
    """The reference image's tokens ("custom": ComfyUI runs it one row at a time) sit between the text and the
    video: they are keys and values of every guided query (non-video tokens), never guided; the token refiner's
    calls (the prompt only) and every text query are untouched."""
    model = tiny_video_dits.tiny_video_dit("hunyuan_video", seed=1)
    patched = apply(model, strength=0.4, reference_frame=reference_frame)
    calls = recording(patched)
    sample("hunyuan_video", patched, 3, batch=batch, extras=extras)
    joint = TEXT_TOKENS + reference_tokens + 3 * 4
    assert sorted({q.shape[2] for q, *_ in calls}) == [TEXT_TOKENS, joint]

    def video_start(tokens):
        return None if tokens == TEXT_TOKENS else TEXT_TOKENS + reference_tokens

    assert check_calls(calls, 0.4, reference_frame, 3, 4, video_start) == 2  # one double, one single block
    assert sum(q.shape[2] == TEXT_TOKENS for q, *_ in calls) == 2  # the token refiner's 2 blocks, plain


def test_cogvideox15_temporal_patches_on_an_odd_latent_frame_count():
    """CogVideoX 1.5 pads 5 latent frames to 6 (3 token frames of 2 latent frames); reference_frame counts token
    frames, and the padded last token frame is guided like any other."""
    name = "cogvideox15_i2v"
    model = tiny_video_dits.tiny_video_dit(name, seed=1)
    patched = apply(model, strength=0.5, reference_frame=2)
    calls = recording(patched)
    out = sample(name, patched, 5)
    assert out.shape[2] == 5 and torch.isfinite(out).all()
    assert check_calls(calls, 0.5, 2, 3, 4, lambda tokens: tokens - 3 * 4) == 2
    with pytest.raises(ValueError, match=r"reference_frame 3 is past the end of this clip, which has 3 latent"):
        sample(name, apply(model, reference_frame=3), 5)


@pytest.mark.parametrize("guide_strength", [1.0, 0.5])
def test_ltxv_clip_with_keyframe_guides_runs_unchanged_with_one_warning(guide_strength, caplog):
    """LTXVAddGuide appends the guide's latent to the clip as extra frames (and, with a strength other than 1,
    makes the model split each self-attention): such a clip runs exactly as the plain model, with one warning."""
    name = "ltxv"
    model = tiny_video_dits.tiny_video_dit(name, seed=1)
    g = torch.Generator().manual_seed(5)
    mask = {"attention_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.long)}
    positive = [[torch.randn(1, TEXT_TOKENS, 32, generator=g), dict(mask)]]
    negative = [[torch.randn(1, TEXT_TOKENS, 32, generator=g), dict(mask)]]
    latent, noise_mask = torch.zeros(1, 128, 3, SIZE, SIZE), torch.ones(1, 1, 3, 1, 1)
    guide = torch.randn(1, 128, 1, SIZE, SIZE, generator=g)
    positive, negative, latent, noise_mask = LTXVAddGuide.append_keyframe(
        positive, negative, 9, latent, noise_mask, guide, guide_strength, (8, 32, 32)
    )
    positive, negative = _append_guide_attention_entry(
        positive, negative, guide[0, 0].numel(), list(guide.shape[2:]), strength=guide_strength
    )
    assert latent.shape[2] == 4  # 3 clip frames + the appended guide frame

    def run(m):
        return sample(name, m, 4, batch=1, cfg=2.0, latent=latent, noise_mask=noise_mask, positive=positive,
                      negative=negative)  # fmt: skip

    plain = run(model)
    with caplog.at_level(logging.WARNING):
        guided = run(apply(model, strength=0.5))
    assert torch.equal(guided, plain)
    warnings = [r.getMessage() for r in caplog.records if KEYFRAME_GUIDES in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("Temporal RefDrop: this clip has keyframe guides")
    # the same clip without guides is guided
    assert not torch.equal(sample(name, apply(model, strength=0.5), 3, batch=1), sample(name, model, 3, batch=1))


@pytest.mark.parametrize(
    "name", ["hunyuan_video", "kandinsky5", "cogvideox_t2v", "cosmos_predict2_i2v", "cosmos1", "mochi", "ltxv"]
)
def test_the_image_node_points_these_video_models_to_temporal_refdrop(name):
    family = tiny_video_dits.ENTRIES[name].family
    with pytest.raises(ValueError, match=rf"this is a {family} model \(video diffusion transformer\): use the "
                                         r"'Temporal RefDrop' node instead"):  # fmt: skip
        ApplyRefDrop.execute(tiny_video_dits.tiny_video_dit(name), 0.3, 1, False, "", "")


# --- refused video models ---------------------------------------------------------------------------------------
TINY_REFUSED = {
    "SeedVR2": (comfy.supported_models.SeedVR2, {
        "image_model": "seedvr2", "norm_eps": 1e-5, "num_layers": 2, "mlp_type": "swiglu", "vid_dim": 64,
        "heads": 2, "head_dim": 32, "mm_layers": 2, "rope_dim": 32,
    }),
    "LTXAV": (comfy.supported_models.LTXAV, {
        "image_model": "ltxav", "in_channels": 128, "audio_in_channels": 128, "cross_attention_dim": 64,
        "audio_cross_attention_dim": 32, "attention_head_dim": 32, "audio_attention_head_dim": 16,
        "num_attention_heads": 2, "audio_num_attention_heads": 2, "caption_channels": 32, "num_layers": 1,
        "connector_attention_head_dim": 16, "connector_num_attention_heads": 2, "connector_num_layers": 1,
    }),
    "MiniMaxH3": (comfy.supported_models.MiniMaxH3, {
        "image_model": "minimax_h3", "hidden_size": 64, "num_layers": 1, "token_refiner_num_layers": 1,
        "num_attention_heads": 2, "attention_head_dim": 32, "ffn_hidden_size": 128, "text_dim": 32,
        "time_embed_hidden_size": 64, "time_embed_dim": 32,
    }),
}  # fmt: skip


def tiny_refused(config: str) -> comfy.model_patcher.ModelPatcher:
    cls, unet_config = TINY_REFUSED[config]
    model_config = cls(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = tiny_dits.init_weights_(model_config.get_model({}), 0)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


@pytest.mark.parametrize("config", list(TINY_REFUSED))
def test_refused_video_models_say_why(config):
    model = tiny_refused(config)
    assert type(model.model.model_config).__name__ == config
    reason = coverage.REFUSED[config]
    message = rf"Temporal RefDrop does not work with {config} models: {re.escape(reason)}\."
    with pytest.raises(ValueError, match=message):
        apply(model)


def test_seedvr2_attention_never_reaches_the_attention_override():
    """The reason SeedVR2 is refused: its windowed attention runs, but ComfyUI's attention override never sees it."""
    model = tiny_refused("SeedVR2")
    seen, runs = [], [0]

    def override(func, *args, **kwargs):
        seen.append(args[0].shape)
        return func(*args, **kwargs)

    hooks = [m.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
             for m in model.model.diffusion_model.modules() if isinstance(m, NaMMAttention)]  # fmt: skip
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            out = model.model.apply_model(x, torch.full((1,), 0.5), condition=torch.randn(1, 17, 1, 8, 8),
                                          transformer_options={OVERRIDE_KEY: override, "cond_or_uncond": [0]})  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(out).all() and runs[0] == 2 and seen == []
    assert "without transformer_options" in coverage.REFUSED["SeedVR2"]


class ModelCallReached(Exception):
    pass


@pytest.mark.parametrize(("config", "audio_shape"), [("LTXAV", (1, 8, 5, 16)), ("MiniMaxH3", (1, 32, 2, 8))])
def test_audio_video_models_get_one_packed_latent(config, audio_shape):
    """Why LTX-2 and MiniMax H3 are refused: ComfyUI's sampler packs their (video, audio) latent into one
    (batch, 1, N) tensor (comfy.utils.pack_latents), and that is what the model call gets: no 5-D clip."""
    model = tiny_refused(config).clone()
    seen = []

    def wrapper(executor, x, *args, **kwargs):
        seen.append((tuple(x.shape), kwargs.get("latent_shapes")))
        raise ModelCallReached

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "probe", wrapper)
    channels = model.model.latent_format.latent_channels if config == "LTXAV" else 24
    video = torch.zeros(1, channels, 3, SIZE, SIZE)
    latent = comfy.nested_tensor.NestedTensor((video, torch.zeros(audio_shape)))
    noise = comfy.nested_tensor.NestedTensor((torch.randn(video.shape), torch.randn(audio_shape)))
    g = torch.Generator().manual_seed(2)
    width = TINY_REFUSED[config][1].get("caption_channels", TINY_REFUSED[config][1].get("text_dim"))
    positive = [[torch.randn(1, TEXT_TOKENS, width, generator=g), {}]]
    with pytest.raises(ModelCallReached):
        comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, positive, latent, seed=1,
                            disable_pbar=True)  # fmt: skip
    shape, latent_shapes = seen[0]
    assert shape == (1, 1, video.numel() + math.prod(audio_shape)) and len(latent_shapes) == 2
    assert "packed latent" in coverage.REFUSED[config] and "(batch, 1, N)" in coverage.REFUSED[config]
