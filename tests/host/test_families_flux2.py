"""Flux 2 (dev, Klein), Flux Kontext, LongCat-Image, Chroma Radiance, Z-Image pixel space, MageFlow, Anima.

Tiny real ComfyUI models (``tiny_dits``), ComfyUI's sampler. What the family-parametrized tests do not cover:
``exclude_blocks`` with each model's own block names (the call order written here from the models' code), the
step window, Flux 2 Klein editing with timestep-zero reference tokens, Kontext tokens appended after the image
tokens with regions and subject masks (float64 direct computation), and the pixel-space models at their real
patch sizes (16 and 32 pixels a token), where the masks are placed on pixels, not on VAE latents.
"""

from __future__ import annotations

import math
import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import pytest
import torch
from refguide.comfy_patches import model_families
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY, patch_dit
from refguide.comfy_patches.refdrop.dit import ReferenceImageRows
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import reference, tiny_dits

CONTEXT_TOKENS = 8
FLUX_BLOCKS = ["double 0", "double 1", "single 0", "single 1"]
# Each model's self-attention calls in the order one forward makes them, as (block_type, block_index) the model
# sets, with the block name; None for a call that is not self-attention (Anima's text cross-attention).
CALL_ORDER = {
    "flux2": [(("double", 0), "double 0"), (("double", 1), "double 1"), (("single", 0), "single 0"),
              (("single", 1), "single 1")],
    "longcat_image": [(("double", 0), "double 0"), (("double", 1), "double 1"), (("single", 0), "single 0"),
                      (("single", 1), "single 1")],
    "chroma_radiance": [(("double", 0), "double 0"), (("double", 1), "double 1"), (("single", 0), "single 0"),
                        (("single", 1), "single 1")],
    # NextDiT: the refiners run before the model sets block_type / block_index
    "zimage_pixel": [((None, None), "context refiner 0"), ((None, None), "context refiner 1"),
                     ((None, None), "noise refiner 0"), ((None, None), "noise refiner 1"), (("double", 0), "layer 0"),
                     (("double", 1), "layer 1")],
    "mage_flow": [(("double", 0), "block 0"), (("double", 1), "block 1")],
    # MiniTrainDIT: block_index only; per block the image self-attention, then the text cross-attention
    "anima": [((None, 0), "block 0"), ((None, 0), None), ((None, 1), "block 1"), ((None, 1), None)],
}  # fmt: skip
CALL_ORDER["flux2_klein"] = CALL_ORDER["flux2"]
FAMILY = {"flux2": "Flux 2", "flux2_klein": "Flux 2", "longcat_image": "LongCat-Image",
          "chroma_radiance": "Chroma Radiance", "zimage_pixel": "Z-Image pixel space", "mage_flow": "MageFlow",
          "anima": "Anima"}  # fmt: skip
# Tiny models that are not family-test ENTRIES: Flux 2 Klein, the pixel-space models at their real patch sizes.
EXTRA_MODELS = {
    "flux2_klein": (comfy.supported_models.Flux2, tiny_dits.TINY_FLUX2_KLEIN),
    "chroma_radiance_p16": (comfy.supported_models.ChromaRadiance, dict(tiny_dits.TINY_CHROMA_RADIANCE, patch_size=16)),
    "zimage_pixel_p32": (comfy.supported_models.ZImagePixelSpace, dict(tiny_dits.TINY_ZIMAGE_PIXEL, patch_size=32)),
}  # fmt: skip


def tiny_model(name, seed=0):
    """A tiny real model: a family-test entry of ``tiny_dits`` or one of :data:`EXTRA_MODELS`."""
    if name not in EXTRA_MODELS:
        return tiny_dits.tiny_dit(name, seed)
    cls, config = EXTRA_MODELS[name]
    model_config = cls(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    tiny_dits.init_weights_(model.diffusion_model, seed)  # the weights; the noise schedule stays the model's own
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def five_d(name):
    return name == "anima"


def apply_refdrop(model, strength=0.4, reference_count=1, reference_strengths="", exclude_blocks="", start=0.0,
                  end=1.0, regions=None):  # fmt: skip
    return ApplyRefDrop.execute(model, strength, reference_count, False, reference_strengths, exclude_blocks, start,
                                end, regions).args[0]  # fmt: skip


def conditioning(rows, seed, extras=None):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(rows, CONTEXT_TOKENS, 32, generator=g), dict(extras or {})]]


def sample(name, model, batch=3, steps=1, cfg=1.0, size=(16, 16), extras=None):
    channels = model.model.latent_format.latent_channels
    shape = (batch, channels, 1, *size) if five_d(name) else (batch, channels, *size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    positive, negative = conditioning(batch, 1, extras), conditioning(1, 2, extras)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros(shape),
                               seed=7, disable_pbar=True)  # fmt: skip


class Recorder:
    """An override below ours (test-only): passes every call through, records its block key, sigma and whether
    it is one of our extra attentions."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options", {})
        sigmas = options.get("sigmas")
        self.calls.append({
            "extra": bool(options.get(EXTRA_CALL_KEY)),
            "block": (options.get("block_type"), options.get("block_index")),
            "sigma": None if sigmas is None else float(sigmas.flatten()[0]),
        })  # fmt: skip
        return func(*args, **kwargs)

    def plain_calls(self):
        """Every plain call with the number of extra attentions that followed it."""
        result = []
        for call in self.calls:
            if call["extra"]:
                result[-1][1] += 1
            else:
                result.append([call, 0])
        return result


def with_recorder(model):
    recorder = Recorder()
    base = model.clone()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = recorder
    return base, recorder


# ---- block names: exclude_blocks takes each model's own names ----------------------------------------------


@pytest.mark.parametrize("name", list(CALL_ORDER))
def test_exclude_blocks_uses_the_model_block_names(name):
    model = tiny_model(name, seed=1)
    family = model_families.model_family(model)
    labels = [label for _, label in CALL_ORDER[name] if label]
    assert (family.name, family.kind, list(family.block_names)) == (FAMILY[name], model_families.IMAGE_DIT, labels)
    excluded = {labels[1], labels[-1]}
    base, recorder = with_recorder(model)
    written = f"{labels[1].upper().replace(' ', '_')},  {labels[-1]}"  # case and underscores are normalised
    sample(name, apply_refdrop(base, exclude_blocks=written))
    calls = recorder.plain_calls()
    assert [call["block"] for call, _ in calls] == [key for key, _ in CALL_ORDER[name]]  # one forward (cfg 1)
    guided = [extras for _, extras in calls]
    assert guided == [1 if label and label not in excluded else 0 for _, label in CALL_ORDER[name]]
    valid = re.escape(", ".join(labels))
    with pytest.raises(ValueError, match=rf"'nope 7'.*{FAMILY[name]} model\. Valid names: {valid}\."):
        apply_refdrop(model, exclude_blocks=f"{labels[0]}, nope 7")


def test_reference_image_node_takes_the_same_block_names():
    model, vae = tiny_model("mage_flow", seed=2), tiny_dits.tiny_dit_vae("mage_flow")
    picture = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    base, recorder = with_recorder(model)
    patched = ApplyRefDropImage.execute(base, vae, picture, 0.4, 3, False, "", "Block 1").args[0]
    sample("mage_flow", patched, batch=2)
    assert [extras for _, extras in recorder.plain_calls()] == [1, 0]
    with pytest.raises(ValueError, match=r"'double 0'.*MageFlow model\. Valid names: block 0, block 1\."):
        ApplyRefDropImage.execute(model, vae, picture, 0.4, 3, False, "", "double 0")


# ---- step window ----------------------------------------------------------------------------------------------


def test_step_window_on_flux2_guides_only_the_calls_inside_it():
    """start 0.5 .. end 1.0 on Flux 2's own (shifted) schedule: the early, noisy calls stay plain."""
    model = tiny_model("flux2_klein", seed=3)
    sampling = model.get_model_object("model_sampling")
    assert float(sampling.sigmas[-1]) == 1.0  # the model's real schedule (its weights alone are random)
    base, recorder = with_recorder(model)
    sample("flux2_klein", apply_refdrop(base, start=0.5, end=1.0), steps=4, size=(8, 8))
    sigma_start = float(sampling.percent_to_sigma(0.5))
    calls = recorder.plain_calls()
    assert len(calls) == 4 * 4  # 4 steps x 4 self-attention calls
    assert [call["sigma"] for call, _ in calls[::4]] == pytest.approx([1.0, 0.9577, 0.8829, 0.7153], abs=1e-4)
    inside = [call["sigma"] <= sigma_start for call, _ in calls]
    assert any(inside) and not all(inside)
    assert [extras for _, extras in calls] == [int(flag) for flag in inside]


# ---- Flux 2 Klein editing: reference tokens at timestep 0 ----------------------------------------------------


def test_klein_editing_with_timestep_zero_reference_tokens_is_guided():
    """Klein's "index_timestep_zero" method doubles the model's timestep batch inside the forward (the appended
    reference tokens get t = 0); the attention rows stay the latent batch's, so in-batch RefDrop and a reference
    picture guide as usual and the reference row comes out as without RefDrop."""
    model = tiny_model("flux2_klein", seed=4)
    g = torch.Generator().manual_seed(5)
    extras = {"reference_latents": [torch.randn(1, 128, 4, 4, generator=g)],
              "reference_latents_method": "index_timestep_zero"}  # fmt: skip
    for cfg in (1.0, 2.0):
        plain = sample("flux2_klein", model, steps=2, cfg=cfg, size=(8, 8), extras=extras)
        guided = sample("flux2_klein", apply_refdrop(model), steps=2, cfg=cfg, size=(8, 8), extras=extras)
        assert torch.isfinite(guided).all()
        torch.testing.assert_close(guided[0], plain[0], rtol=1e-5, atol=1e-5)
        assert (guided[1:] - plain[1:]).abs().mean() > 1e-4 * plain.abs().mean()
    vae = tiny_dits.tiny_flux2_vae()
    picture = torch.rand(1, 128, 128, 3, generator=g)
    with_picture = ApplyRefDropImage.execute(model, vae, picture, 0.4, 3, False).args[0]
    guided = sample("flux2_klein", with_picture, steps=2, size=(8, 8), extras=extras)
    plain = sample("flux2_klein", model, steps=2, size=(8, 8), extras=extras)
    assert torch.isfinite(guided).all() and (guided - plain).abs().mean() > 1e-4 * plain.abs().mean()


# ---- regions and subject masks: Kontext tokens, pixel-space patches -------------------------------------------


def bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return q, k, v, heads, mask, skip_reshape, skip_output_reshape


def recording(patched):
    """Wrap the pack's override: every plain self-attention call's inputs and the pack's output (test-only)."""
    options = patched.model_options["transformer_options"]
    pack, calls = options[OVERRIDE_KEY], []

    def recorder(func, *args, **kwargs):
        out = pack(func, *args, **kwargs)
        options = kwargs.get("transformer_options") or {}
        q, k, v, heads, mask, skip_reshape, skip_output_reshape = bind(*args, **kwargs)
        axis = 2 if skip_reshape else 1
        if not options.get(EXTRA_CALL_KEY) and q.shape[axis] == k.shape[axis] and q.shape[0] == k.shape[0]:
            calls.append((q, k, v, heads, mask, skip_reshape, skip_output_reshape, out.detach().clone()))
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def tokens_of(mask, latent, patch):
    """Image tokens (row-major on the padded grid) whose patch of the (zero-padded) latent averages >= 0.5; the
    mask is drawn at the latent's size (pixel space) or a whole multiple of it."""
    height, width = latent
    scale = mask.shape[-1] // width
    mask = mask.reshape(height, scale, width, scale).mean(dim=(1, 3))
    grid_h, grid_w = math.ceil(height / patch), math.ceil(width / patch)
    padded = torch.zeros(grid_h * patch, grid_w * patch)
    padded[:height, :width] = mask
    averaged = padded.reshape(grid_h, patch, grid_w, patch).mean(dim=(1, 3))
    return set((averaged.flatten() >= 0.5).nonzero().flatten().tolist()), grid_h * grid_w


def regions_for(latent, patch, scale):
    """Region 0: token columns 0-2; region 1: from the middle of token column 2 on (they share column 2)."""
    height, width = latent
    regions = torch.zeros(2, height * scale, width * scale)
    regions[0, :, : 3 * patch * scale] = 1.0
    regions[1, :, int(2.5 * patch * scale) :] = 1.0
    return regions


def subject_for(latent, patch, scale):
    height, width = latent
    mask = torch.zeros(1, height * scale, width * scale)
    mask[0, : int(2.5 * patch * scale), : int(3.5 * patch * scale)] = 1.0
    return mask


def check_calls(calls, rows_per_chunk, image_start, image_count, guidance_for):
    """Every recorded call equals the float64 direct computation; returns the token counts of the calls."""
    counts = []
    for q, k, v, heads, mask, skip_reshape, skip_output_reshape, out in calls:
        layout = "heads" if skip_reshape else "flat"
        tokens = q.shape[2 if skip_reshape else 1]
        counts.append(tokens)
        start = image_start(tokens)
        additive = None
        if mask is not None:
            flat = mask.reshape(mask.shape[0], -1)[:, -tokens:].expand(q.shape[0], tokens)
            additive = (
                flat.double() if flat.dtype != torch.bool else torch.zeros(flat.shape).masked_fill(~flat, -torch.inf)
            )
        guidance = guidance_for(rows_per_chunk, start, image_count, tokens)
        expected = reference.direct_guidance(q.double(), k.double(), v.double(), heads, guidance, layout, additive)
        if layout == "heads" and not skip_output_reshape:
            expected = expected.transpose(1, 2).reshape(q.shape[0], tokens, -1)
        torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)
    return counts


def region_guidance(region_tokens):
    def guidance_for(per_chunk, start, image_count, tokens):
        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            if index < 2 or start is None or not start <= t < start + image_count:
                return []  # references, and every non-image token of a guided row (text, Kontext tokens): plain
            return [(base + j, None, c) for j, c in ((0, 0.4), (1, 0.3)) if t - start in region_tokens[j]]

        return guidance

    return guidance_for


def subject_guidance(subject):
    def guidance_for(per_chunk, start, image_count, tokens):
        if start is None:
            kept = None  # a text-only call (the caption refiner): the reference keeps every token
        else:
            kept = [t for t in range(tokens) if not start <= t < start + image_count or t - start in subject]

        def guidance(b, t):
            return [] if b % per_chunk == 0 else [(b - b % per_chunk, kept, 0.5)]

        return guidance

    return guidance_for


# (model, latent size, patch, mask pixels per latent pixel, extras, where the image tokens of a call start)
KONTEXT_REFERENCE = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(9))  # 3 x 3 appended tokens
MASK_CASES = {
    "flux_kontext": ("flux", (11, 13), 2, 8, {"reference_latents": [KONTEXT_REFERENCE]},
                     lambda tokens, count: CONTEXT_TOKENS),
    "chroma_radiance_p16": ("chroma_radiance_p16", (91, 109), 16, 1, {}, lambda tokens, count: CONTEXT_TOKENS),
    "zimage_pixel_p32": ("zimage_pixel_p32", (181, 213), 32, 1, {},
                         lambda tokens, count: None if tokens == CONTEXT_TOKENS else tokens - count),
}  # fmt: skip


def sample_once(model, latent, batch, extras, seed=3):
    shape = (batch, model.model.latent_format.latent_channels, *latent)
    g = torch.Generator().manual_seed(seed)
    positive, negative = conditioning(batch, seed, extras), conditioning(1, seed + 1, extras)
    comfy.sample.sample(model, torch.randn(shape, generator=g), 1, 1.0, "euler", "simple", positive, negative,
                        torch.zeros(shape), seed=seed, disable_pbar=True)  # fmt: skip


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_regions_match_the_direct_computation(case):
    """In-batch regions: only a guided row's image tokens are guided, each by the references whose region covers
    it; Kontext's appended tokens (after the image tokens) and the text run as the unpatched model."""
    name, latent, patch, scale, extras, start_of = MASK_CASES[case]
    model = tiny_model(name, seed=1)
    regions = regions_for(latent, patch, scale)
    patched = apply_refdrop(model, 0.3, 2, "0.4, 0.3", regions=regions)
    calls = recording(patched)
    sample_once(patched, latent, batch=4, extras=extras)
    placed = [tokens_of(region, latent, patch) for region in regions]
    (first, count), (second, _) = placed
    assert first & second and first - second and second - first
    counts = check_calls(calls, 4, lambda tokens: start_of(tokens, count), count, region_guidance([first, second]))
    if case == "flux_kontext":
        assert set(counts) == {CONTEXT_TOKENS + count + 9}  # text, image, then the 3 x 3 Kontext tokens
    assert count == 6 * 7 and any(start_of(tokens, count) is not None for tokens in counts)


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_subject_masks_match_the_direct_computation(case):
    """Reference-image rows in front: the reference row's keys are its subject image tokens plus every non-image
    token (text and Kontext tokens)."""
    name, latent, patch, scale, extras, start_of = MASK_CASES[case]
    model = tiny_model(name, seed=2)
    family = model_families.model_family(model)
    patched = patch_dit(model, family.dit, ReferenceImageRows(RefDropSettings((0,), (0.5,), "test")))
    options = patched.model_options["transformer_options"]
    options[REFERENCE_ROWS_KEY] = 1  # row 0 of the batch stands for the picture row
    options[REFERENCE_MASKS_KEY] = subject_for(latent, patch, scale)
    calls = recording(patched)
    sample_once(patched, latent, batch=3, extras=extras)
    subject, count = tokens_of(subject_for(latent, patch, scale)[0], latent, patch)
    assert 0 < len(subject) < count
    counts = check_calls(calls, 3, lambda tokens: start_of(tokens, count), count, subject_guidance(subject))
    assert any(start_of(tokens, count) is not None for tokens in counts)
    if case == "flux_kontext":
        assert set(counts) == {CONTEXT_TOKENS + count + 9}
