"""EasyRef checkpoint routing, layout mapping, validation, safe loading; embeds files; lazy transformers import."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from refguide.easyref import checkpoint as ckpt
from refguide.easyref import embeds as embeds_mod
from refguide.easyref import encoder
from refguide_testing import tiny_qwen2vl as tq

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIMS = ckpt.TextDims(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128)
CONFIG = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}


def test_layout_mapping_old_and_new():
    for old, new, canonical in [
        (
            "model.layers.3.self_attn.q_proj.weight",
            "model.language_model.layers.3.self_attn.q_proj.weight",
            "layers.3.self_attn.q_proj.weight",
        ),
        ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "embed_tokens.weight"),
        ("model.norm.weight", "model.language_model.norm.weight", "norm.weight"),
        ("visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight"),
        ("visual.merger.mlp.0.bias", "model.visual.merger.mlp.0.bias", "visual.merger.mlp.0.bias"),
    ]:
        assert ckpt.canonical_mllm_key(old) == canonical
        assert ckpt.canonical_mllm_key(new) == canonical
        assert tq.old_layout_name(canonical) == old and tq.new_layout_name(canonical) == new
    assert ckpt.canonical_mllm_key("lm_head.weight") is None
    with pytest.raises(ckpt.CheckpointError, match="Unknown"):
        ckpt.canonical_mllm_key("something.else")


def _state(tmp_path, **kw):
    path = str(tmp_path / "c.safetensors")
    return tq.make_easyref_checkpoint(path, CONFIG, with_mllm=False, **kw), path


def test_routing_and_validation_accept_the_spec_layout(tmp_path):
    state, path = _state(tmp_path)
    routed = ckpt.route_checkpoint(ckpt.load_weight_file(path), num_prefix_layers=2)
    assert ckpt.validate_checkpoint(routed, DIMS, "c.safetensors") == 64
    assert routed.reference_tokens.shape == (64, 64)
    assert set(routed.projector) == {
        "proj.0.weight",
        "proj.0.bias",
        "proj.2.weight",
        "proj.2.bias",
        "proj.3.weight",
        "proj.3.bias",
    }
    assert "layers.0.mlp.down_proj.weight" in routed.final_layer and "norm.weight" in routed.final_layer
    assert len(routed.unet) == 70 * 2 * 8 + 70 * 2


def test_multimodal_llm_keys_route_to_canonical_names(tmp_path):
    path = str(tmp_path / "m.safetensors")
    config = {**CONFIG, "num_hidden_layers": 3, "vocab_size": 50, "vision_config": tq.TINY_VISION}
    tq.make_easyref_checkpoint(path, config, with_mllm=True)
    routed = ckpt.route_checkpoint(ckpt.load_weight_file(path), num_prefix_layers=2)
    assert "layers.1.mlp.up_proj.weight" in routed.mllm and "visual.merger.ln_q.weight" in routed.mllm
    assert "embed_tokens.weight" in routed.mllm and "norm.weight" in routed.mllm
    # the stock layer past the prefix and the LM head are never used
    assert not any(k.startswith("layers.2.") for k in routed.mllm) and "lm_head.weight" not in routed.mllm


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    _, path = _state(
        tmp_path,
        drop=("mllm_final_layer.layers.0.mlp.gate_proj.weight", "image_proj_model.proj.0.bias"),
        reshape={"mllm_final_layer.reference_tokens": (32, 64)},
    )
    routed = ckpt.route_checkpoint(ckpt.load_weight_file(path), num_prefix_layers=2)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.validate_checkpoint(routed, DIMS, "c.safetensors")
    text = str(err.value)
    assert "missing mllm_final_layer.layers.0.mlp.gate_proj.weight" in text
    assert "missing image_proj_model.proj.0.bias" in text
    assert "wrong shape mllm_final_layer.reference_tokens: [32, 64], expected [64, 64]" in text
    assert "zongzhuofan/EasyRef" in text


def test_unet_part_is_checked(tmp_path):
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor."
    _, path = _state(tmp_path, drop=(f"unet.{key}to_v_ip.weight",), reshape={f"unet.{key}to_k_ip.weight": (64, 32)})
    routed = ckpt.route_checkpoint(ckpt.load_weight_file(path), num_prefix_layers=2)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.validate_checkpoint(routed, DIMS, "c")
    assert f"missing unet.{key}to_v_ip.weight" in str(err.value)
    routed.unet[key + "to_v_ip.weight"] = torch.zeros(64, 64)
    with pytest.raises(ckpt.CheckpointError, match=r"wrong shape unet\..*to_k_ip\.weight: \[64, 32\]"):
        ckpt.validate_checkpoint(routed, DIMS, "c")


def test_unknown_prefix_is_an_error():
    with pytest.raises(ckpt.CheckpointError, match="outside the known prefixes"):
        ckpt.route_checkpoint({"image_encoder.weight": torch.zeros(1)}, 2)


def test_deepspeed_module_and_weights_only(tmp_path):
    path = str(tmp_path / "ds.pt")
    torch.save({"module": {"a.weight": torch.ones(2)}, "optimizer": {"step": torch.tensor(3)}}, path)
    assert list(ckpt.load_weight_file(path)) == ["a.weight"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = str(tmp_path / "evil.pt")
    torch.save({"module": {"a.weight": torch.ones(2)}, "x": Evil()}, bad)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ckpt.load_weight_file(bad)
    with pytest.raises(ckpt.CheckpointError, match="unsupported"):
        ckpt.load_weight_file(str(tmp_path / "x.pkl"))


def test_embeds_roundtrip_and_fingerprint(tmp_path):
    cond, uncond = torch.randn(1, 64, 32), torch.randn(1, 64, 32)
    e = embeds_mod.EasyRefEmbeds(cond, uncond, 3, "a prompt\nwith lines", "sha256:abc", "easyref.safetensors")
    path = str(tmp_path / "e.safetensors")
    embeds_mod.save_embeds(e, path)
    back = embeds_mod.load_embeds(path)
    assert torch.equal(back.cond, cond) and torch.equal(back.uncond, uncond)
    assert (back.num_references, back.prompt, back.fingerprint, back.checkpoint_name) == (
        3,
        "a prompt\nwith lines",
        "sha256:abc",
        "easyref.safetensors",
    )
    embeds_mod.check_fingerprint(back, "sha256:abc")
    with pytest.raises(embeds_mod.EmbedsFileError, match="different EasyRef checkpoint"):
        embeds_mod.check_fingerprint(back, "sha256:def", "other.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(embeds_mod.EmbedsFileError, match="not an EasyRef embeds file"):
        embeds_mod.load_embeds(str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError):
        embeds_mod.EasyRefEmbeds(torch.zeros(2, 64, 8), torch.zeros(2, 64, 8), 1, "", "")


def test_too_old_transformers_gives_versions_and_the_package_still_imports(tmp_path):
    fake = tmp_path / "fake" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "4.44.2"\n')
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2])
        import importlib.util
        spec = importlib.util.spec_from_file_location("pack_easyref", sys.argv[3] + "/easyref/__init__.py",
                                                      submodule_search_locations=[sys.argv[3] + "/easyref"])
        pkg = importlib.util.module_from_spec(spec); sys.modules["pack_easyref"] = pkg; spec.loader.exec_module(pkg)
        from pack_easyref import encoder, checkpoint, preprocess, prompt, embeds
        try:
            encoder.import_qwen2_vl()
        except encoder.TransformersVersionError as e:
            print("ERR", e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fake"), os.path.dirname(torch.__path__[0]), REPO],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "4.44.2" in out.stdout and ">= 4.50" in out.stdout


def test_version_parsing():
    assert encoder._version_tuple("4.50.3") >= encoder.MIN_TRANSFORMERS
    assert encoder._version_tuple("5.0.0rc1") >= encoder.MIN_TRANSFORMERS
    assert encoder._version_tuple("4.49.0.dev0") < encoder.MIN_TRANSFORMERS
