"""The EasyRef MLLM: load it once, encode a reference group into 64 reference tokens.

Steps reproduced here (numbered as in the README, "EasyRef", "What is computed"):
- 3c: the vision tower runs once per image (its attention never mixes images).
- 4: text embeddings from the MLLM's token embedding; vision features replace the ``<|image_pad|>`` ids.
- 5: decoder layers 0..26 with causal attention and **plain sequential positions** ``arange(L)`` for
  all three M-RoPE sections (authors' quirk: the 3-D image positions were never computed), output taken
  **after the model's final RMSNorm** (authors' quirk: ``hidden_states[-1]`` of a 27-layer model).
- 6: 64 learned reference tokens appended after the whole sequence, then the trained copy of layer 27
  and its own RMSNorm over L+64 tokens with positions ``arange(L+64)`` and **causal** attention
  (authors' quirk: what the trained weights saw); the last 64 outputs are kept.
- 7: projector Linear -> GELU (exact) -> Linear -> LayerNorm.
- 8: the language-model head is never built or run, and the MLLM exists once (the authors loaded it
  twice and computed full-vocabulary fp32 logits that were thrown away).

transformers is imported lazily (:func:`import_qwen2_vl`) so the pack imports without it or with a
release that is too old; that case gets a message naming the installed and the required versions.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import checkpoint as ckpt
from . import preprocess
from . import prompt as prompt_mod

MIN_TRANSFORMERS = (4, 50)
MIN_TRANSFORMERS_TEXT = "4.50"
QWEN2_VL_REPO = "Qwen/Qwen2-VL-2B-Instruct"
EASYREF_REPO = "zongzhuofan/EasyRef"


class TransformersVersionError(ImportError):
    """transformers is missing or older than the pack supports."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def import_qwen2_vl():
    """The transformers Qwen2-VL modules, after checking the installed version (lazy import)."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - ComfyUI itself requires transformers
        raise TransformersVersionError(
            f"EasyRef needs the transformers package (>= {MIN_TRANSFORMERS_TEXT}); it is not installed."
        ) from e
    installed = getattr(transformers, "__version__", "unknown")
    if _version_tuple(installed) < MIN_TRANSFORMERS:
        raise TransformersVersionError(
            f"EasyRef needs transformers >= {MIN_TRANSFORMERS_TEXT} for Qwen2-VL; transformers {installed} is "
            f'installed. Update it in ComfyUI\'s Python environment: pip install -U "transformers>={MIN_TRANSFORMERS_TEXT}"'
        )
    try:
        from transformers.models.qwen2_vl import configuration_qwen2_vl, modeling_qwen2_vl
    except ImportError as e:
        raise TransformersVersionError(
            f"transformers {installed} does not provide Qwen2-VL ({e}); EasyRef needs transformers >= {MIN_TRANSFORMERS_TEXT}."
        ) from e
    return transformers, configuration_qwen2_vl, modeling_qwen2_vl


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialTokens:
    image_pad: int
    vision_start: int
    vision_end: int


@dataclass(frozen=True)
class ImageSettings:
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _text_config(cfg):
    """The text part of a Qwen2VLConfig: ``text_config`` (transformers >= 4.52) or the config itself."""
    return getattr(cfg, "text_config", None) or cfg


def _with_layers(text_cfg, num_layers: int, vocab_size: int | None = None):
    c = copy.deepcopy(text_cfg)
    c.num_hidden_layers = num_layers
    if getattr(c, "layer_types", None) is not None:
        c.layer_types = list(c.layer_types)[:num_layers]
    if vocab_size is not None:
        c.vocab_size = vocab_size
        c.pad_token_id = None
    c.use_cache = False
    c._attn_implementation = "sdpa"
    return c


def text_dims(text_cfg) -> ckpt.TextDims:
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    return ckpt.TextDims(
        hidden=text_cfg.hidden_size,
        heads=text_cfg.num_attention_heads,
        kv_heads=text_cfg.num_key_value_heads,
        head_dim=head_dim,
        intermediate=text_cfg.intermediate_size,
    )


def load_qwen2_vl_config(folder: str):
    _, configuration, _ = import_qwen2_vl()
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder} has no config.json. Download the complete {QWEN2_VL_REPO} folder from "
            f"https://huggingface.co/{QWEN2_VL_REPO}."
        )
    raw = ckpt.read_json(path)
    if raw.get("model_type") != "qwen2_vl":
        raise ValueError(
            f"{folder} holds a '{raw.get('model_type')}' model; EasyRef was trained on Qwen2-VL "
            f"({QWEN2_VL_REPO}, model_type 'qwen2_vl')."
        )
    return configuration.Qwen2VLConfig.from_pretrained(folder, local_files_only=True)


# ---------------------------------------------------------------------------------------------
# The module: vision tower, 27 prefix layers, trained final layer, reference tokens, projector
# ---------------------------------------------------------------------------------------------


class ReferenceTokens(nn.Module):
    """The 64 learned reference tokens (a leaf module so model management moves them)."""

    def __init__(self, count: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(count, hidden))


class Projector(nn.Module):
    """Step 7: ``image_proj_model.proj`` = Linear(H, H) -> GELU (exact) -> Linear(H, C) -> LayerNorm(C)."""

    def __init__(self, hidden: int, cross_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, cross_dim), nn.LayerNorm(cross_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class EasyRefMLLM(nn.Module):
    """Everything EasyRef runs of Qwen2-VL, once: no language-model head, no stock layer 27."""

    def __init__(
        self,
        visual: nn.Module,
        prefix: nn.Module,
        final: nn.Module,
        reference_tokens: ReferenceTokens,
        projector: Projector,
    ):
        super().__init__()
        self.visual = visual  # Qwen2-VL vision tower (patch embed, 32 blocks, 2x2 merger)
        self.prefix = prefix  # text model: embeddings, decoder layers 0..26, final RMSNorm
        self.final = final  # text model with one layer: the trained layer 27 and its own RMSNorm
        self.reference_tokens = reference_tokens
        self.projector = projector

    @property
    def dtype(self) -> torch.dtype:
        return self.reference_tokens.weight.dtype

    @property
    def exec_device(self) -> torch.device:
        return self.reference_tokens.weight.device

    def vision_features(self, packed: preprocess.PackedImage) -> torch.Tensor:
        """Step 3c: merged visual tokens of one image, [num_tokens, hidden]."""
        device = self.exec_device
        visual_dtype = self.visual.get_dtype() if hasattr(self.visual, "get_dtype") else self.dtype
        pixel_values = packed.pixel_values.to(device=device, dtype=visual_dtype)
        grid = torch.tensor([packed.grid_thw], device=device, dtype=torch.long)
        out = self.visual(pixel_values, grid_thw=grid)
        # transformers 5.x returns an output object whose pooler_output holds the merged tokens.
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        if feats.shape[0] != packed.num_tokens:
            raise RuntimeError(
                f"The vision tower returned {feats.shape[0]} tokens for an image that needs {packed.num_tokens}."
            )
        return feats

    def tokens_from_sequence(self, input_ids: torch.Tensor, visual: torch.Tensor, image_pad_id: int) -> torch.Tensor:
        """Steps 4-7 for one sequence [1, L]; returns reference tokens [1, 64, cross_dim]."""
        device = self.exec_device
        input_ids = input_ids.to(device)
        embeds = self.prefix.embed_tokens(input_ids)  # step 4
        mask = input_ids[0] == image_pad_id
        if int(mask.sum()) != visual.shape[0]:
            raise RuntimeError("The number of <|image_pad|> tokens does not match the visual tokens.")
        embeds[0, mask] = visual.to(embeds.dtype)
        length = embeds.shape[1]
        # Step 5: sequential positions for all three M-RoPE sections, causal, after the final norm.
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)
        hidden = self.prefix(inputs_embeds=embeds, position_ids=positions, use_cache=False)[0]
        # Step 6: append the reference tokens after everything, run the trained last layer causally.
        refs = self.reference_tokens.weight[None].to(hidden.dtype)
        sequence = torch.cat([hidden, refs], dim=1)
        positions = torch.arange(sequence.shape[1], device=device).view(1, 1, -1).expand(3, 1, -1)
        out = self.final(inputs_embeds=sequence, position_ids=positions, use_cache=False)[0]
        out = out[:, -refs.shape[1] :]
        return self.projector(out)  # step 7


def _materialize_buffers(module: nn.Module) -> None:
    """Recompute the non-persistent buffers (RoPE inverse frequencies) of a module built on 'meta'.

    Rotary modules that carry their config are rebuilt from it; the transformers 4.x vision rotary
    module (``VisionRotaryEmbedding(dim, theta=10000)``) is rebuilt from its buffer size. Anything else
    left on 'meta' is an error rather than a silent garbage buffer.
    """
    for name, sub in module.named_modules():
        meta = [b for b, t in sub.named_buffers(recurse=False) if t.is_meta]
        if not meta:
            continue
        if getattr(sub, "config", None) is not None and type(sub).__name__.endswith("RotaryEmbedding"):
            fresh = type(sub)(config=sub.config)
        elif type(sub).__name__ == "VisionRotaryEmbedding":
            fresh = type(sub)(2 * sub.inv_freq.numel())
        else:
            raise RuntimeError(f"Cannot initialise buffers {meta} of {name} ({type(sub).__name__}).")
        for b in meta:
            setattr(sub, b, getattr(fresh, b).to(torch.float32))
        if getattr(sub, "original_inv_freq", None) is not None and sub.original_inv_freq.is_meta:
            sub.original_inv_freq = sub.inv_freq.clone()
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"Weights left uninitialised: {left[:10]}")


def _expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_mllm(
    mllm_dir: str,
    cfg,
    routed: ckpt.RoutedCheckpoint,
    cross_dim: int,
    dtype: torch.dtype,
    checkpoint_name: str = "checkpoint",
) -> EasyRefMLLM:
    """Build the module from a Qwen2-VL folder and a routed EasyRef checkpoint (validated)."""
    num_prefix = _text_config(cfg).num_hidden_layers - 1
    return assemble_mllm(
        cfg,
        stock_loader=lambda: ckpt.read_mllm_folder_weights(mllm_dir, num_prefix, dtype),
        routed=routed,
        cross_dim=cross_dim,
        dtype=dtype,
        stock_source=mllm_dir,
        checkpoint_name=checkpoint_name,
    )


def assemble_mllm(
    cfg,
    stock_loader: Callable[[], dict[str, torch.Tensor]],
    routed: ckpt.RoutedCheckpoint,
    cross_dim: int,
    dtype: torch.dtype,
    stock_source: str = "Qwen2-VL weights",
    checkpoint_name: str = "checkpoint",
) -> EasyRefMLLM:
    """Build the module on 'meta' and assign the weights (no random init, no second copy).

    ``stock_loader`` returns the stock Qwen2-VL weights under canonical names (see ``checkpoint``).
    """
    _, _, modeling = import_qwen2_vl()
    text_cfg = _text_config(cfg)
    num_prefix = text_cfg.num_hidden_layers - 1
    dims = text_dims(text_cfg)
    text_model_cls = getattr(modeling, "Qwen2VLTextModel", None) or modeling.Qwen2VLModel  # 5.x / 4.50-4.51
    vision_cfg = copy.deepcopy(cfg.vision_config)
    vision_cfg._attn_implementation = "sdpa"

    with torch.device("meta"):
        visual = modeling.Qwen2VisionTransformerPretrainedModel(vision_cfg)
        prefix = text_model_cls(_with_layers(text_cfg, num_prefix))
        final = text_model_cls(_with_layers(text_cfg, 1, vocab_size=1))
        refs = ReferenceTokens(ckpt.NUM_REFERENCE_TOKENS, dims.hidden)
        projector = Projector(dims.hidden, cross_dim)

    want_prefix = _expected_shapes(prefix)
    want_visual = _expected_shapes(visual)
    want_canonical = {**want_prefix, **{"visual." + k: s for k, s in want_visual.items()}}

    # Weights fine-tuned by EasyRef (``multimodal_llm.``) override the stock ones.
    override = {k: v.to(dtype) for k, v in routed.mllm.items()}
    problems = ckpt.mllm_problems(override, want_canonical, f"{checkpoint_name}: {ckpt.MLLM_PREFIX}", require_all=False)
    stock = {k: v for k, v in stock_loader().items() if k not in override}
    problems += ckpt.mllm_problems(stock, want_canonical, f"{stock_source}: ", require_all=False)
    weights = {**stock, **override}
    del stock, override
    problems += [
        f"missing {k} (expected shape {list(s)}; neither in {stock_source} nor in the checkpoint)"
        for k, s in want_canonical.items()
        if k not in weights
    ]
    if problems:
        raise ckpt.CheckpointError(
            f"The Qwen2-VL weights do not fit the configuration in {stock_source} ({len(problems)} problems):\n"
            f"{ckpt._listing(problems)}\nUse the {QWEN2_VL_REPO} folder from https://huggingface.co/{QWEN2_VL_REPO}."
        )

    prefix.load_state_dict({k: weights[k] for k in want_prefix}, strict=True, assign=True)
    visual.load_state_dict({k: weights["visual." + k] for k in want_visual}, strict=True, assign=True)
    del weights
    final_sd = {k: v.to(dtype) for k, v in routed.final_layer.items()}
    final_sd["embed_tokens.weight"] = torch.zeros(1, dims.hidden, dtype=dtype)  # never used (inputs_embeds)
    final.load_state_dict(final_sd, strict=True, assign=True)
    refs.load_state_dict({"weight": routed.reference_tokens.to(dtype)}, strict=True, assign=True)
    projector.load_state_dict({k: v.to(dtype) for k, v in routed.projector.items()}, strict=True, assign=True)

    mllm = EasyRefMLLM(visual, prefix, final, refs, projector)
    _materialize_buffers(mllm)
    mllm.eval()
    mllm.requires_grad_(False)
    return mllm


# ---------------------------------------------------------------------------------------------
# The loaded model (the EASYREF_MODEL payload) and encoding
# ---------------------------------------------------------------------------------------------


def _load_tokenizer(mllm_dir: str):
    transformers, _, _ = import_qwen2_vl()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(mllm_dir, local_files_only=True)
    except Exception as e:
        raise FileNotFoundError(
            f"Could not load the tokenizer from {mllm_dir} ({e}). Download the complete {QWEN2_VL_REPO} folder "
            f"(tokenizer.json, tokenizer_config.json, vocab.json, merges.txt) from https://huggingface.co/{QWEN2_VL_REPO}."
        ) from e
    ids = {}
    for token in prompt_mod.REQUIRED_SPECIAL_TOKENS:
        encoded = tok(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"The tokenizer in {mllm_dir} does not know the Qwen2-VL special token {token}.")
        ids[token] = encoded[0]
    tokens = SpecialTokens(
        image_pad=ids[prompt_mod.IMAGE_PAD],
        vision_start=ids[prompt_mod.VISION_START],
        vision_end=ids[prompt_mod.VISION_END],
    )
    return tok, tokens


def _image_settings(mllm_dir: str, cfg) -> ImageSettings:
    vc = cfg.vision_config
    pre = {}
    path = os.path.join(mllm_dir, "preprocessor_config.json")
    if os.path.isfile(path):
        pre = ckpt.read_json(path)
    return ImageSettings(
        patch_size=int(pre.get("patch_size", vc.patch_size)),
        merge_size=int(pre.get("merge_size", vc.spatial_merge_size)),
        temporal_patch_size=int(pre.get("temporal_patch_size", vc.temporal_patch_size)),
        mean=tuple(pre.get("image_mean", preprocess.OPENAI_CLIP_MEAN)),
        std=tuple(pre.get("image_std", preprocess.OPENAI_CLIP_STD)),
    )


class EasyRefModel:
    """The loaded EasyRef model: the MLLM (once), tokenizer settings and the UNet-side tensors.

    ``unet_state_dict`` holds the checkpoint's ``unet.`` tensors (prefix stripped) on the offload
    device for "Apply EasyRef"; ``fingerprint`` identifies the checkpoint file contents. The ComfyUI
    glue (``comfy_patches/easyref_glue.load_easyref_model``) sets ``patcher``, a ModelPatcher around ``mllm``.
    """

    def __init__(
        self,
        mllm,
        tokenizer,
        tokens,
        image_settings,
        unet_state_dict,
        fingerprint,
        cross_dim,
        checkpoint_name,
    ):
        self.mllm: EasyRefMLLM = mllm
        self.tokenizer = tokenizer
        self.tokens: SpecialTokens = tokens
        self.image_settings: ImageSettings = image_settings
        self.unet_state_dict: dict[str, torch.Tensor] = unet_state_dict
        self.fingerprint: str = fingerprint
        self.cross_dim: int = cross_dim
        self.checkpoint_name = checkpoint_name
        self.patcher = None
        self._uncond: torch.Tensor | None = None

    @property
    def has_unconditional(self) -> bool:
        return self._uncond is not None

    def preprocess(self, image) -> preprocess.PackedImage:
        s = self.image_settings
        return preprocess.preprocess_image(image, s.patch_size, s.merge_size, s.temporal_patch_size, s.mean, s.std)

    def input_ids(self, tokens_per_image: Sequence[int], prompt: str) -> torch.Tensor:
        text = prompt_mod.build_text(len(tokens_per_image), prompt)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = prompt_mod.expand_image_pads(ids, self.tokens.image_pad, tokens_per_image)
        return torch.tensor([ids], dtype=torch.long)

    @torch.inference_mode()
    def encode(
        self,
        images: Sequence,
        prompt: str,
        on_image_done: Callable[[], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Reference tokens [1, 64, cross_dim] (float32) of a group of images of any sizes."""
        if len(images) == 0:
            raise ValueError("The reference group is empty: give EasyRef at least one image.")
        packed = [self.preprocess(img) for img in images]
        feats = []
        for p in packed:
            if check_interrupt is not None:
                check_interrupt()
            feats.append(self.mllm.vision_features(p))
            if on_image_done is not None:
                on_image_done()
        if check_interrupt is not None:
            check_interrupt()
        ids = self.input_ids([p.num_tokens for p in packed], prompt)
        out = self.mllm.tokens_from_sequence(ids, torch.cat(feats, dim=0), self.tokens.image_pad)
        return out.float()

    def unconditional(self, check_interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        """Unconditional tokens: a black 512x512 image and the bare instruction; computed once per model."""
        if self._uncond is None:
            self._uncond = self.encode([preprocess.black_image()], "", check_interrupt=check_interrupt).cpu()
        return self._uncond


def load_easyref(mllm_dir: str, checkpoint_path: str, dtype: torch.dtype = torch.float32) -> EasyRefModel:
    """Load Qwen2-VL (from ``mllm_dir``) and the EasyRef checkpoint, validated, on the CPU."""
    import_qwen2_vl()
    if not os.path.isdir(mllm_dir):
        raise FileNotFoundError(
            f"{mllm_dir} is not a folder; download {QWEN2_VL_REPO} from https://huggingface.co/{QWEN2_VL_REPO}."
        )
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"{checkpoint_path} not found; download it from https://huggingface.co/{EASYREF_REPO}.")
    cfg = load_qwen2_vl_config(mllm_dir)
    text_cfg = _text_config(cfg)
    dims = text_dims(text_cfg)
    name = os.path.basename(checkpoint_path)
    state = ckpt.load_weight_file(checkpoint_path)
    routed = ckpt.route_checkpoint(state, text_cfg.num_hidden_layers - 1)
    del state
    cross_dim = ckpt.validate_checkpoint(routed, dims, name)
    tokenizer, tokens = _load_tokenizer(mllm_dir)
    mllm = build_mllm(mllm_dir, cfg, routed, cross_dim, dtype, checkpoint_name=name)
    return EasyRefModel(
        mllm=mllm,
        tokenizer=tokenizer,
        tokens=tokens,
        image_settings=_image_settings(mllm_dir, cfg),
        unet_state_dict=dict(routed.unet),
        fingerprint=ckpt.file_fingerprint(checkpoint_path),
        cross_dim=cross_dim,
        checkpoint_name=name,
    )
