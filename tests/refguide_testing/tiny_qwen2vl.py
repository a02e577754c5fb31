"""Tiny Qwen2-VL and tiny EasyRef checkpoint for tests.

``make_qwen2vl_folder`` writes a real Hugging Face folder: ``config.json`` in the hub's (flat, old)
format, random weights in ``model.safetensors`` in the hub's old key layout (``model.layers.N``,
``visual.*``, tied ``lm_head``), a byte-level BPE tokenizer with the Qwen2 special tokens wrapped in
``Qwen2TokenizerFast`` and a ``Qwen2VLImageProcessor``, saved through ``Qwen2VLProcessor``.

``make_easyref_checkpoint`` writes a checkpoint in the released checkpoint's key layout: ``image_proj_model.``,
``mllm_final_layer.``, optional ``multimodal_llm.`` (old transformers layout) and ``unet.`` with
SDXL's 70 attention-processor names (tiny widths).

Weights are drawn from a fixed generator in canonical-name order, so both transformers
generations produce the same files.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors.torch import save_file

QWEN2_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TRAINING_TEXT = [
    "Visualize a scene that closely resembles the provided images, capturing the essence and details "
    "described in this prompt:\n",
    "You are a helpful assistant.",
    "system user assistant",
    "a photo of a cat sitting on a red chair, portrait, studio light",
    "a dog running on the beach at sunset, cinematic, high quality",
    "The quick brown fox jumps over the lazy dog 0123456789",
]

TINY_TEXT = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
)
TINY_VISION = {
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": 64,
    "num_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_chans": 3,
}
REAL_TEXT = dict(
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
)
REAL_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "num_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_chans": 3,
}

# SDXL's 70 transformer blocks in diffusers naming, with the width class of each block.
SDXL_BLOCKS = (
    [(f"down_blocks.1.attentions.{a}.transformer_blocks.{t}", "narrow") for a in range(2) for t in range(2)]
    + [(f"down_blocks.2.attentions.{a}.transformer_blocks.{t}", "wide") for a in range(2) for t in range(10)]
    + [(f"mid_block.attentions.0.transformer_blocks.{t}", "wide") for t in range(10)]
    + [(f"up_blocks.0.attentions.{a}.transformer_blocks.{t}", "wide") for a in range(3) for t in range(10)]
    + [(f"up_blocks.1.attentions.{a}.transformer_blocks.{t}", "narrow") for a in range(3) for t in range(2)]
)


def qwen2vl_config_dict(text: dict, vision: dict, vocab_size: int, token_ids: dict[str, int]) -> dict:
    """A config.json in the hub's format (as in Qwen/Qwen2-VL-2B-Instruct)."""
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # [16, 24, 24] for head_dim 128
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|vision_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": text["num_hidden_layers"],
        "model_type": "qwen2_vl",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": dict(vision),
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "vocab_size": vocab_size,
        **text,
    }


def _canonical_shapes(config_dict: dict) -> dict[str, tuple[int, ...]]:
    """Canonical weight names and shapes of a Qwen2-VL (see refguide.easyref.checkpoint), lm_head excluded."""
    t = config_dict
    h, inter = t["hidden_size"], t["intermediate_size"]
    hd = h // t["num_attention_heads"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (t["vocab_size"], h), "norm.weight": (h,)}
    for i in range(t["num_hidden_layers"]):
        p = f"layers.{i}."
        shapes.update(_layer_shapes(p, h, q, kv, inter))
    v = t["vision_config"]
    e, ps, tp = v["embed_dim"], v["patch_size"], v["temporal_patch_size"]
    mlp = e * v["mlp_ratio"]
    shapes["visual.patch_embed.proj.weight"] = (e, v.get("in_chans", 3), tp, ps, ps)
    for i in range(v["depth"]):
        p = f"visual.blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (e,),
                p + "norm1.bias": (e,),
                p + "norm2.weight": (e,),
                p + "norm2.bias": (e,),
                p + "attn.qkv.weight": (3 * e, e),
                p + "attn.qkv.bias": (3 * e,),
                p + "attn.proj.weight": (e, e),
                p + "attn.proj.bias": (e,),
                p + "mlp.fc1.weight": (mlp, e),
                p + "mlp.fc1.bias": (mlp,),
                p + "mlp.fc2.weight": (e, mlp),
                p + "mlp.fc2.bias": (e,),
            }
        )
    m = e * v["spatial_merge_size"] ** 2
    shapes.update(
        {
            "visual.merger.ln_q.weight": (e,),
            "visual.merger.ln_q.bias": (e,),
            "visual.merger.mlp.0.weight": (m, m),
            "visual.merger.mlp.0.bias": (m,),
            "visual.merger.mlp.2.weight": (v["hidden_size"], m),
            "visual.merger.mlp.2.bias": (v["hidden_size"],),
        }
    )
    return shapes


def _layer_shapes(p: str, h: int, q: int, kv: int, inter: int) -> dict[str, tuple[int, ...]]:
    return {
        p + "self_attn.q_proj.weight": (q, h),
        p + "self_attn.q_proj.bias": (q,),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.k_proj.bias": (kv,),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.v_proj.bias": (kv,),
        p + "self_attn.o_proj.weight": (h, q),
        p + "mlp.gate_proj.weight": (inter, h),
        p + "mlp.up_proj.weight": (inter, h),
        p + "mlp.down_proj.weight": (h, inter),
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
    }


def _is_norm(name: str) -> bool:
    return name.endswith(
        ("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "layernorm.weight", "proj.3.weight")
    )


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int, scale: float = 0.08) -> dict[str, torch.Tensor]:
    """Moderate random weights (norm weights near 1), drawn in sorted-name order from one generator."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        t = torch.randn(shapes[name], generator=g) * scale
        out[name] = (1.0 + t) if _is_norm(name) else t
    return out


def old_layout_name(canonical: str) -> str:
    """Canonical -> the hub's old transformers layout (``model.layers.N``, ``visual.*``)."""
    return canonical if canonical.startswith("visual.") else "model." + canonical


def new_layout_name(canonical: str) -> str:
    """Canonical -> the transformers >= 4.52 layout (``model.language_model.*``, ``model.visual.*``)."""
    return "model." + canonical if canonical.startswith("visual.") else "model.language_model." + canonical


def build_tokenizer_files(folder: str) -> dict[str, int]:
    """Train a byte-level BPE on a few sentences, add the Qwen2 special tokens, save it with the processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=QWEN2_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        tok.save(path)
        fast = Qwen2TokenizerFast(
            tokenizer_file=path, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
    fast.add_special_tokens({"additional_special_tokens": QWEN2_SPECIAL_TOKENS[1:]})
    image_processor = Qwen2VLImageProcessor()
    try:  # transformers >= 4.52 also needs a video processor
        from transformers import Qwen2VLVideoProcessor

        processor = Qwen2VLProcessor(
            image_processor=image_processor, tokenizer=fast, video_processor=Qwen2VLVideoProcessor()
        )
    except ImportError:
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=fast)
    processor.save_pretrained(folder)
    return {t: fast.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL_TOKENS} | {"__len__": len(fast)}


def make_qwen2vl_folder(folder: str, seed: int = 1, layout: str = "old") -> dict:
    """Write a tiny Qwen2-VL Hugging Face folder; returns its config dict."""
    os.makedirs(folder, exist_ok=True)
    ids = build_tokenizer_files(folder)
    vocab = ids.pop("__len__") + 16
    config = qwen2vl_config_dict(TINY_TEXT, TINY_VISION, vocab, ids)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    weights = random_tensors(_canonical_shapes(config), seed)
    rename = old_layout_name if layout == "old" else new_layout_name
    tensors = {rename(k): v for k, v in weights.items()}
    tensors["lm_head.weight"] = weights["embed_tokens.weight"].clone()  # tied, as in the hub files
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return config


def make_easyref_checkpoint(
    path: str,
    config: dict,
    seed: int = 2,
    cross_dim: int = 64,
    with_mllm: bool = True,
    unet_widths: tuple[int, int] = (64, 128),
    lora_rank: int = 4,
    drop: tuple[str, ...] = (),
    reshape: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Write a tiny EasyRef checkpoint (safetensors, or torch with a DeepSpeed ``module`` key for .pt)."""
    h = config["hidden_size"]
    hd = h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {
        "image_proj_model.proj.0.weight": (h, h),
        "image_proj_model.proj.0.bias": (h,),
        "image_proj_model.proj.2.weight": (cross_dim, h),
        "image_proj_model.proj.2.bias": (cross_dim,),
        "image_proj_model.proj.3.weight": (cross_dim,),
        "image_proj_model.proj.3.bias": (cross_dim,),
        "mllm_final_layer.reference_tokens": (64, h),
        "mllm_final_layer.norm.weight": (h,),
    }
    for k, s in _layer_shapes("layers.0.", h, q, kv, config["intermediate_size"]).items():
        shapes["mllm_final_layer." + k] = s
    narrow, wide = unet_widths
    for block, cls in SDXL_BLOCKS:
        w = narrow if cls == "narrow" else wide
        for attn in ("attn1", "attn2"):
            p = f"unet.{block}.{attn}.processor."
            in_kv = cross_dim if attn == "attn2" else w
            for n, in_dim in (("to_q_lora", w), ("to_k_lora", in_kv), ("to_v_lora", in_kv), ("to_out_lora", w)):
                shapes[p + n + ".down.weight"] = (lora_rank, in_dim)
                shapes[p + n + ".up.weight"] = (w, lora_rank)
            if attn == "attn2":
                shapes[p + "to_k_ip.weight"] = (w, cross_dim)
                shapes[p + "to_v_ip.weight"] = (w, cross_dim)
    tensors = random_tensors(shapes, seed)
    # The reference tokens are learned embeddings: give them the scale of hidden states.
    tensors["mllm_final_layer.reference_tokens"] = tensors["mllm_final_layer.reference_tokens"] * 10
    if with_mllm:
        fine_tuned = random_tensors(_canonical_shapes(config), seed + 100)
        for k, v in fine_tuned.items():
            tensors["multimodal_llm." + old_layout_name(k)] = v
        tensors["multimodal_llm.lm_head.weight"] = fine_tuned["embed_tokens.weight"].clone()
    for k in drop:
        del tensors[k]
    for k, s in (reshape or {}).items():
        tensors[k] = torch.zeros(s)
    if path.endswith(".safetensors"):
        save_file(tensors, path)
    else:
        torch.save({"module": tensors}, path)
    return tensors


def make_tiny_models(root: str, with_mllm: bool = True, cross_dim: int = 64) -> tuple[str, str, dict]:
    """``root/LLM/Qwen2-VL-2B-Instruct`` and ``root/easyref/easyref-tiny.safetensors``."""
    folder = os.path.join(root, "LLM", "Qwen2-VL-2B-Instruct")
    config = make_qwen2vl_folder(folder)
    os.makedirs(os.path.join(root, "easyref"), exist_ok=True)
    path = os.path.join(root, "easyref", "easyref-tiny.safetensors")
    make_easyref_checkpoint(path, config, with_mllm=with_mllm, cross_dim=cross_dim)
    return folder, path, config
