"""Temporal RefDrop on every video diffusion-transformer family (tiny real instances of ComfyUI's own classes).

For each entry of ``tiny_video_dits.ENTRIES`` one sampling step of ComfyUI's real sampler runs with a recorder
around the pack's override; every self-attention call must equal the direct float64 computation
(``reference.direct_guidance``) of Eq. 5 in its temporal form: every VIDEO query token of a latent frame t != r
gets c * Attn(Q_t, K_r, V_r) + (1 - c) * X_t, where K_r, V_r are frame r's video tokens plus every non-video token
of the same row (text, appended condition tokens), and non-video queries stay as computed. Where the video tokens
are comes from the entry (written from the model's code), not from the pack's family table.
"""

from __future__ import annotations

import math

import comfy.sample
import pytest
import torch
from refguide.comfy_patches import model_families
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY
from refguide.nodes.video_dit import TemporalRefDrop
from refguide_testing import reference, tiny_video_dits

NAMES = list(tiny_video_dits.ENTRIES)
# latent: 3 token frames (3 latent frames; 6 with 2-frame temporal patches) of 4 x 4 (2 x 2 tokens of 2 x 2 patches)
TEXT_TOKENS, FRAMES, SIZE = 7, 3, 4


def apply(model, strength=0.3, reference_frame=0, exclude_blocks=""):
    return TemporalRefDrop.execute(model, strength, reference_frame, 0.0, 1.0, exclude_blocks).args[0]


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return request.param, tiny_video_dits.tiny_video_dit(request.param, seed=1)


def bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return q, k, v, heads, mask, skip_reshape, skip_output_reshape


def recording(patched):
    """Every plain self-attention call (q, k of one sequence) with the pack's output (test-only recorder)."""
    options = patched.model_options["transformer_options"]
    pack, calls, forward = options[OVERRIDE_KEY], [], {"options": None, "count": {}}

    def recorder(func, *args, **kwargs):
        out = pack(func, *args, **kwargs)
        q, k, v, heads, mask, skip_reshape, skip_output_reshape = bind(*args, **kwargs)
        axis = 2 if skip_reshape else 1
        call_options = kwargs.get("transformer_options") or {}
        if call_options is not forward["options"]:  # a new model forward (its own transformer_options dict)
            forward.update(options=call_options, count={})
        if not call_options.get(EXTRA_CALL_KEY) and q.shape[axis] == k.shape[axis] and q.shape[0] == k.shape[0]:
            block = call_options.get("block_index")
            nth = forward["count"][block] = forward["count"].get(block, -1) + 1  # n-th self-attention of the block
            calls.append((q, k, v, heads, mask, skip_reshape, skip_output_reshape, out.detach().clone(), block, nth))
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def sample_once(name, model, batch=2, frames=FRAMES, cfg=1.0, denoised=None, denoise=1.0):
    """One Euler step of ComfyUI's sampler; ``denoised`` (a list) receives the step's denoised prediction."""
    entry = tiny_video_dits.ENTRIES[name]
    shape = (batch, entry.latent_channels, frames * entry.patch[0] + entry.picture_frames, SIZE, SIZE)
    g = torch.Generator().manual_seed(3)
    positive = [
        [torch.randn(batch, TEXT_TOKENS, entry.context_width, generator=g), entry.conditioning_extras(batch, g)]
    ]
    negative = [[torch.randn(1, TEXT_TOKENS, entry.context_width, generator=g), entry.conditioning_extras(1, g)]]
    noise = torch.randn(shape, generator=g)
    callback = None if denoised is None else lambda step, x0, x, total: denoised.append(x0.clone())
    return comfy.sample.sample(model, noise, 1, cfg, "euler", "simple", positive, negative, torch.zeros(shape), seed=3,
                               denoise=denoise, callback=callback, disable_pbar=True)  # fmt: skip


@pytest.mark.parametrize("reference_frame", [0, 2])
def test_every_self_attention_call_follows_temporal_eq5(family, reference_frame):
    name, model = family
    entry = tiny_video_dits.ENTRIES[name]
    assert model_families.model_family(model).name == entry.family
    c = 0.3
    patched = apply(model, strength=c, reference_frame=reference_frame)
    calls = recording(patched)
    sample_once(name, patched)
    frames = FRAMES
    per_frame = math.prod(SIZE // p for p in entry.patch[1:])
    video_tokens = frames * per_frame
    guided = 0
    for q, k, v, heads, mask, skip_reshape, skip_output_reshape, out, block, nth in calls:
        layout = "heads" if skip_reshape else "flat"
        tokens = q.shape[2 if skip_reshape else 1]
        adapter = entry.plain_self_call is not None and entry.plain_self_call(block, nth)
        start = None if adapter else entry.video_start(tokens, video_tokens, TEXT_TOKENS)
        if start is None:
            video, frame_r, keys = range(0), range(0), None
        else:
            video = range(start, start + video_tokens)
            frame_r = range(start + reference_frame * per_frame, start + (reference_frame + 1) * per_frame)
            keys = [t for t in range(tokens) if t in frame_r or t not in video]
            guided += 1

        def guidance(b, t, video=video, frame_r=frame_r, keys=keys):
            return [(b, keys, c)] if t in video and t not in frame_r else []

        expected = reference.direct_guidance(q.double(), k.double(), v.double(), heads, guidance, layout,
                                             reference.additive_key_mask(mask, q.shape[0], tokens))  # fmt: skip
        if layout == "heads" and not skip_output_reshape:
            expected = expected.transpose(1, 2).reshape(q.shape[0], tokens, -1)
        torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)
    assert guided == entry.self_calls, f"{name}: {guided} self-attention calls with video tokens"


def test_strength_zero_is_bit_identical(family):
    name, model = family
    assert torch.equal(sample_once(name, apply(model, strength=0.0)), sample_once(name, model))


def test_guided_differs_from_plain(family):
    """On the model's prediction (the step's denoised latent), from the middle of the real schedule: at its first
    sigma the model input is almost only noise scaled down (CogVideoX: about 4500x), so every frame of a tiny
    random model looks alike and attending to frame r changes little."""
    name, model = family
    plain, guided = [], []
    sample_once(name, model, cfg=2.0, denoised=plain, denoise=0.5)
    out = sample_once(name, apply(model, strength=0.5), cfg=2.0, denoised=guided, denoise=0.5)
    assert torch.isfinite(out).all()
    assert (guided[0] - plain[0]).abs().mean() > 1e-3 * plain[0].abs().mean()


def test_reference_frame_past_the_clip_is_a_clear_error(family):
    name, model = family
    frames = FRAMES
    with pytest.raises(ValueError, match=rf"reference_frame {frames} is past the end of this clip, which has {frames}"):
        sample_once(name, apply(model, reference_frame=frames))


def test_exclude_blocks_takes_the_model_block_names(family):
    name, model = family
    names = model_families.model_family(model).block_names
    assert names
    with pytest.raises(ValueError, match=rf"'block 99' is not a block of this .* Valid names: {names[0]}"):
        apply(model, exclude_blocks="block 99")
    patched = apply(model, exclude_blocks=", ".join(names))  # every block excluded: the model runs plain
    assert torch.equal(sample_once(name, patched), sample_once(name, model))
