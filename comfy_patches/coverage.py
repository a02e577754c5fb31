"""Every model configuration of the host's ``comfy.supported_models``: supported by which family, or refused why.

The one source of truth for "does RefDrop work on model X": the diffusion-transformer families list the
configurations they cover (``dit_families``, ``configs``), the UNet families are listed here, and every other
configuration is either refused with its reason (:data:`REFUSED`: an image or video model RefDrop cannot reach
or does not handle) or is not an image/video generator (:data:`NOT_GENERATORS`). ``tests/host/test_coverage.py``
walks ``comfy.supported_models.models`` and fails when a configuration is in none of them, and the README's
family table is rendered from here (``python3 scripts/family_table.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dit_families

IN_BATCH, PICTURES, MASKS, REGIONS, TEMPORAL, CLIP_PICTURE = (
    "in-batch", "pictures", "masks", "regions", "temporal", "picture as clip reference",
)  # fmt: skip
IMAGE_FEATURES = (IN_BATCH, PICTURES, MASKS, REGIONS)

# Image UNets (Apply RefDrop, Reference Image, masks, regions on attn1): configuration -> family name.
IMAGE_UNET_CONFIGS = {
    "SD15": "SD1.x", "SD15_instructpix2pix": "SD1.x", "Stable_Zero123": "SD1.x",
    "SD20": "SD2.x", "SD21UnclipL": "SD2.x", "SD21UnclipH": "SD2.x",
    "SDXL": "SDXL", "SDXLRefiner": "SDXL", "SSD1B": "SDXL", "Segmind_Vega": "SDXL", "KOALA_700M": "SDXL",
    "KOALA_1B": "SDXL", "SDXL_instructpix2pix": "SDXL",
}  # fmt: skip
# Video UNets (SVD Temporal RefDrop).
VIDEO_UNET_CONFIGS = {"SVD_img2vid": "Stable Video Diffusion", "SV3D_u": "Stable Video Diffusion",
                      "SV3D_p": "Stable Video Diffusion"}  # fmt: skip

# Image / video models RefDrop does not handle: configuration -> why (shown in the node's error message).
REFUSED: dict[str, str] = {
    "PixArtAlpha": (
        "its attention (comfy/ldm/pixart/blocks.py, AttentionKVCompress and MultiHeadCrossAttention) is called "
        "without transformer_options (PixArtMS does not pass them to its blocks), so ComfyUI's attention override "
        "never sees it"
    ),
    "PixArtSigma": (
        "its attention (comfy/ldm/pixart/blocks.py, AttentionKVCompress and MultiHeadCrossAttention) is called "
        "without transformer_options (PixArtMS does not pass them to its blocks), so ComfyUI's attention override "
        "never sees it"
    ),
    "HunyuanDiT": (
        "its attention (comfy/ldm/hydit/attn_layers.py, Attention and CrossAttention) is called without "
        "transformer_options (HunYuanDiT does not pass them to its blocks), so ComfyUI's attention override never "
        "sees it"
    ),
    "HunyuanDiT1": (
        "its attention (comfy/ldm/hydit/attn_layers.py, Attention and CrossAttention) is called without "
        "transformer_options (HunYuanDiT does not pass them to its blocks), so ComfyUI's attention override never "
        "sees it"
    ),
    "Stable_Cascade_C": (
        "its attention blocks (comfy/ldm/cascade/common.py, Attention2D) let the image tokens attend to the image "
        "tokens with the text and CLIP tokens appended (kv = cat(x, clip)), with no block index: queries and keys "
        "are different sequences, a layout the pack's diffusion-transformer path does not guide (it guides calls "
        "whose queries and keys are the same tokens)"
    ),
    "Stable_Cascade_B": (
        "stage B only up-samples the stage C latent it is given (its effnet input fixes the content, so there is "
        "nothing left for a reference to make consistent), and its attention blocks have stage C's layout (image "
        "queries against the image tokens with the CLIP tokens appended), which the pack does not guide"
    ),
    "PiD": (
        "PiD (comfy/ldm/pixeldit/pid.py) decodes a given latent (lq_latent) into a 4x larger picture: that latent "
        "fixes the content, so there is nothing for a reference to make consistent"
    ),
    "SD_X4Upscaler": (
        "it is an upscaler: the low-resolution input picture (c_concat) fixes the content, so there is no reference "
        "to borrow from; and at three of its four levels attn1 is cross-attention to the text "
        "(disable_self_attentions), not the self-attention RefDrop guides"
    ),
    "HiDreamO1": (
        "it has no self-attention call to guide: each layer sends only the generated tokens' queries (its "
        "timestep token and the target image) through ComfyUI's attention, against the keys and values of the "
        "whole text+image sequence (comfy/ldm/hidream_o1/attention.py), while the causal text prefix runs through "
        "PyTorch's attention directly, outside ComfyUI's attention override"
    ),
    "HunyuanImage21Refiner": (
        "its latent format (latent_formats.HunyuanImage21Refiner) packs two frames of its VAE's 32-channel latent "
        "into one 64-channel frame, so reference pictures encoded by its VAE do not match the latent it samples; "
        "use RefDrop on the HunyuanImage 2.1 base model"
    ),
    "ErnieImage": (
        "its attention (comfy/ldm/ernie/model.py, ErnieImageAttention) is called without transformer_options, "
        "so ComfyUI's attention override never sees it"
    ),
    "WAN21_CausalAR_T2V": (
        "its autoregressive sampler (SamplerARVideo) runs CausalWanModel.forward_block (comfy/ldm/wan/ar_model.py), "
        "which calls the blocks without transformer_options, so ComfyUI's attention override never sees their "
        "attention; and each model call holds one block of latent frames, the earlier frames only as keys in its "
        "KV cache, so there is no clip-wide self-attention to guide"
    ),
    "SeedVR2": (
        "its attention (comfy/ldm/seedvr/attention.py, var_attention_optimized_split) calls ComfyUI's attention "
        "without transformer_options, so ComfyUI's attention override never sees it; and it restores a given video "
        "(the low-quality clip fixes the content) with self-attention inside 3-D windows"
    ),
    "LTXAV": (
        "LTX-2 samples video and audio as one packed latent (ComfyUI flattens both into one (batch, 1, N) tensor "
        "and unpacks it inside the model call, from latent_shapes), so the model's input is not the clip's 5-D "
        "latent Temporal RefDrop reads the latent frames from; each block also interleaves video, audio and "
        "audio-video attentions. Use LTX-Video (LTXV) models"
    ),
    "MiniMaxH3": (
        "MiniMax H3 samples video and audio as one packed latent (ComfyUI flattens both into one (batch, 1, N) "
        "tensor and unpacks it inside the model call, from latent_shapes), so the model's input is not the clip's "
        "5-D latent Temporal RefDrop reads the latent frames from"
    ),
}

# Configurations that do not generate images or video (audio, 3-D, detection, segmentation, depth).
NOT_GENERATORS: dict[str, str] = {
    "StableAudio": "audio", "StableAudio3": "audio", "ACEStep": "audio", "ACEStep15": "audio",
    "Hunyuan3Dv2": "3-D shapes", "Hunyuan3Dv2_1": "3-D shapes", "Hunyuan3Dv2mini": "3-D shapes",
    "TripoSplat": "3-D Gaussian splats", "RT_DETR_v4": "object detection", "SAM3": "segmentation",
    "SAM31": "segmentation", "DepthAnything3": "depth estimation", "LotusD": "depth / normal estimation",
}  # fmt: skip


@dataclass(frozen=True)
class Coverage:
    """What the pack does with one configuration: the family that supports it and its features, or a reason."""

    config: str
    family: str | None = None
    features: tuple[str, ...] = ()
    refused: str | None = None
    not_a_generator: str | None = None


def dit_coverage() -> dict[str, Coverage]:
    covered = {}
    for family in dit_families.FAMILIES:
        features = (TEMPORAL, *((CLIP_PICTURE,) if family.clip_pictures else ())) if family.video else IMAGE_FEATURES
        for config in family.configs:
            covered[config] = Coverage(config, family.name, features)
    return covered


def coverage() -> dict[str, Coverage]:
    """Every configuration the pack knows, by ``comfy.supported_models`` class name."""
    table = {name: Coverage(name, family, IMAGE_FEATURES) for name, family in IMAGE_UNET_CONFIGS.items()}
    table.update({name: Coverage(name, family, (TEMPORAL,)) for name, family in VIDEO_UNET_CONFIGS.items()})
    table.update(dit_coverage())
    table.update({name: Coverage(name, refused=reason) for name, reason in REFUSED.items()})
    table.update({name: Coverage(name, not_a_generator=what) for name, what in NOT_GENERATORS.items()})
    return table


def refusal(config_names: tuple[str, ...]) -> tuple[str, str] | None:
    """(configuration, reason) when the most specific known configuration of a model is refused or no generator."""
    table = coverage()
    for name in config_names:
        entry = table.get(name)
        if entry is None:
            continue
        if entry.refused:
            return name, entry.refused
        if entry.not_a_generator:
            return name, f"it is a {entry.not_a_generator} model, not an image or video generator"
        return None
    return None


def render_table() -> str:
    """The README's family table: one row per family (its configurations), then the refused models."""
    rows: dict[str, list[str]] = {}
    features: dict[str, tuple[str, ...]] = {}
    for entry in coverage().values():
        if entry.family:
            rows.setdefault(entry.family, []).append(entry.config)
            features[entry.family] = entry.features
    columns = (IN_BATCH, PICTURES, MASKS, REGIONS, TEMPORAL, CLIP_PICTURE)
    lines = [
        "| Family | ComfyUI configurations (`comfy.supported_models`) | "
        + " | ".join(c.capitalize() for c in columns)
        + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for family, configs in rows.items():
        marks = " | ".join("yes" if column in features[family] else "" for column in columns)
        lines.append(f"| {family} | {', '.join(f'`{c}`' for c in configs)} | {marks} |")
    lines += [
        "",
        "Block names (`exclude_blocks`) and guided calls of the diffusion transformers:",
        "",
        "| Family | Block names and guided self-attention calls |",
        "|---|---|",
    ]
    lines += [f"| {family.name} | {family.naming} |" for family in dit_families.FAMILIES]
    lines += ["", "Refused (the node says why):", "", "| ComfyUI configuration | Why |", "|---|---|"]
    lines += [f"| `{name}` | {reason} |" for name, reason in sorted(REFUSED.items())]
    lines += [
        "",
        "Not image or video generators: " + ", ".join(f"`{n}` ({w})" for n, w in sorted(NOT_GENERATORS.items())),
    ]
    return "\n".join(lines)
