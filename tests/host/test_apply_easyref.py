"""Apply EasyRef on a real (tiny, random) SDXL-layout ComfyUI UNet with matching tiny EasyRef UNet-side weights."""

from __future__ import annotations

import contextlib
import copy
import os

import comfy.model_management as mm
import comfy.sample
import comfy.sampler_helpers
import pytest
import torch
from refguide.comfy_patches import easyref_glue as glue
from refguide.comfy_patches import easyref_patch
from refguide.comfy_patches.attention_calls import plain_attention
from refguide.comfy_patches.easyref_lora import EasyRefModelMismatch
from refguide.easyref import encoder
from refguide.easyref.embeds import EasyRefEmbeds, EmbedsFileError
from refguide.nodes.easyref import ApplyEasyRef
from refguide_testing import reference, tiny_models
from refguide_testing import tiny_easyref as te
from refguide_testing import tiny_qwen2vl as tq

CONTEXT = 2048
TEXT_TOKENS = 8


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("easyref_apply")
    folder = os.path.join(root, "LLM", "Qwen2-VL-2B-Instruct")
    config = tq.make_qwen2vl_folder(folder)
    os.makedirs(root / "easyref")
    tensors = te.make_easyref_checkpoint_for(str(root / "easyref" / "sdxl.safetensors"), config, "sdxl")
    te.make_easyref_checkpoint_for(str(root / "easyref" / "light.safetensors"), config, "sdxl_light", seed=3)
    return folder, root / "easyref", {k[len("unet.") :]: v for k, v in tensors.items() if k.startswith("unet.")}


@pytest.fixture(scope="module")
def easyref(model_files):
    folder, easyref_dir, _ = model_files
    return encoder.load_easyref(folder, str(easyref_dir / "sdxl.safetensors"), dtype=torch.float32)


@pytest.fixture(scope="module")
def easyref_light(model_files):
    folder, easyref_dir, _ = model_files
    return encoder.load_easyref(folder, str(easyref_dir / "light.safetensors"), dtype=torch.float32)


@pytest.fixture(scope="module")
def unet_weights(model_files):
    return model_files[2]


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.tiny_unet("sdxl", seed=0)


def make_embeds(easyref, seed=0, fingerprint=None):
    g = torch.Generator().manual_seed(seed)
    return EasyRefEmbeds(
        cond=torch.randn(1, 64, CONTEXT, generator=g),
        uncond=torch.randn(1, 64, CONTEXT, generator=g),
        num_references=3,
        prompt="a cat",
        fingerprint=fingerprint or easyref.fingerprint,
        checkpoint_name=easyref.checkpoint_name,
    )


def apply(model, easyref, embeds, weight=1.0, lora_strength=1.0, start_at=0.0, end_at=1.0, attn_mask=None):
    return ApplyEasyRef.execute(model, easyref, embeds, weight, lora_strength, start_at, end_at, attn_mask).args[0]


@contextlib.contextmanager
def loaded(patcher):
    """The model loaded (and weight-patched) as ComfyUI's sampler loads it (with its additional models), unloaded
    (unpatched) afterwards."""
    _, conds, models = comfy.sampler_helpers.prepare_sampling(
        patcher, (1, 4, 16, 16), {}, model_options=patcher.model_options
    )
    try:
        yield
    finally:
        comfy.sampler_helpers.cleanup_models(conds, models)
        mm.unload_all_models()


@contextlib.contextmanager
def loaded_lowvram(patcher):
    """Loaded the way ComfyUI loads models on --lowvram / --novram servers (``ModelPatcher.patch_model`` with a tiny
    ``lowvram_model_memory``, as ``load_models_gpu`` passes 0.1 for --novram): every castable layer stays offloaded
    and casts its weight per call, and the weight patches (the EasyRef LoRA) are applied per call by ComfyUI's
    ``LowVramPatch`` instead of being merged. On a machine without a GPU the offload and compute devices are both
    the CPU, but the code path is the one those servers run."""
    patchers = [patcher, *patcher.get_nested_additional_models()]
    for each in patchers:
        each.patch_model(device_to=mm.get_torch_device(), lowvram_model_memory=0.1)
    try:
        yield
    finally:
        for each in reversed(patchers):
            each.unpatch_model(device_to=each.offload_device)


def inputs(batch, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    context = torch.randn(batch, TEXT_TOKENS, CONTEXT, generator=g)
    y = torch.randn(batch, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
    return x, context, y


def unet_call(patcher, x, context, y, cond_or_uncond, sigma=5.0):
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    options["sigmas"] = torch.full((x.shape[0],), sigma)
    with torch.no_grad():
        return patcher.model.diffusion_model(
            x, torch.full((x.shape[0],), 500.0), context, y, transformer_options=options
        )


# --------------------------------------------------------------------------------------------- float64 reference
def mha(q, k, v, heads):
    return reference.direct_attention(q, k, v, heads)


def merged(base_state, weights, module, proc, projection, strength):
    """W + strength * up @ down in float64 (the LoRA merge)."""
    name = {"to_out": "to_out.0.weight"}.get(projection, f"{projection}.weight")
    w = base_state[f"diffusion_model.{module}.{name}"].double()
    if strength:
        up = weights[f"{proc}.{projection}_lora.up.weight"].double()
        down = weights[f"{proc}.{projection}_lora.down.weight"].double()
        w = w + strength * up @ down
    return w


def expected_attn2(base_state, weights, module, proc, n, context, kinds, branches, heads, lora):
    """to_out(Attn(Q, K_text, V_text) + sum_b w_b * gate * Attn(Q, W_k_ip R_kind, W_v_ip R_kind)), float64."""
    n, context = n.double(), context.double()
    q = n @ merged(base_state, weights, module, proc, "to_q", lora).T
    k = context @ merged(base_state, weights, module, proc, "to_k", lora).T
    v = context @ merged(base_state, weights, module, proc, "to_v", lora).T
    out = mha(q, k, v, heads)
    per = n.shape[0] // len(kinds)
    for branch_weights, embeds, weight, gate in branches:
        k_ip = branch_weights[f"{proc}.to_k_ip.weight"].double()
        v_ip = branch_weights[f"{proc}.to_v_ip.weight"].double()
        for r in range(n.shape[0]):
            tokens = (embeds.cond if kinds[r // per] == 0 else embeds.uncond).double()
            ref = mha(q[r : r + 1], tokens @ k_ip.T, tokens @ v_ip.T, heads)
            if gate is not None:
                ref = ref * gate[r % per]
            out[r : r + 1] += weight * ref
    w_out = merged(base_state, weights, module, proc, "to_out", lora)
    return out @ w_out.T + base_state[f"diffusion_model.{module}.to_out.0.bias"].double()


MIDDLE = ("middle_block.1.transformer_blocks.1.attn2", "mid_block.attentions.0.transformer_blocks.1.attn2.processor")
INPUT4 = (
    "input_blocks.4.1.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
)
OUTPUT5 = (
    "output_blocks.5.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor",
)


def capture(patcher, module, x, context, y, cond_or_uncond):
    """Input of the layer's attention (norm2 output) and output of its to_out, from a real UNet call."""
    unet = patcher.model.diffusion_model
    block = unet.get_submodule(module.rsplit(".", 1)[0])
    seen = {}
    hooks = [
        block.norm2.register_forward_hook(lambda m, i, o: seen.setdefault("n", o.detach().clone())),
        block.attn2.to_out.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach().clone())),
    ]
    try:
        unet_call(patcher, x, context, y, cond_or_uncond)
    finally:
        for h in hooks:
            h.remove()
    return seen["n"], seen["out"], block.attn2.heads


# --------------------------------------------------------------------------------------------- tests
def test_every_attn2_gets_one_object_per_key(sdxl, easyref):
    patched = apply(sdxl, easyref, make_embeds(easyref))
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    expected = {key for _, key, _ in te.SDXL_TINY_LAYOUT}
    assert set(replaces) == expected and ("middle", 0, 1) in replaces
    objects = list(replaces.values())
    assert all(isinstance(o, easyref_patch.DecoupledCrossAttention) for o in objects)
    assert len({id(o) for o in objects}) == len(objects)
    assert "attn1" not in replaces
    assert "patches_replace" not in sdxl.model_options.get("transformer_options", {})
    assert not sdxl.patches  # the input model is untouched


@pytest.mark.parametrize("layer", [MIDDLE, INPUT4, OUTPUT5])
@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
def test_patched_layer_matches_float64(sdxl, easyref, unet_weights, layer, order):
    embeds = make_embeds(easyref, seed=1)
    base_state = {k: v.clone() for k, v in sdxl.model.state_dict().items()}
    patched = apply(sdxl, easyref, embeds, weight=0.8, lora_strength=0.7)
    x, context, y = inputs(4)
    with loaded(patched):
        n, out, heads = capture(patched, layer[0], x, context, y, order)
    want = expected_attn2(
        base_state, unet_weights, layer[0], layer[1], n, context, order, [(unet_weights, embeds, 0.8, None)], heads, 0.7
    )
    torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=2e-5)
    # the same call without EasyRef differs by far more than that tolerance
    with loaded(sdxl):
        _, plain_out, _ = capture(sdxl, layer[0], x, context, y, order)
    assert (plain_out.double() - want).abs().max() > 1e-2


def test_lora_patches_are_w_plus_up_down(sdxl, easyref, unet_weights):
    base_state = {k: v.clone() for k, v in sdxl.model.state_dict().items()}
    patched = apply(sdxl, easyref, make_embeds(easyref), weight=0.0, lora_strength=0.5)
    assert len(patched.patches) == 4 * 2 * len(te.SDXL_TINY_LAYOUT)  # q/k/v/out of every attn1 and attn2
    with loaded(patched):
        state = sdxl.model.state_dict()
        for diffusers, (group, block_id, index), _ in te.SDXL_TINY_LAYOUT:
            prefix = {
                "input": f"input_blocks.{block_id}.1",
                "middle": "middle_block.1",
                "output": f"output_blocks.{block_id}.1",
            }[group]
            for attn in ("attn1", "attn2"):
                module = f"{prefix}.transformer_blocks.{index}.{attn}"
                proc = f"{diffusers}.{attn}.processor"
                for projection, name in [("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")]:
                    got = state[f"diffusion_model.{module}.{name}.weight"].double()
                    want = merged(base_state, unet_weights, module, proc, projection, 0.5)
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for key, value in sdxl.model.state_dict().items():  # unpatched afterwards
        assert torch.equal(value, base_state[key]), key


def test_weight_zero_lora_zero_is_bit_identical(sdxl, easyref):
    patched = apply(sdxl, easyref, make_embeds(easyref), weight=0.0, lora_strength=0.0)
    assert not patched.patches
    assert "patches_replace" not in patched.model_options.get("transformer_options", {})
    x, context, y = inputs(2)
    with loaded(patched):
        a = unet_call(patched, x, context, y, [1, 0])
    with loaded(sdxl):
        b = unet_call(sdxl, x, context, y, [1, 0])
    assert torch.equal(a, b)


def test_lowvram_loading_gives_the_full_load_output(sdxl, easyref):
    """Apply EasyRef (LoRA + decoupled cross-attention) followed by Apply RefDrop, loaded as on --lowvram/--novram:
    the LoRA goes through ComfyUI's per-call weight functions and the output equals the fully loaded model's."""
    from refguide.nodes.refdrop import ApplyRefDrop

    easyref_model = apply(sdxl, easyref, make_embeds(easyref, seed=2), weight=0.9, lora_strength=0.8)
    patched = ApplyRefDrop.execute(easyref_model, 0.4, 1, False).args[0]
    base_state = {k: v.clone() for k, v in sdxl.model.state_dict().items()}
    x, context, y = inputs(4, seed=5)
    with loaded(patched):
        full = unet_call(patched, x, context, y, [1, 0])
    with loaded_lowvram(patched):
        assert patched.model.model_lowvram and patched.model.lowvram_patch_counter == len(patched.patches)
        low = unet_call(patched, x, context, y, [1, 0])
        assert all(torch.equal(v, base_state[k]) for k, v in sdxl.model.state_dict().items())  # nothing merged
    with loaded(sdxl):
        plain = unet_call(sdxl, x, context, y, [1, 0])
    torch.testing.assert_close(low, full, rtol=1e-5, atol=1e-5)
    assert (low - plain).abs().max() > 1e-2  # EasyRef and RefDrop are in the lowvram output
    assert not patched.model.model_lowvram
    for key, value in sdxl.model.state_dict().items():  # unpatched afterwards
        assert torch.equal(value, base_state[key]), key


def test_weight_zero_keeps_only_the_lora_and_lora_zero_only_the_branch(sdxl, easyref):
    lora_only = apply(sdxl, easyref, make_embeds(easyref), weight=0.0, lora_strength=1.0)
    assert lora_only.patches and "patches_replace" not in lora_only.model_options.get("transformer_options", {})
    branch_only = apply(sdxl, easyref, make_embeds(easyref), weight=1.0, lora_strength=0.0)
    assert not branch_only.patches and branch_only.model_options["transformer_options"]["patches_replace"]["attn2"]


def layer_object(patched, key=("middle", 0, 1)):
    return patched.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def layer_call(obj, q, k, v, cond_or_uncond, sigma=5.0, shape=(4, 4), heads=3):
    options = {
        "n_heads": heads,
        "dim_head": q.shape[-1] // heads,
        "attn_precision": None,
        "cond_or_uncond": list(cond_or_uncond),
        "sigmas": torch.full((q.shape[0],), sigma),
        "activations_shape": [q.shape[0], q.shape[-1], *shape],
    }
    with torch.no_grad():
        return obj(q, k, v, options)


def random_qkv(rows, tokens=16, width=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, tokens, width, generator=g),
        torch.randn(rows, TEXT_TOKENS, width, generator=g),
        torch.randn(rows, TEXT_TOKENS, width, generator=g),
    )


def expected_layer(q, k, v, kinds, branches, heads=3, proc=MIDDLE[1]):
    """Attn(q, k, v) + sum_b w_b * gate * Attn(q, W_k_ip R, W_v_ip R) in float64, rows mapped by chunk kind."""
    q, k, v = q.double(), k.double(), v.double()
    out = mha(q, k, v, heads)
    per = q.shape[0] // len(kinds)
    for weights, embeds, weight, gate in branches:
        k_ip, v_ip = weights[f"{proc}.to_k_ip.weight"].double(), weights[f"{proc}.to_v_ip.weight"].double()
        for r in range(q.shape[0]):
            tokens = (embeds.cond if kinds[r // per] == 0 else embeds.uncond).double()
            ref = mha(q[r : r + 1], tokens @ k_ip.T, tokens @ v_ip.T, heads)
            out[r : r + 1] += weight * (ref if gate is None else ref * gate[r % per])
    return out


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [1], [1, 0, 0]])
def test_chunk_orders(sdxl, easyref, unet_weights, order):
    embeds = make_embeds(easyref, seed=2)
    obj = layer_object(apply(sdxl, easyref, embeds, weight=1.0, lora_strength=0.0))
    q, k, v = random_qkv(2 * len(order))
    got = layer_call(obj, q, k, v, order)
    want = expected_layer(q, k, v, order, [(unet_weights, embeds, 1.0, None)])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=5e-5)


def test_split_calls_equal_the_batched_call(sdxl, easyref):
    obj = layer_object(apply(sdxl, easyref, make_embeds(easyref, seed=3), weight=1.0, lora_strength=0.0))
    q, k, v = random_qkv(4)
    batched = layer_call(obj, q, k, v, [1, 0])
    negative = layer_call(obj, q[:2], k[:2], v[:2], [1])
    positive = layer_call(obj, q[2:], k[2:], v[2:], [0])
    torch.testing.assert_close(torch.cat([negative, positive]), batched, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(negative, layer_call(obj, q[:2], k[:2], v[:2], [0]), atol=1e-3)


def test_start_end_window_uses_the_model_sigmas(sdxl, easyref):
    patched = apply(sdxl, easyref, make_embeds(easyref), weight=1.0, lora_strength=0.0, start_at=0.3, end_at=0.6)
    obj = layer_object(patched)
    ms = sdxl.get_model_object("model_sampling")
    start, end = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.6)
    assert obj.kwargs[0]["sigma_start"] == pytest.approx(start) and obj.kwargs[0]["sigma_end"] == pytest.approx(end)
    q, k, v = random_qkv(2)
    text = layer_call(plain_attention, q, k, v, [1, 0])  # ComfyUI's own attention: the text part alone
    for sigma, active in [(start * 1.01, False), (start * 0.99, True), ((start + end) / 2, True), (end * 1.01, True),
                          (end * 0.99, False), (0.03, False)]:  # fmt: skip
        got = layer_call(obj, q, k, v, [1, 0], sigma=sigma)
        assert torch.equal(got, text) != active, sigma


def test_window_in_a_real_sampler_run(sdxl, easyref):
    """Count the steps in which the reference branch ran: 10 steps, window 0.3..0.6."""
    patched = apply(sdxl, easyref, make_embeds(easyref), weight=1.0, lora_strength=0.0, start_at=0.3, end_at=0.6)
    obj = layer_object(patched)
    branch = obj.callback[0]
    calls = []
    original = branch.__call__

    class Counting:
        def __call__(self, out, q, k, v, extra_options, **kwargs):
            calls.append(float(extra_options["sigmas"][0]))
            return original(out, q, k, v, extra_options, **kwargs)

    obj.callback[0] = Counting()
    sample(patched, steps=10)
    ms = sdxl.get_model_object("model_sampling")
    start, end = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.6)
    assert calls and all(start >= s >= end for s in calls)
    assert 2 <= len(set(calls)) <= 5


def test_mask_restricts_the_reference_tokens(sdxl, easyref, unet_weights):
    embeds = make_embeds(easyref, seed=4)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 1.0  # top half of the image
    obj = layer_object(apply(sdxl, easyref, embeds, weight=1.0, lora_strength=0.0, attn_mask=mask))
    q, k, v = random_qkv(4)
    got = layer_call(obj, q, k, v, [1, 0], shape=(4, 4))
    gate = torch.tensor([1.0] * 8 + [0.0] * 8).view(1, 16, 1).expand(2, 16, 1).double()
    want = expected_layer(q, k, v, [1, 0], [(unet_weights, embeds, 1.0, gate)])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=5e-5)
    text = layer_call(plain_attention, q, k, v, [1, 0])  # ComfyUI's own attention: the text part alone
    torch.testing.assert_close(got[:, 8:], text[:, 8:])
    assert not torch.allclose(got[:, :8], text[:, :8], atol=1e-3)


def test_two_nodes_stack_both_branches(sdxl, easyref, unet_weights):
    first, second = make_embeds(easyref, seed=5), make_embeds(easyref, seed=6)
    once = apply(sdxl, easyref, first, weight=0.6, lora_strength=1.0)
    twice = apply(once, easyref, second, weight=0.9, lora_strength=0.0)
    obj = layer_object(twice)
    assert len(obj.callback) == 2 and len(layer_object(once).callback) == 1  # the first model is unchanged
    q, k, v = random_qkv(4)
    want = expected_layer(q, k, v, [1, 0], [(unet_weights, first, 0.6, None), (unet_weights, second, 0.9, None)])
    torch.testing.assert_close(layer_call(obj, q, k, v, [1, 0]).double(), want, rtol=1e-5, atol=5e-5)
    # ComfyUI loads both branches' projections with the UNet, each registered once (as an additional model)
    assert twice.model_patches_models() == []  # not also listed by the attn2 objects
    registered = twice.get_nested_additional_models()
    assert {id(p.model) for p in registered} == {id(o.callback[i].projections) for o in [obj] for i in (0, 1)}
    with loaded(twice):
        projections = [
            m for m in mm.current_loaded_models if isinstance(m.model.model, easyref_patch.ReferenceProjections)
        ]
    assert len(projections) == 2


# --- A stand-in for the IPAdapter pack's attn2 object (its CrossAttentionPatch: ``to``, ``add`` and ``__call__``
# summing the callbacks in their sigma windows) and its patching function, which adds to the object it finds on its
# clone in place.
class CrossAttentionPatchLike:
    def __init__(self, callback=None, **kwargs):
        self.callback = [callback]
        self.kwargs = [kwargs]

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to(self, device_or_dtype):
        for kwargs in self.kwargs:
            for key, value in kwargs.items():
                if isinstance(value, torch.Tensor) and isinstance(device_or_dtype, torch.device):
                    kwargs[key] = value.to(device_or_dtype)
        return self

    def __call__(self, q, k, v, extra_options):
        out = plain_attention(q, k, v, extra_options)
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else 999999999.9
        for i, callback in enumerate(self.callback):
            if sigma <= self.kwargs[i]["sigma_start"] and sigma >= self.kwargs[i]["sigma_end"]:
                out = out + callback(out, q, k, v, extra_options, **self.kwargs[i])
        return out


def ipadapter_like_attention(out, q, k, v, extra_options, ip_k=None, ip_v=None, weight=1.0, **kwargs):
    rows = q.shape[0]
    return weight * plain_attention(q, ip_k.expand(rows, -1, -1), ip_v.expand(rows, -1, -1), extra_options)


def clone_0_30(model):
    """ComfyUI 0.30.0: clone() copies dicts and lists of model_options and shares the objects in them."""
    return model.clone()


def clone_0_3_64(model):
    """ComfyUI 0.3.64: clone() deep-copies model_options (simulated: the clone's options are replaced by a deep
    copy of the original's, so only ``__deepcopy__`` decides what the clone gets)."""
    clone = model.clone()
    clone.model_options = copy.deepcopy(model.model_options)
    return clone


CLONES = {"comfyui-0.30.0": clone_0_30, "comfyui-0.3.64": clone_0_3_64}


def ipadapter_like_patch(model, keys, clone, seed=9, weight=0.5):
    """What the IPAdapter pack does: clone, then per key a new object or ``existing.add`` (in place)."""
    g = torch.Generator().manual_seed(seed)
    kwargs = {
        "ip_k": torch.randn(1, 4, 192, generator=g),
        "ip_v": torch.randn(1, 4, 192, generator=g),
        "weight": weight,
        "sigma_start": 999999999.9,
        "sigma_end": 0.0,
    }
    patched = clone(model)
    to = patched.model_options["transformer_options"]
    replaces = to.get("patches_replace", {}).get("attn2", {})
    for key in keys:
        if key in replaces:
            replaces[key].add(ipadapter_like_attention, **kwargs)
        else:
            patched.set_model_attn2_replace(CrossAttentionPatchLike(ipadapter_like_attention, **kwargs), *key)
    return patched, kwargs


def ipadapter_term(q, ip):
    rows = q.shape[0]
    k, v = ip["ip_k"].double().expand(rows, -1, -1), ip["ip_v"].double().expand(rows, -1, -1)
    return ip["weight"] * mha(q.double(), k, v, 3)


KEYS = [key for _, key, _ in te.SDXL_TINY_LAYOUT]


@pytest.mark.parametrize("clone", CLONES.values(), ids=CLONES.keys())
def test_ipadapter_after_easyref_leaves_the_easyref_output_unchanged(sdxl, easyref, unet_weights, clone):
    embeds = make_embeds(easyref, seed=7)
    ours = apply(sdxl, easyref, embeds, weight=1.0, lora_strength=0.0)
    both, ip = ipadapter_like_patch(ours, KEYS, clone)
    q, k, v = random_qkv(4)
    easyref_only = expected_layer(q, k, v, [1, 0], [(unet_weights, embeds, 1.0, None)])
    for key in KEYS:
        assert len(layer_object(ours, key).callback) == 1 and len(layer_object(both, key).callback) == 2
    obj = layer_object(both)
    assert isinstance(obj, easyref_patch.DecoupledCrossAttention)
    torch.testing.assert_close(layer_call(obj, q, k, v, [1, 0]).double(), easyref_only + ipadapter_term(q, ip),
                               rtol=1e-5, atol=5e-5)  # fmt: skip
    # upstream: what the Apply EasyRef output computes is what it computed before IPAdapter was applied
    torch.testing.assert_close(layer_call(layer_object(ours), q, k, v, [1, 0]).double(), easyref_only,
                               rtol=1e-5, atol=5e-5)  # fmt: skip


@pytest.mark.parametrize("clone", CLONES.values(), ids=CLONES.keys())
def test_easyref_after_ipadapter_leaves_both_upstream_models_unchanged(sdxl, easyref, unet_weights, clone):
    with_ip, ip = ipadapter_like_patch(sdxl, KEYS, clone)
    embeds = make_embeds(easyref, seed=7)
    both = apply(with_ip, easyref, embeds, weight=1.0, lora_strength=0.0)
    obj = layer_object(both)
    assert isinstance(obj, CrossAttentionPatchLike) and len(obj.callback) == 2
    assert len(both.get_nested_additional_models()) == 1  # the projections still load with the UNet
    q, k, v = random_qkv(4)
    easyref_only = expected_layer(q, k, v, [1, 0], [(unet_weights, embeds, 1.0, None)])
    text = mha(q.double(), k.double(), v.double(), 3)
    torch.testing.assert_close(layer_call(obj, q, k, v, [1, 0]).double(), easyref_only + ipadapter_term(q, ip),
                               rtol=1e-5, atol=5e-5)  # fmt: skip
    # upstream: the IPAdapter model still computes text + its own term only
    torch.testing.assert_close(layer_call(layer_object(with_ip), q, k, v, [1, 0]).double(), text + ipadapter_term(q, ip),
                               rtol=1e-5, atol=5e-5)  # fmt: skip
    # a second IPAdapter after Apply EasyRef adds to the IPAdapter object EasyRef joined: the EasyRef output keeps
    # computing what it did
    three, ip2 = ipadapter_like_patch(both, KEYS, clone, seed=10, weight=0.25)
    assert len(layer_object(three).callback) == 3 and len(layer_object(both).callback) == 2
    torch.testing.assert_close(layer_call(layer_object(both), q, k, v, [1, 0]).double(),
                               easyref_only + ipadapter_term(q, ip), rtol=1e-5, atol=5e-5)  # fmt: skip
    torch.testing.assert_close(layer_call(layer_object(three), q, k, v, [1, 0]).double(),
                               easyref_only + ipadapter_term(q, ip) + ipadapter_term(q, ip2), rtol=1e-5, atol=5e-5)  # fmt: skip


class SlottedPatch:
    """Another pack's add-protocol object that cannot be forked (no __dict__ to copy its lists from)."""

    __slots__ = ("callback", "kwargs")

    def __init__(self):
        self.callback, self.kwargs = [], []

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        return plain_attention(q, k, v, extra_options)


def test_a_foreign_object_that_cannot_be_copied_is_an_error(sdxl, easyref):
    before = sdxl.clone()
    before.set_model_attn2_replace(SlottedPatch(), "middle", 0, 1)
    with pytest.raises(TypeError, match=r"SlottedPatch.*cannot be copied.*Apply EasyRef before that node"):
        apply(before, easyref, make_embeds(easyref))
    assert layer_object(before).callback == []  # nothing was added to it


def test_a_plain_attn2_replace_is_chained(sdxl, easyref, unet_weights):
    def doubled_text(q, k, v, extra_options):
        return 2.0 * plain_attention(q, k, v, extra_options)

    before = sdxl.clone()
    before.set_model_attn2_replace(doubled_text, "middle", 0)  # a 2-tuple key covers every depth
    embeds = make_embeds(easyref, seed=8)
    obj = layer_object(apply(before, easyref, embeds, weight=1.0, lora_strength=0.0))
    assert obj.inner is doubled_text
    q, k, v = random_qkv(4)
    text = mha(q.double(), k.double(), v.double(), 3)
    want = expected_layer(q, k, v, [1, 0], [(unet_weights, embeds, 1.0, None)]) + text
    torch.testing.assert_close(layer_call(obj, q, k, v, [1, 0]).double(), want, rtol=1e-5, atol=5e-5)


def test_patch_protocol(sdxl, easyref):
    patched = apply(sdxl, easyref, make_embeds(easyref))
    obj = layer_object(patched)
    forked = copy.deepcopy(obj)  # what ComfyUI 0.3.64's clone() does to model_options
    assert forked is not obj and forked.callback == obj.callback and forked.callback is not obj.callback
    forked.add(lambda *a, **k: 0.0)
    assert len(obj.callback) == 1
    assert copy.deepcopy(obj.callback[0]) is obj.callback[0]  # branches (and their projections) are shared
    obj.to(torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in obj.callback[0].tokens.values())
    (projections,) = patched.get_additional_models_with_key(glue.PROJECTIONS_KEY)
    assert projections.model is obj.callback[0].projections
    assert projections.load_device == sdxl.load_device and projections.offload_device == sdxl.offload_device
    with loaded(patched):
        assert any(m.model is projections for m in mm.current_loaded_models)
    params = sum(p.numel() for p in projections.model.parameters())
    assert params == sum(2 * width * CONTEXT for _, _, width in te.SDXL_TINY_LAYOUT)


def test_non_sdxl_models_are_refused(easyref, easyref_light, sdxl):
    sd15 = tiny_models.tiny_unet("sd15")
    with pytest.raises(
        ValueError, match=r"works with SDXL models; this model \(SD-family UNet, cross-attention width 64"
    ):
        apply(sd15, easyref, make_embeds(easyref))
    with pytest.raises(ValueError, match=r"Stable Video Diffusion model.*use the 'SVD Temporal RefDrop' node"):
        apply(tiny_models.tiny_unet("svd"), easyref, make_embeds(easyref))
    light = tiny_models.tiny_unet("sdxl_light")
    with pytest.raises(EasyRefModelMismatch, match=r"(?s)do not fit this model.*down_blocks\.1\.attentions\.0"):
        apply(light, easyref, make_embeds(easyref))
    with pytest.raises(
        EasyRefModelMismatch, match=r"(?s)input_blocks\.4\.1\.transformer_blocks\.0\.attn1: the checkpoint has no"
    ):
        apply(sdxl, easyref_light, make_embeds(easyref_light))
    fitting = apply(light, easyref_light, make_embeds(easyref_light))
    assert len(fitting.model_options["transformer_options"]["patches_replace"]["attn2"]) == len(te.SDXL_LIGHT_LAYOUT)


def test_embeds_from_another_checkpoint_are_refused(sdxl, easyref, easyref_light):
    with pytest.raises(EmbedsFileError, match="different EasyRef checkpoint"):
        apply(sdxl, easyref, make_embeds(easyref_light))


def test_validate_inputs():
    assert ApplyEasyRef.validate_inputs(start_at=0.2, end_at=0.8) is True
    assert "start_at" in ApplyEasyRef.validate_inputs(start_at=0.9, end_at=0.1)


# --------------------------------------------------------------------------------------------- sampling, ControlNet
def conditioning(batch, seed, control=None):
    g = torch.Generator().manual_seed(seed)
    extras = {"pooled_output": torch.randn(batch, tiny_models.TINY_POOLED_DIM, generator=g)}
    if control is not None:
        extras["control"] = control
        extras["control_apply_to_uncond"] = False
    return [torch.randn(batch, TEXT_TOKENS, CONTEXT, generator=g), extras]


def sample(model, steps=3, positive=None, negative=None, batch=2):
    latent = torch.zeros(batch, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(11))
    positive = positive or [conditioning(batch, 1)]
    negative = negative or [conditioning(1, 2)]
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, seed=11,
                               disable_pbar=True)  # fmt: skip


def test_sampling_runs_and_changes_the_result(sdxl, easyref):
    plain = sample(sdxl)
    patched = sample(apply(sdxl, easyref, make_embeds(easyref)))
    assert torch.isfinite(patched).all() and (patched - plain).abs().max() > 1e-3


def test_controlnet_sees_text_only(sdxl, easyref):
    control = te.tiny_controlnet("sdxl")
    hint = torch.rand(1, 128, 128, 3).movedim(-1, 1)
    control = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
    contexts, control_outputs = [], []

    def record_context(module, args, output):
        contexts.append(args[0].shape)

    def record_output(module, args, output):
        control_outputs.append({k: [t.clone() for t in v if t is not None] for k, v in output.items()})

    hooks = [
        m.register_forward_hook(record_context)
        for n, m in control.control_model.named_modules()
        if n.endswith("attn2.to_k")
    ]
    hooks.append(control.control_model.register_forward_hook(record_output))
    calls = []
    patched = apply(sdxl, easyref, make_embeds(easyref))
    for obj in patched.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        branch = obj.callback[0]
        obj.callback[0] = lambda *a, _b=branch, **kw: calls.append(1) or _b(*a, **kw)
    try:
        positive = [conditioning(2, 1, control=control)]
        sample(sdxl, steps=1, positive=positive)
        plain_controls = list(control_outputs)
        control_outputs.clear()
        contexts.clear()
        sample(patched, steps=1, positive=positive)
    finally:
        for h in hooks:
            h.remove()
    assert calls  # the UNet's cross-attention got the reference branch ...
    assert contexts and all(shape[1] == TEXT_TOKENS for shape in contexts)  # ... the ControlNet only the text
    for a, b in zip(plain_controls, control_outputs, strict=True):
        for key in a:
            for x, y in zip(a[key], b[key], strict=True):
                assert torch.equal(x, y)


def test_per_image_masks_skip_the_reference_image_rows(sdxl, easyref):
    """Apply EasyRef with one mask per image, then Apply RefDrop (Reference Image): the reference picture's rows in
    front of each chunk take the first image's mask (they are conditioned like it) and image i keeps mask i, i.e.
    the call equals in-batch RefDrop on [x_ref, images] with masks [m0, m0, m1] and the first row's conditioning."""
    from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
    from refguide_testing.model_calls import in_front, model_call, noised_references, own_rows

    vae, sigma, order, size = tiny_models.tiny_vae(), 4.0, [1, 0], (16, 16)
    image = torch.linspace(0, 1, 96 * 128 * 3).reshape(1, 96, 128, 3)
    masks = torch.zeros(2, 64, 64)
    masks[0, :32] = 1.0  # image 0: top half
    masks[1, :, :16] = 1.0  # image 1: left quarter
    embeds = make_embeds(easyref, seed=8)

    x, context, y = inputs(4, seed=9, size=size[0])
    masked = apply(sdxl, easyref, embeds, weight=1.0, lora_strength=0.6, attn_mask=masks)
    got = model_call(ApplyRefDropImage.execute(masked, vae, image, 0.4, 5, False).args[0], x, sigma, context, y, order)

    x_ref = noised_references(sdxl, vae, image, size, sigma, seed=5)
    in_batch = apply(sdxl, easyref, embeds, weight=1.0, lora_strength=0.6, attn_mask=masks[[0, 0, 1]])
    in_batch = ApplyRefDrop.execute(in_batch, 0.4, 1, False).args[0]
    chunks = len(order)
    want = model_call(in_batch, in_front(x, chunks, x_ref), sigma, in_front(context, chunks, 1),
                      in_front(y, chunks, 1), order)  # fmt: skip
    want = own_rows(want, chunks, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
