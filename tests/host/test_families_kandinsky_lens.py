"""Kandinsky 5 Image, Lens, JoyImage, Krea 2, Ideogram 4 (supported) and Ernie Image (refused): tiny real ComfyUI
models on the real sampler. Block names as ``exclude_blocks`` accepts them, what each family's own call order means
(Kandinsky's cross-attention, Krea 2's text fusion, Ideogram 4's per-row segment mask), and why Ernie is refused.
The family-parametrized tests (test_refdrop_dit, test_refdrop_token_layouts, test_reference_image_families) cover
in-batch guidance, pictures, subject masks and regions on the same tiny instances (``tiny_dits.ENTRIES``)."""

from __future__ import annotations

import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
import comfy.supported_models
import pytest
import torch
from refguide.comfy_patches import coverage
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY
from refguide.comfy_patches.model_families import IMAGE_DIT, model_family
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import tiny_dits

TOKENS = 8


def apply_refdrop(model, strength=0.4, exclude_blocks=""):
    return ApplyRefDrop.execute(model, strength, 1, False, "", exclude_blocks).args[0]


class Recorder:
    """An override set below ours (another pack's backend switcher): records every call, ours included."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        q = args[0] if args else kwargs["q"]
        k = args[1] if len(args) > 1 else kwargs["k"]
        extra = bool(options.get(EXTRA_CALL_KEY))
        self.calls.append({"extra": extra, "q": tuple(q.shape), "k": tuple(k.shape)})
        return func(*args, **kwargs)

    def extras_per_call(self):
        """For every plain call in order: (its q shape, its k shape, how many extra attentions of ours followed it)."""
        result = []
        for call in self.calls:
            if call["extra"]:
                result[-1][2] += 1
            else:
                result.append([call["q"], call["k"], 0])
        return result


def with_recorder(model):
    base = model.clone()
    recorder = Recorder()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = recorder
    return base, recorder


def sample(name, model, batch=3, size=16, tokens=TOKENS, steps=1):
    entry = tiny_dits.ENTRIES[name]
    channels = entry.latent_channels
    shape = (batch, channels, 1, size, size) if entry.five_d else (batch, channels, size, size)
    g = torch.Generator().manual_seed(5)
    extras = entry.conditioning_extras(batch, g)
    positive = [[torch.randn(batch, tokens, entry.context_width, generator=g), extras]]
    negative = [[torch.randn(1, tokens, entry.context_width, generator=g), dict(extras)]]
    noise = torch.randn(shape, generator=g)
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, torch.zeros(shape),
                               seed=5, disable_pbar=True)  # fmt: skip


# ---- block names: exclude_blocks takes the model's own names ---------------------------------------------------
# name -> (exclude_blocks, extra attentions per plain call in forward order, every valid name)
BLOCK_NAMES = {
    # text 0 (text self-attention), then per visual block: self-attention, cross-attention (never guided)
    "kandinsky5_image": ("Text 0, visual 1", [0, 1, 0, 0, 0], "text 0, visual 0, visual 1"),
    "lens": ("block 1", [1, 0], "block 0, block 1"),
    "joyimage": ("BLOCK 0", [0, 1], "block 0, block 1"),
    # text fusion: 2 layerwise calls (across encoder layers: always plain), 2 refiner calls; then the blocks
    "krea2": ("text refiner 1, block 0", [0, 0, 1, 0, 0, 1], "text refiner 0, text refiner 1, block 0, block 1"),
    "ideogram4": ("layer 0", [0, 1], "layer 0, layer 1"),
}


@pytest.mark.parametrize("name", list(BLOCK_NAMES))
def test_exclude_blocks_takes_each_models_own_block_names(name):
    exclude, expected, valid = BLOCK_NAMES[name]
    model = tiny_dits.tiny_dit(name, seed=1)
    family = model_family(model)
    assert family.name == tiny_dits.ENTRIES[name].family and family.kind == IMAGE_DIT
    assert ", ".join(family.block_names) == valid
    base, recorder = with_recorder(model)
    sample(name, apply_refdrop(base, exclude_blocks=exclude))
    assert [extras for _, _, extras in recorder.extras_per_call()] == expected
    base, recorder = with_recorder(model)  # nothing excluded: every self-attention call of the family is guided
    sample(name, apply_refdrop(base))
    guided = [extras for _, _, extras in recorder.extras_per_call()]
    assert sum(guided) == tiny_dits.ENTRIES[name].self_calls and set(guided) <= {0, 1}
    with pytest.raises(ValueError, match=rf"'double 0'.*Valid names: {valid}\."):
        apply_refdrop(model, exclude_blocks="double 0")


def test_krea2_text_fusion_across_encoder_layers_runs_plain():
    """Krea 2's text-fusion layerwise blocks attend, for every text token, across the text encoder's layers: B x
    text-tokens rows of ``txtlayers`` tokens. They are no image's self-attention and stay plain; the refiner
    calls (B rows over the text) and the blocks (B rows over [text; image]) are guided."""
    model = tiny_dits.tiny_dit("krea2", seed=2)
    base, recorder = with_recorder(model)
    sample("krea2", apply_refdrop(base), batch=3)
    calls = recorder.extras_per_call()
    layers = tiny_dits.TINY_KREA2["txtlayers"]
    assert [(q[0], q[2], extras) for q, _, extras in calls] == [
        (3 * TOKENS, layers, 0), (3 * TOKENS, layers, 0), (3, TOKENS, 1), (3, TOKENS, 1), (3, TOKENS + 64, 1),
        (3, TOKENS + 64, 1),
    ]  # fmt: skip


def test_kandinsky_cross_attention_is_untouched_even_with_equal_token_counts():
    """Kandinsky 5: per visual block a self-attention over the image, then a cross-attention to the text; with 64
    text tokens and 64 image tokens (a 16 x 16 latent) q, k, v of both have the same shapes."""
    model = tiny_dits.tiny_dit("kandinsky5_image", seed=3)
    base, recorder = with_recorder(model)
    sample("kandinsky5_image", apply_refdrop(base), tokens=64)
    calls = recorder.extras_per_call()
    assert len({(q, k) for q, k, _ in calls}) == 1  # text, visual self and cross: all (3, 2, 64, 32)
    assert [extras for _, _, extras in calls] == [1, 1, 0, 1, 0]  # text 0, visual 0 self/cross, visual 1 self/cross


def test_the_video_configuration_is_not_the_image_family():
    """Only ``Kandinsky5Image`` is this family; the video configuration ``Kandinsky5`` (its base class) is not."""
    video = comfy.supported_models.Kandinsky5(dict(tiny_dits.TINY_KANDINSKY5_IMAGE, visual_embed_dim=132))
    video.set_inference_dtype(torch.float32, None)
    patcher = comfy.model_patcher.ModelPatcher(video.get_model({}), mm.get_torch_device(), mm.unet_offload_device())
    assert model_family(patcher).name != "Kandinsky 5 Image"


# ---- Ideogram 4: a per-row (B, 1, L, L) segment mask --------------------------------------------------------------


def float64_reference(coefficient):
    """Eq. 5 written out per row in float64 for one chunk [reference; guided...]: each attention with its key row's
    own (1, L, L) mask, the reference attention with the reference row's mask."""

    def attend(q, k, v, mask):
        scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5 + mask.double()
        return torch.softmax(scores, dim=-1) @ v.double()

    def override(func, q, k, v, heads, mask=None, transformer_options=None, **kwargs):
        assert kwargs.get("skip_reshape") and mask is not None and mask.shape[-2:] == (q.shape[2], q.shape[2])
        rows = []
        for row in range(q.shape[0]):
            own = attend(q[row], k[row], v[row], mask[row])
            reference = attend(q[row], k[0], v[0], mask[0])
            rows.append(own if row == 0 else (1 - coefficient) * own + coefficient * reference)
        out = torch.stack(rows)  # (B, heads, L, d)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1).to(q.dtype)

    return override


def test_ideogram4_segment_mask_uses_the_reference_rows_own_mask():
    """Ideogram 4 turns the text padding into a per-row block-diagonal (B, 1, L, L) mask; every row pads another
    number of tokens. The guided model equals the model whose attention is Eq. 5 computed in float64 per row."""
    model = tiny_dits.tiny_dit("ideogram4", seed=4)
    g = torch.Generator().manual_seed(6)
    rows, sigma = 3, 0.6
    x = torch.randn(rows, 128, 5, 7, generator=g)
    context = torch.randn(rows, TOKENS, 32, generator=g)
    attention_mask = torch.ones(rows, TOKENS, dtype=torch.long)
    for row in range(rows):
        attention_mask[row, TOKENS - 1 - row :] = 0  # 1, 2, 3 padding tokens

    def call(patcher, override=None):
        options = dict(patcher.model_options.get("transformer_options", {}), cond_or_uncond=[0])
        options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
        if override is not None:
            options[OVERRIDE_KEY] = override
        conds = patcher.model.extra_conds(noise=x, device=x.device, cross_attn=context, attention_mask=attention_mask)
        kwargs = {key: cond.process_cond(batch_size=rows, area=None).cond for key, cond in conds.items()}
        assert kwargs["attention_mask"].shape == (rows, TOKENS)
        with torch.no_grad():
            return patcher.model.apply_model(x, torch.full((rows,), sigma), transformer_options=options, **kwargs)

    ours = call(apply_refdrop(model, strength=0.4))
    expected = call(model, float64_reference(0.4))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    plain = call(model)
    torch.testing.assert_close(ours[0], plain[0], rtol=1e-5, atol=1e-5)  # the reference row runs as unpatched
    assert (ours[1:] - plain[1:]).abs().mean() > 1e-3 * plain.abs().mean()


# ---- Ernie Image: refused, because its attention never sees transformer_options --------------------------------
TINY_ERNIE_IMAGE = {
    "image_model": "ernie", "hidden_size": 64, "num_attention_heads": 2, "num_layers": 1, "ffn_hidden_size": 128,
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "text_in_dim": 32, "rope_axes_dim": (8, 12, 12),
}  # fmt: skip


def tiny_ernie_image():
    config = comfy.supported_models.ErnieImage(dict(TINY_ERNIE_IMAGE))
    config.set_inference_dtype(torch.float32, None)
    model = tiny_dits.init_weights_(config.get_model({}), 0)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def test_ernie_attention_never_reaches_comfyuis_attention_override():
    """The verified reason of the refusal: a whole sampling run of Ernie Image makes no call to the override."""
    model = tiny_ernie_image()
    base, recorder = with_recorder(model)
    shape = (2, 128, 6, 6)
    g = torch.Generator().manual_seed(1)
    positive, negative = (
        [[torch.randn(2, TOKENS, 32, generator=g), {}]],
        [[torch.randn(1, TOKENS, 32, generator=g), {}]],
    )
    out = comfy.sample.sample(base, torch.randn(shape, generator=g), 2, 1.0, "euler", "simple", positive, negative,
                              torch.zeros(shape), seed=1, disable_pbar=True)  # fmt: skip
    assert torch.isfinite(out).all() and recorder.calls == []


def test_ernie_image_is_refused_with_the_reason_by_both_nodes():
    reason = coverage.REFUSED["ErnieImage"]
    assert "without transformer_options" in reason and "override never sees it" in reason
    model = tiny_ernie_image()
    message = "does not work with ErnieImage models: " + re.escape(reason)
    with pytest.raises(ValueError, match="Apply RefDrop " + message):
        apply_refdrop(model)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=message):
        ApplyRefDropImage.execute(model, tiny_dits.tiny_flux2_vae(), image, 0.4, 0, False, "")
