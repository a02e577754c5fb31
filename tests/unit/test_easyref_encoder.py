"""The EasyRef encoder against a direct reference computation written from the README steps (float32).

The reference below uses only plain tensor operations over the weights read from the files: token
embedding, per-image vision tower (patch embedding, 2-D rotary attention within the image, merger),
decoder layers 0..L-2 with sequential positions and causal attention, the final RMSNorm, the 64
reference tokens appended after the whole sequence, the trained final layer (causal, positions
arange(L+64)) with its own RMSNorm, and the projector.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from refguide.easyref import checkpoint as ckpt
from refguide.easyref import encoder, preprocess
from refguide_testing import tiny_qwen2vl as tq
from safetensors.torch import load_file

pytestmark = pytest.mark.mllm

SPEC_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
SPEC_INSTRUCTION = (
    "Visualize a scene that closely resembles the provided images, capturing the essence and details "
    "described in this prompt:\n"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("easyref_models")
    folder, path, config = tq.make_tiny_models(str(root))
    plain = str(root / "easyref" / "easyref-stock-mllm.safetensors")
    tq.make_easyref_checkpoint(plain, config, with_mllm=False)
    return {"folder": folder, "ckpt": path, "ckpt_stock": plain, "config": config}


@pytest.fixture(scope="module")
def model(tiny):
    return encoder.load_easyref(tiny["folder"], tiny["ckpt"], dtype=torch.float32)


# ---- reference computation ---------------------------------------------------------------------


def rms_norm(x, w, eps=1e-6):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def attention(q, k, v, causal):
    # q [H, N, D], k/v [H, N, D]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def decoder_layer(x, w, p, cfg, positions):
    """One Qwen2 decoder layer over x [N, hidden] with 1-D RoPE at ``positions`` and causal attention."""
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // heads
    h = rms_norm(x, w[p + "input_layernorm.weight"])
    q = h @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]
    k = h @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]
    v = h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]
    q = q.view(-1, heads, hd).transpose(0, 1)
    k = k.view(-1, kv_heads, hd).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
    v = v.view(-1, kv_heads, hd).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    a = attention(q, k, v, causal=True).transpose(0, 1).reshape(x.shape[0], -1)
    x = x + a @ w[p + "self_attn.o_proj.weight"].T
    h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
    mlp = F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
    return x + mlp @ w[p + "mlp.down_proj.weight"].T


def vision_tower(pixel_values, grid, w, vcfg):
    """Qwen2-VL vision tower over ONE image: patch embed, blocks with 2-D RoPE, 2x2 merger."""
    _, gh, gw = grid
    e, nh, m = vcfg["embed_dim"], vcfg["num_heads"], vcfg["spatial_merge_size"]
    hd = e // nh
    x = pixel_values @ w["visual.patch_embed.proj.weight"].reshape(e, -1).T
    # Patch order inside the packed pixels: merge windows of m x m, row-major inside each window.
    hpos = torch.arange(gh)[:, None].expand(gh, gw).reshape(gh // m, m, gw // m, m).permute(0, 2, 1, 3).flatten()
    wpos = torch.arange(gw)[None, :].expand(gh, gw).reshape(gh // m, m, gw // m, m).permute(0, 2, 1, 3).flatten()
    d = hd // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    rot = torch.cat([hpos[:, None] * inv_freq[None], wpos[:, None] * inv_freq[None]], dim=-1)
    emb = torch.cat((rot, rot), dim=-1)
    cos, sin = emb.cos()[None], emb.sin()[None]
    for i in range(vcfg["depth"]):
        p = f"visual.blocks.{i}."
        h = F.layer_norm(x, (e,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).view(-1, 3, nh, hd).permute(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = attention(q, k, v, causal=False).transpose(0, 1).reshape(x.shape[0], e)
        x = x + a @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        h = F.layer_norm(x, (e,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        h = h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (e,), w["visual.merger.ln_q.weight"], w["visual.merger.ln_q.bias"], eps=1e-6)
    x = x.reshape(-1, e * m * m)
    x = F.gelu(x @ w["visual.merger.mlp.0.weight"].T + w["visual.merger.mlp.0.bias"])
    return x @ w["visual.merger.mlp.2.weight"].T + w["visual.merger.mlp.2.bias"]


def reference_weights(folder, checkpoint_path):
    """The MLLM weights by canonical name: the stock folder's, overridden by the checkpoint's fine-tuned ones."""
    stock = load_file(f"{folder}/model.safetensors")
    w = {
        ("visual." + k[7:] if k.startswith("visual.") else k[len("model.") :]): v
        for k, v in stock.items()
        if k != "lm_head.weight"
    }
    ck = load_file(checkpoint_path)
    for k, v in ck.items():  # fine-tuned MLLM weights (old layout) override the stock ones
        if k.startswith("multimodal_llm.model."):
            w[k[len("multimodal_llm.model.") :]] = v
        elif k.startswith("multimodal_llm.visual."):
            w[k[len("multimodal_llm.") :]] = v
    return w, ck


def reference_encode(folder, checkpoint_path, config, packed, input_ids, image_pad_id):
    w, ck = reference_weights(folder, checkpoint_path)
    x = w["embed_tokens.weight"][input_ids]
    visual = torch.cat([vision_tower(p.pixel_values, p.grid_thw, w, config["vision_config"]) for p in packed])
    x[input_ids == image_pad_id] = visual
    n_layers = config["num_hidden_layers"]
    L = x.shape[0]
    for i in range(n_layers - 1):
        x = decoder_layer(x, w, f"layers.{i}.", config, torch.arange(L))
    x = rms_norm(x, w["norm.weight"])
    seq = torch.cat([x, ck["mllm_final_layer.reference_tokens"]])
    fw = {k[len("mllm_final_layer.") :]: v for k, v in ck.items() if k.startswith("mllm_final_layer.")}
    y = decoder_layer(seq, fw, "layers.0.", config, torch.arange(L + 64))
    y = rms_norm(y, fw["norm.weight"])[-64:]
    y = F.gelu(y @ ck["image_proj_model.proj.0.weight"].T + ck["image_proj_model.proj.0.bias"])
    y = y @ ck["image_proj_model.proj.2.weight"].T + ck["image_proj_model.proj.2.bias"]
    y = F.layer_norm(y, (y.shape[-1],), ck["image_proj_model.proj.3.weight"], ck["image_proj_model.proj.3.bias"])
    return y[None]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def _images():
    g = torch.Generator().manual_seed(0)
    return [
        torch.rand(300, 200, 3, generator=g),
        torch.rand(64, 96, 3, generator=g),
        torch.rand(500, 500, 3, generator=g),
    ]


@pytest.mark.parametrize("which", ["ckpt", "ckpt_stock"])
def test_matches_reference_computation(tiny, which):
    model = encoder.load_easyref(tiny["folder"], tiny[which], dtype=torch.float32)
    images = _images()
    prompt = "a cat on a red chair"
    out = model.encode(images, prompt)
    packed = [preprocess.preprocess_image(img) for img in images]
    text = SPEC_SYSTEM + "<|vision_start|><|image_pad|><|vision_end|>" * 3 + SPEC_INSTRUCTION + prompt
    text += "<|im_end|>\n<|im_start|>assistant\n"
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    pad = model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expanded = []
    k = 0
    for t in ids:
        if t == pad:
            expanded += [pad] * packed[k].num_tokens
            k += 1
        else:
            expanded.append(t)
    ref = reference_encode(tiny["folder"], tiny[which], tiny["config"], packed, torch.tensor(expanded), pad)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


def test_fine_tuned_mllm_weights_are_used(tiny, model):
    stock = encoder.load_easyref(tiny["folder"], tiny["ckpt_stock"], dtype=torch.float32)
    images = _images()[:1]
    assert rel_err(model.encode(images, "x"), stock.encode(images, "x")) > 1e-2


def test_unconditional_computed_once_and_matches_black_image(tiny, monkeypatch):
    model = encoder.load_easyref(tiny["folder"], tiny["ckpt"], dtype=torch.float32)
    assert not model.has_unconditional
    runs = []
    language_pass = model.mllm.tokens_from_sequence
    monkeypatch.setattr(model.mllm, "tokens_from_sequence", lambda *a, **k: runs.append(1) or language_pass(*a, **k))
    u1 = model.unconditional()
    u2 = model.unconditional()
    assert len(runs) == 1 and model.has_unconditional
    assert torch.equal(u1, u2)
    direct = model.encode([torch.zeros(512, 512, 3)], "")
    assert rel_err(u1, direct) < 1e-6


def test_images_do_not_mix_in_vision_tower(tiny, model, monkeypatch):
    """README step 3c: each image's visual tokens depend on that image only, whatever else is in the group and
    wherever it stands: the visual tokens ``encode`` puts into the sequence, against the reference vision tower
    run on that image alone."""
    a, b, c = _images()
    seen = []
    language_pass = model.mllm.tokens_from_sequence

    def record(input_ids, visual, image_pad_id):
        seen.append(visual.clone())
        return language_pass(input_ids, visual, image_pad_id)

    monkeypatch.setattr(model.mllm, "tokens_from_sequence", record)
    model.encode([a, b], "p")
    model.encode([c, a], "p")
    packed = {name: preprocess.preprocess_image(x) for name, x in (("a", a), ("b", b), ("c", c))}
    na, nb, nc = (packed[name].num_tokens for name in "abc")
    assert [v.shape[0] for v in seen] == [na + nb, nc + na]
    w, _ = reference_weights(tiny["folder"], tiny["ckpt"])
    alone = {
        name: vision_tower(p.pixel_values, p.grid_thw, w, tiny["config"]["vision_config"]) for name, p in packed.items()
    }
    for got, want in ((seen[0][:na], alone["a"]), (seen[0][na:], alone["b"]), (seen[1][:nc], alone["c"]),
                      (seen[1][nc:], alone["a"])):  # fmt: skip
        assert rel_err(got, want) < 1e-5


def test_order_and_count_of_references_matter(model):
    a, b, c = _images()
    assert rel_err(model.encode([a, b], "p"), model.encode([b, a], "p")) > 1e-4
    assert rel_err(model.encode([a, b], "p"), model.encode([a, b, c], "p")) > 1e-4


def test_empty_group_is_an_error(model):
    with pytest.raises(ValueError, match="at least one image"):
        model.encode([], "prompt")


def test_grey_and_rgba_images_are_converted(model):
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(120, 90, 3, generator=g)
    grey = rgb[..., :1]
    rgba = torch.cat([rgb, torch.rand(120, 90, 1, generator=g)], dim=-1)
    out_rgba = model.encode([rgba], "p")
    torch.testing.assert_close(out_rgba, model.encode([rgb], "p"))  # alpha dropped like PIL convert("RGB")
    out_grey = model.encode([grey], "p")
    torch.testing.assert_close(out_grey, model.encode([grey.expand(-1, -1, 3)], "p"))


def test_extreme_aspect_ratio_is_a_clear_error(model):
    with pytest.raises(ValueError, match="aspect ratio"):
        model.encode([torch.rand(2, 500, 3)], "p")
    # 180:1 is still accepted (both resize stages keep at least one 28-pixel row)
    assert model.encode([torch.rand(3, 540, 3)], "p").shape == (1, 64, 64)


def test_bf16_runs_close_to_fp32(tiny, model):
    bf16 = encoder.load_easyref(tiny["folder"], tiny["ckpt"], dtype=torch.bfloat16)
    images = _images()[:2]
    assert bf16.mllm.dtype == torch.bfloat16
    assert rel_err(bf16.encode(images, "p"), model.encode(images, "p")) < 0.1


def test_new_transformers_layout_folder_loads_identically(tiny, tmp_path):
    folder = tmp_path / "Qwen2-VL-new"
    import shutil

    shutil.copytree(tiny["folder"], folder)
    stock = load_file(f"{tiny['folder']}/model.safetensors")
    renamed = {}
    for k, v in stock.items():
        if k == "lm_head.weight":
            renamed[k] = v
        elif k.startswith("visual."):
            renamed["model." + k] = v
        else:
            renamed["model.language_model." + k[len("model.") :]] = v
    from safetensors.torch import save_file

    save_file(renamed, str(folder / "model.safetensors"))
    a = encoder.load_easyref(tiny["folder"], tiny["ckpt_stock"]).encode(_images()[:1], "p")
    b = encoder.load_easyref(str(folder), tiny["ckpt_stock"]).encode(_images()[:1], "p")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_deepspeed_torch_checkpoint_loads(tiny, tmp_path):
    path = str(tmp_path / "easyref.pt")
    tq.make_easyref_checkpoint(path, tiny["config"], with_mllm=False)
    a = encoder.load_easyref(tiny["folder"], path).encode(_images()[:1], "p")
    b = encoder.load_easyref(tiny["folder"], tiny["ckpt_stock"]).encode(_images()[:1], "p")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unet_tensors_and_fingerprint(tiny, model):
    assert len(model.unet_state_dict) == 70 * 2 * 8 + 70 * 2
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.weight"
    assert model.unet_state_dict[key].shape == (64, 64)
    assert all(t.device.type == "cpu" for t in model.unet_state_dict.values())
    assert model.fingerprint == ckpt.file_fingerprint(tiny["ckpt"]) and model.fingerprint.startswith("sha256:")
    assert model.cross_dim == 64
