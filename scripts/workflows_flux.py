"""RefDrop workflows for Flux (diffusion transformers): consistent character, in-batch references, cfg 1."""

from __future__ import annotations

from workflow_builder import OUTPUTS, Workflow
from workflows_refdrop import TWO_CHARACTERS_PROMPT, TWO_CHARACTERS_SIZE, regions_note, two_characters_inputs

FLUX_DEV = {
    "name": "flux1-dev.safetensors",
    "url": "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
    "directory": "diffusion_models",
}
CLIP_L = {
    "name": "clip_l.safetensors",
    "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    "directory": "text_encoders",
}
T5XXL = {
    "name": "t5xxl_fp16.safetensors",
    "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
    "directory": "text_encoders",
}
FLUX_VAE = {
    "name": "ae.safetensors",
    "url": "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors",
    "directory": "vae",
}

# Output sockets of the Flux graph's node types (kept here, next to the graphs that use them).
FLUX_OUTPUTS = {
    "UNETLoader": [("MODEL", "MODEL")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "VAELoader": [("VAE", "VAE")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "ConditioningZeroOut": [("CONDITIONING", "CONDITIONING")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
}

MODEL_NOTE = (
    "**Model files:** `models/diffusion_models/flux1-dev.safetensors` "
    "([black-forest-labs/FLUX.1-dev](https://huggingface.co/black-forest-labs/FLUX.1-dev)), "
    "`models/text_encoders/clip_l.safetensors` and `t5xxl_fp16.safetensors` "
    "([comfyanonymous/flux_text_encoders](https://huggingface.co/comfyanonymous/flux_text_encoders)), "
    "`models/vae/ae.safetensors`. Flux schnell, Chroma, Qwen-Image, Lumina 2 / Z-Image and SD3 work the same way "
    "with their own loaders; their block names are listed in the README."
)


def flux_loaders(wf: Workflow) -> tuple[int, int, int]:
    """UNETLoader + DualCLIPLoader + VAELoader as ComfyUI's Flux dev template loads them."""
    unet = wf.add("UNETLoader", (40, 40), ["flux1-dev.safetensors", "default"], size=(320, 90), models=[FLUX_DEV])
    clip = wf.add("DualCLIPLoader", (40, 170), ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                  size=(320, 130), models=[CLIP_L, T5XXL])  # fmt: skip
    vae = wf.add("VAELoader", (40, 340), ["ae.safetensors"], size=(320, 60), models=[FLUX_VAE])
    return unet, clip, vae


def flux_sampling(wf: Workflow, model: int, clip: int, vae: int, prompts: str, prefix: str) -> None:
    """Per-image prompts -> FluxGuidance 3.5 -> KSampler (cfg 1, euler/simple, 20 steps) -> decode -> save."""
    batch = wf.add("RefDropPromptBatch", (400, 380), [prompts], {"clip": (clip, 0)}, size=(420, 220))
    positive = wf.add("FluxGuidance", (860, 380), [3.5], {"conditioning": (batch, 0)}, size=(320, 60))
    negative = wf.add("ConditioningZeroOut", (860, 480), [], {"conditioning": (batch, 0)}, size=(320, 30))
    latent = wf.add("EmptySD3LatentImage", (400, 640), [1024, 1024, 4], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (860, 560),
        [42, "fixed", 20, 1.0, "euler", "simple", 1.0],
        {"model": (model, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", (1220, 40), [], {"samples": (sampler, 0), "vae": (vae, 0)}, size=(200, 50))
    wf.add("SaveImage", (1220, 140), [prefix], {"images": (decode, 0)}, size=(520, 560))


CHARACTER_PROMPTS = "\n".join(
    [
        "photo of a young woman with short red hair and freckles, green wool coat, studio portrait, neutral background",
        "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe",
        "photo of a young woman with short red hair and freckles, green wool coat, walking on a beach at sunset",
        "photo of a young woman with short red hair and freckles, green wool coat, hiking in snowy mountains",
    ]
)
PICTURE_PROMPTS = "\n".join(
    [
        "photo of the woman from the reference picture reading a book in a cozy cafe",
        "photo of the woman from the reference picture walking on a beach at sunset",
        "photo of the woman from the reference picture hiking in snowy mountains",
        "photo of the woman from the reference picture, portrait in a sunny garden",
    ]
)
REFERENCE_PICTURE = "refdrop_reference_character.png"


def one_prompt_sampling(wf: Workflow, model: int, clip: int, vae: int, text: str, guidance: float, latent,
                        prefix: str) -> None:  # fmt: skip
    """One prompt -> FluxGuidance (negative zeroed) -> KSampler (cfg 1, euler/simple, 20 steps) on ``latent`` (its
    node type and widgets) -> decode -> save (auto-placed; Flux 1 and Flux 2 alike)."""
    prompt = wf.add("CLIPTextEncode", None, [text], {"clip": (clip, 0)}, size=(420, 160))
    positive = wf.add("FluxGuidance", None, [guidance], {"conditioning": (prompt, 0)}, size=(320, 60))
    negative = wf.add("ConditioningZeroOut", None, [], {"conditioning": (prompt, 0)}, size=(320, 30))
    latent_kind, latent_widgets = latent
    latent_node = wf.add(latent_kind, None, latent_widgets, size=(320, 110))
    sampler = wf.add(
        "KSampler",
        None,
        [42, "fixed", 20, 1.0, "euler", "simple", 1.0],
        {"model": (model, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent_node, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", None, [], {"samples": (sampler, 0), "vae": (vae, 0)}, size=(200, 50))
    wf.add("SaveImage", None, [prefix], {"images": (decode, 0)}, size=(520, 560))


def character_from_picture() -> Workflow:
    OUTPUTS.update(FLUX_OUTPUTS)
    wf = Workflow()
    unet, clip, vae = flux_loaders(wf)
    picture = wf.add("LoadImage", (40, 840), [REFERENCE_PICTURE, "image"], size=(320, 360))
    refdrop = wf.add("ApplyRefDropImage", (400, 40), [0.3, 42, "fixed", False, "", "", 0.0, 1.0],
                     {"model": (unet, 0), "vae": (vae, 0), "image": (picture, 0)}, size=(340, 300))  # fmt: skip
    flux_sampling(wf, refdrop, clip, vae, PICTURE_PROMPTS, "RefDrop_flux_from_picture")
    wf.note(
        (40, 440),
        "## RefDrop on Flux: a character from one picture\n\n"
        "Load the picture of your character in **Load Image** (any size: it is resized and centre-cropped to the "
        "latent). *Apply RefDrop (Reference Image)* encodes it once with Flux's VAE; at every step it goes through "
        "the model's own latent scaling, is noised to the step's noise level (flow matching: sigma*noise + "
        "(1-sigma)*latent) and runs as an extra batch row; in every self-attention call (double- and single-stream "
        "blocks) each of the four images puts c = 0.3 of its attention on the picture's keys and values.\n\n"
        "- Flux dev: cfg 1, FluxGuidance 3.5.\n"
        "- More likeness: raise `strength`; freer layout: end the guidance earlier (`end_percent`) or list early "
        "blocks in `exclude_blocks`. Subject masks and `skip_up1` are UNet-only.\n\n" + MODEL_NOTE,
        size=(340, 380),
    )
    return wf


def consistent_character() -> Workflow:
    OUTPUTS.update(FLUX_OUTPUTS)
    wf = Workflow()
    unet, clip, vae = flux_loaders(wf)
    refdrop = wf.add("ApplyRefDrop", (400, 40), [0.3, 1, False, "", "", 0.0, 1.0], {"model": (unet, 0)},
                     size=(320, 240))  # fmt: skip
    flux_sampling(wf, refdrop, clip, vae, CHARACTER_PROMPTS, "RefDrop_flux_consistent")
    wf.note(
        (40, 440),
        "## RefDrop on Flux: consistent character\n\n"
        "Apply RefDrop works on diffusion transformers the same way as on SDXL: the latent batch has 4 images, "
        "image 1 is the **reference** (first prompt line) and in every self-attention call of images 2-4 (each "
        "double- and single-stream block, over the joint text+image sequence) c = 0.3 of the attention goes to "
        "the reference's keys and values (paper Eq. 5).\n\n"
        "- Flux dev runs with cfg 1 (one guidance chunk) and FluxGuidance 3.5; the negative is never used.\n"
        "- More consistency: raise `strength`; freer layout: list early blocks in `exclude_blocks` "
        "(e.g. `double 0, double 1`). `skip_up1` is a UNet option and is refused on Flux.\n\n" + MODEL_NOTE,
        size=(340, 420),
    )
    return wf


def two_characters() -> Workflow:
    """Flux dev: two pictures -> Apply RefDrop (Reference Image) with left / right regions -> two images of both."""
    OUTPUTS.update(FLUX_OUTPUTS)
    width, height = TWO_CHARACTERS_SIZE
    wf = Workflow()
    unet, clip, vae = flux_loaders(wf)
    images, regions = two_characters_inputs(wf, width, height)
    refdrop = wf.add(
        "ApplyRefDropImage", None, [0.3, 42, "fixed", False, "0.3, 0.3", "", 0.0, 1.0],
        {"model": (unet, 0), "vae": (vae, 0), "image": (images, 0), "regions": (regions, 0)}, size=(340, 320),
        group="RefDrop",
    )  # fmt: skip
    one_prompt_sampling(wf, refdrop, clip, vae, TWO_CHARACTERS_PROMPT, 3.5, ("EmptySD3LatentImage", [width, height, 2]),
                        "RefDrop_flux_two_characters")  # fmt: skip
    wf.note(
        None,
        "## RefDrop on Flux: two characters in one image\n\n"
        "Two pictures, one character each, guide one image: *Apply RefDrop (Reference Image)* encodes both with "
        "Flux's VAE and runs them, noised to each step's level, as extra batch rows; `reference_strengths` = "
        "0.3, 0.3 gives each its own c (Eq. 6), in every self-attention call (double- and single-stream "
        "blocks).\n\n"
        + regions_note(width, height)
        + "- Flux dev: cfg 1, FluxGuidance 3.5 (the negative is zeroed and never used).\n"
        "- More likeness: raise the strengths; freer layout: end the guidance earlier (`end_percent`) or list "
        "early blocks in `exclude_blocks`.\n\n" + MODEL_NOTE,
        size=(400, 760),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {
        "refdrop_flux_consistent_character": consistent_character(),
        "refdrop_flux_character_from_picture": character_from_picture(),
        "refdrop_flux_two_characters": two_characters(),
    }
