"""Apply RefDrop (Reference Image) on Z-Image Turbo and Qwen-Image: a character from one picture, loaded and
sampled as ComfyUI's own templates for these models do (UNETLoader + CLIPLoader + VAELoader, ModelSamplingAuraFlow)."""

from __future__ import annotations

from workflow_builder import QWEN_IMAGE_FILES, ZIMAGE_FILES, Workflow

REFERENCE_PICTURE = "refdrop_character_1.png"
PROMPT = (
    "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe, "
    "warm window light"
)
ONE_PROMPT = (
    "- One prompt for the whole batch: the Qwen text encoders give every prompt its own length, so per-image "
    "prompts (RefDrop Prompt Batch, made for CLIP / T5) do not batch well here. For another scene, change the "
    "prompt and queue again: the picture keeps the character."
)


def picture_workflow(
    files: list[dict],
    clip_type: str,
    shift: float,
    size: int,
    batch: int,
    sampler: list,
    negative_text: str | None,
    note: str,
    prefix: str,
) -> Workflow:
    """Loaders -> ModelSamplingAuraFlow -> Apply RefDrop (Reference Image) with a Load Image picture -> one prompt,
    ``batch`` images."""
    unet_file, clip_file, vae_file = files
    wf = Workflow()
    unet = wf.add("UNETLoader", None, [unet_file["name"], "default"], size=(340, 90), models=[unet_file])
    clip = wf.add("CLIPLoader", None, [clip_file["name"], clip_type, "default"], size=(340, 110), models=[clip_file])
    vae = wf.add("VAELoader", None, [vae_file["name"]], size=(340, 60), models=[vae_file])
    sampling = wf.add("ModelSamplingAuraFlow", None, [shift], {"model": (unet, 0)}, size=(300, 60))
    picture = wf.add("LoadImage", None, [REFERENCE_PICTURE, "image"], size=(320, 360))
    refdrop = wf.add("ApplyRefDropImage", None, [0.3, 42, "fixed", False, "", "", 0.0, 1.0],
                     {"model": (sampling, 0), "vae": (vae, 0), "image": (picture, 0)}, size=(340, 300), group="RefDrop")  # fmt: skip
    positive = wf.add("CLIPTextEncode", None, [PROMPT], {"clip": (clip, 0)}, size=(420, 160))
    if negative_text is None:  # cfg 1: the negative is never used
        negative = wf.add("ConditioningZeroOut", None, [], {"conditioning": (positive, 0)}, size=(320, 30))
    else:
        negative = wf.add("CLIPTextEncode", None, [negative_text], {"clip": (clip, 0)}, size=(420, 160),
                          title="CLIP Text Encode (Negative Prompt)")  # fmt: skip
    latent = wf.add("EmptySD3LatentImage", None, [size, size, batch], size=(320, 110))
    ksampler = wf.add(
        "KSampler",
        None,
        sampler,
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", None, [], {"samples": (ksampler, 0), "vae": (vae, 0)}, size=(200, 50))
    wf.add("SaveImage", None, [prefix], {"images": (decode, 0)}, size=(520, 560))
    wf.note(None, note, size=(380, 560))
    return wf


def zimage_character_from_picture() -> Workflow:
    note = (
        "## RefDrop on Z-Image Turbo: a character from one picture\n\n"
        "Load the picture of your character in **Load Image** (any size: it is resized and centre-cropped to the "
        "latent). *Apply RefDrop (Reference Image)* encodes it once with the VAE; at every step it is noised to the "
        "step's noise level and runs as an extra batch row, and in every self-attention call of Z-Image's "
        "transformer (caption refiner, image refiner and joint layers) each of the four images puts c = 0.3 of its "
        "attention on the picture's keys and values.\n\n"
        "- Sampling as ComfyUI's Z-Image Turbo template: ModelSamplingAuraFlow shift 3, 8 steps, cfg 1 "
        "(the negative is zeroed and never used), res_multistep.\n"
        "- Describe the character in the prompt too: the text says what, the picture how it looks.\n"
        f"{ONE_PROMPT}\n"
        "- More likeness: raise `strength`; freer layout: end the guidance earlier (`end_percent`) or list early "
        "blocks in `exclude_blocks` (e.g. `layer 0, layer 1`).\n\n"
        "**Model files** ([Comfy-Org/z_image_turbo](https://huggingface.co/Comfy-Org/z_image_turbo)): "
        "`models/diffusion_models/z_image_turbo_bf16.safetensors`, `models/text_encoders/qwen_3_4b.safetensors`, "
        "`models/vae/ae.safetensors` (the Flux VAE)."
    )
    return picture_workflow(
        ZIMAGE_FILES, "lumina2", 3.0, 1024, 4, [42, "fixed", 8, 1.0, "res_multistep", "simple", 1.0], None, note,
        "RefDrop_zimage_from_picture",
    )  # fmt: skip


def qwen_image_character_from_picture() -> Workflow:
    note = (
        "## RefDrop on Qwen-Image: a character from one picture\n\n"
        "Load the picture of your character in **Load Image** (any size: it is resized and centre-cropped to the "
        "latent). *Apply RefDrop (Reference Image)* encodes it once with Qwen-Image's VAE; at every step it is "
        "noised to the step's noise level and runs as an extra batch row in front of each guidance branch (cfg 4: "
        "positive and negative), and in every joint text+image attention of the transformer each of the two images "
        "puts c = 0.3 of its attention on the picture's keys and values.\n\n"
        "- Sampling as ComfyUI's Qwen-Image template without the Lightning LoRA: ModelSamplingAuraFlow shift 3.1, "
        "20 steps, cfg 4, euler, 1328 x 1328.\n"
        "- Describe the character in the prompt too: the text says what, the picture how it looks.\n"
        f"{ONE_PROMPT}\n"
        "- More likeness: raise `strength`; freer layout: end the guidance earlier (`end_percent`) or list early "
        "blocks in `exclude_blocks` (e.g. `block 0, block 1`).\n\n"
        "**Model files** ([Comfy-Org/Qwen-Image_ComfyUI](https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI)): "
        "`models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors`, "
        "`models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors`, `models/vae/qwen_image_vae.safetensors`."
    )
    return picture_workflow(
        QWEN_IMAGE_FILES, "qwen_image", 3.1, 1328, 2, [42, "fixed", 20, 4.0, "euler", "simple", 1.0], "", note,
        "RefDrop_qwen_image_from_picture",
    )  # fmt: skip


def build() -> dict[str, Workflow]:
    return {
        "refdrop_zimage_character_from_picture": zimage_character_from_picture(),
        "refdrop_qwen_image_character_from_picture": qwen_image_character_from_picture(),
    }
