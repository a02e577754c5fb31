"""Subject masks and regions on every image diffusion transformer's real token layout (our extensions).

Each tiny real ComfyUI DiT runs ComfyUI's sampler for one step; the pack's attention override is wrapped by a
recorder (test-only) that keeps every self-attention call's q/k/v/mask and the pack's output. For every call the
output must equal the one direct float64 computation (refguide_testing.reference.direct_guidance) with the
regions / subject tokens placed on the image tokens where the test entries say they are
(``tiny_dits.ENTRIES[...].image_start``, written from the models' code, independently of the pack's family table):
e.g. Flux / Chroma / Qwen-Image [text; image], SD3 [context; image], Lumina 2 / Z-Image [caption (padded to 32 on
Z-Image); image (padded)] after an image-only noise refiner and a caption-only context refiner, Cosmos Predict2
image only. The latent is 11 x 13 (odd: the models pad to 12 x 14, a 6 x 7 token grid) except on models that do
not pad (12 x 14).
"""

from __future__ import annotations

import math

import comfy.sample
import pytest
import torch
from refguide.attention_patches.tokens import TokenMasks
from refguide.comfy_patches import model_families
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY, patch_dit
from refguide.comfy_patches.refdrop.dit import InBatchReferences, ReferenceImageRows
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from refguide.nodes.refdrop import ApplyRefDrop
from refguide_testing import reference, tiny_dits

CONTEXT_TOKENS = 8
FAMILIES = list(tiny_dits.ENTRIES)
PIXELS = 8  # image pixels per latent pixel (the masks are drawn at image size)


def latent_size(name):
    return (11, 13) if tiny_dits.ENTRIES[name].pads_latent else (12, 14)


def token_grid(name):
    height, width = latent_size(name)
    patch = tiny_dits.ENTRIES[name].patch
    return math.ceil(height / patch), math.ceil(width / patch)


def image_start(name, tokens, image_count, multiple=None):
    """Where the image tokens of a self-attention call of ``tokens`` tokens start (None: a text-only call).
    ``multiple``: Lumina / Z-Image pad caption and image tokens to it (the model's pad_tokens_multiple)."""
    return tiny_dits.ENTRIES[name].image_start(tokens, image_count, CONTEXT_TOKENS, multiple)


def tokens_of(mask, name):
    """The image tokens (row-major on the padded grid) whose latent patch (2 x 2, or the entry's patch) averages
    >= 0.5; padding = 0."""
    height, width = latent_size(name)
    latent = mask.reshape(height, PIXELS, width, PIXELS).mean(dim=(1, 3))
    grid_h, grid_w = token_grid(name)
    patch = tiny_dits.ENTRIES[name].patch
    padded = torch.zeros(grid_h * patch, grid_w * patch)
    padded[:height, :width] = latent
    averaged = padded.reshape(grid_h, patch, grid_w, patch).mean(dim=(1, 3))
    return set((averaged.flatten() >= 0.5).nonzero().flatten().tolist())


def left_right_regions(name):
    """Two regions in the generated image's frame: left 6 latent columns, and the columns from 5 on (they overlap
    on token column 2, whose patch is half in the second region: average 0.5, selected; at patch 1, on column 5)."""
    height, width = latent_size(name)
    regions = torch.zeros(2, height * PIXELS, width * PIXELS)
    regions[0, :, : 6 * PIXELS] = 1.0
    regions[1, :, 5 * PIXELS :] = 1.0
    return regions


def subject_mask(name):
    """A subject in the upper left of the reference picture (already at the latent's aspect)."""
    height, width = latent_size(name)
    mask = torch.zeros(1, height * PIXELS, width * PIXELS)
    mask[0, : 5 * PIXELS, : 7 * PIXELS] = 1.0
    return mask


def bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return q, k, v, heads, mask, skip_reshape, skip_output_reshape, kwargs


def recording(patched):
    """Wrap the pack's override: every plain self-attention call's inputs and the pack's output (test-only)."""
    options = patched.model_options["transformer_options"]
    pack, calls = options[OVERRIDE_KEY], []

    def recorder(func, *args, **kwargs):
        out = pack(func, *args, **kwargs)
        transformer_options = kwargs.get("transformer_options") or {}
        q, k, v, heads, mask, skip_reshape, skip_output_reshape, _ = bind(*args, **kwargs)
        axis = 2 if skip_reshape else 1
        if not transformer_options.get(EXTRA_CALL_KEY) and q.shape[axis] == k.shape[axis] and q.shape[0] == k.shape[0]:
            calls.append((q, k, v, heads, mask, skip_reshape, skip_output_reshape, out.detach().clone(),
                          list(transformer_options.get("cond_or_uncond") or [0])))  # fmt: skip
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def sample_once(name, model, batch):
    entry = tiny_dits.ENTRIES[name]
    channels = model.model.latent_format.latent_channels
    size = latent_size(name)
    shape = (batch, channels, 1, *size) if entry.five_d else (batch, channels, *size)
    g = torch.Generator().manual_seed(3)
    extras = entry.conditioning_extras(batch, g)
    positive = [[torch.randn(batch, CONTEXT_TOKENS, entry.context_width, generator=g), extras]]
    negative = [[torch.randn(1, CONTEXT_TOKENS, entry.context_width, generator=g), dict(extras)]]
    noise = torch.randn(shape, generator=g)
    comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, negative, torch.zeros(shape), seed=3,
                        disable_pbar=True)  # fmt: skip


def unguided(b, t):
    return []


def check_calls(name, calls, guidance_for, multiple=None):
    """Every recorded call equals the direct computation; returns how many calls had image tokens."""
    assert calls, "no self-attention call was recorded"
    image_count = math.prod(token_grid(name))
    with_image = 0
    for q, k, v, heads, mask, skip_reshape, skip_output_reshape, out, order in calls:
        layout = "heads" if skip_reshape else "flat"
        tokens = q.shape[2 if skip_reshape else 1]
        start = image_start(name, tokens, image_count, multiple)
        if start == tiny_dits.PLAIN:  # not one image's self-attention (Krea 2's text fusion): the unpatched model
            guidance = unguided
        else:
            with_image += start is not None
            guidance = guidance_for(q.shape[0] // len(order), start, tokens)
        qd, kd, vd = q.double(), k.double(), v.double()
        expected = reference.direct_guidance(
            qd, kd, vd, heads, guidance, layout, reference.additive_key_mask(mask, q.shape[0], tokens)
        )
        if layout == "heads" and not skip_output_reshape:
            expected = expected.transpose(1, 2).reshape(q.shape[0], tokens, -1)
        torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)
    return with_image


@pytest.mark.parametrize("name", FAMILIES)
def test_regions_on_every_family_match_the_direct_computation(name):
    model = tiny_dits.tiny_dit(name, seed=1)
    regions = left_right_regions(name)
    patched = ApplyRefDrop.execute(model, 0.3, 2, False, "0.4, 0.3", "", 0.0, 1.0, regions).args[0]
    calls = recording(patched)
    sample_once(name, patched, batch=4)
    region_tokens = [tokens_of(region, name) for region in regions]
    assert region_tokens[0] & region_tokens[1] and region_tokens[0] != region_tokens[1]

    def guidance_for(per_chunk, start, tokens):
        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            if index < 2 or start is None or not start <= t < start + math.prod(token_grid(name)):
                return []  # references, and every non-image token of a guided row: unguided with regions
            return [(base + j, None, c) for j, c in ((0, 0.4), (1, 0.3)) if t - start in region_tokens[j]]

        return guidance

    assert check_calls(name, calls, guidance_for, token_multiple(model)) > 0


def token_multiple(model):
    return getattr(model.model.diffusion_model, "pad_tokens_multiple", None)


@pytest.mark.parametrize("name", FAMILIES)
def test_subject_masks_on_every_family_match_the_direct_computation(name):
    """Reference rows in front (as the reference-image wrapper puts them): S_j = subject image tokens + every
    non-image token of the reference row."""
    model = tiny_dits.tiny_dit(name, seed=2)
    family = model_families.model_family(model)
    settings = RefDropSettings((0,), (0.5,), "Apply RefDrop (Reference Image)")
    patched = patch_dit(model, family.dit, ReferenceImageRows(settings))
    options = patched.model_options["transformer_options"]
    options[REFERENCE_ROWS_KEY] = 1  # row 0 of the batch stands for the picture row
    options[REFERENCE_MASKS_KEY] = subject_mask(name)
    calls = recording(patched)
    sample_once(name, patched, batch=3)
    subject = tokens_of(subject_mask(name)[0], name)
    image_count = math.prod(token_grid(name))
    assert 0 < len(subject) < image_count

    def guidance_for(per_chunk, start, tokens):
        if start is None:
            kept = None  # a text-only call: the reference keeps every token
        else:
            kept = [t for t in range(tokens) if not start <= t < start + image_count or t - start in subject]

        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            return [] if index == 0 else [(base, kept, 0.5)]

        return guidance

    assert check_calls(name, calls, guidance_for, token_multiple(model)) > 0


def test_zimage_pads_caption_and_image_tokens_to_32():
    """Z-Image's real configuration pads tokens to multiples of 32: the image tokens then start after the padded
    caption and are followed by padding."""
    model = tiny_dits.tiny_dit("zimage", seed=1)
    dm = model.model.diffusion_model
    dm.pad_tokens_multiple = 32  # as comfy.supported_models.ZImage configures the real model
    dm.x_pad_token = torch.nn.Parameter(torch.randn(1, dm.dim) * 0.1)
    dm.cap_pad_token = torch.nn.Parameter(torch.randn(1, dm.dim) * 0.1)
    regions = left_right_regions("zimage")
    patched = ApplyRefDrop.execute(model, 0.3, 2, False, "0.4, 0.3", "", 0.0, 1.0, regions).args[0]
    calls = recording(patched)
    sample_once("zimage", patched, batch=4)
    region_tokens = [tokens_of(region, "zimage") for region in regions]
    image_count = math.prod(token_grid("zimage"))
    assert {c[0].shape[2 if c[5] else 1] for c in calls} == {32, 64, 96}  # refiners: 8 -> 32, 42 -> 64; layers

    def guidance_for(per_chunk, start, tokens):
        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            if index < 2 or start is None or not start <= t < start + image_count:
                return []
            return [(base + j, None, c) for j, c in ((0, 0.4), (1, 0.3)) if t - start in region_tokens[j]]

        return guidance

    assert check_calls("zimage", calls, guidance_for, 32) > 0


def test_in_batch_regions_leave_non_image_tokens_and_text_only_calls_plain():
    """With regions, a text-only call (Lumina's context refiner) and every text token run as the unpatched model."""
    model = tiny_dits.tiny_dit("lumina2", seed=1)
    settings = RefDropSettings((0,), (0.5,), regions=TokenMasks(torch.ones(1, 88, 104)))
    patched = patch_dit(model, model_families.model_family(model).dit, InBatchReferences(settings))
    calls = recording(patched)
    sample_once("lumina2", patched, batch=2)
    text_only = [c for c in calls if c[0].shape[1 if not c[5] else 2] == CONTEXT_TOKENS]
    assert text_only
    for q, k, v, heads, mask, skip_reshape, _, out, _ in text_only:
        layout = "heads" if skip_reshape else "flat"
        plain = reference.direct_guidance(q.double(), k.double(), v.double(), heads, lambda b, t: [], layout,
                                          reference.additive_key_mask(mask, q.shape[0], q.shape[2 if skip_reshape else 1]))  # fmt: skip
        if layout == "heads":
            plain = plain.transpose(1, 2).reshape(out.shape)
        torch.testing.assert_close(out.double(), plain, rtol=2e-4, atol=2e-4)
