"""RefDrop workflows for Flux (diffusion transformers): consistent character, in-batch references, cfg 1."""

from __future__ import annotations

from workflow_builder import OUTPUTS, Workflow

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


def consistent_character() -> Workflow:
    OUTPUTS.update(FLUX_OUTPUTS)
    wf = Workflow()
    unet, clip, vae = flux_loaders(wf)
    refdrop = wf.add("ApplyRefDrop", (400, 40), [0.3, 1, False, "", ""], {"model": (unet, 0)}, size=(320, 200))
    prompts = "\n".join(
        [
            "photo of a young woman with short red hair and freckles, green wool coat, studio portrait, neutral background",
            "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe",
            "photo of a young woman with short red hair and freckles, green wool coat, walking on a beach at sunset",
            "photo of a young woman with short red hair and freckles, green wool coat, hiking in snowy mountains",
        ]
    )
    batch = wf.add("RefDropPromptBatch", (400, 280), [prompts], {"clip": (clip, 0)}, size=(420, 220))
    positive = wf.add("FluxGuidance", (860, 280), [3.5], {"conditioning": (batch, 0)}, size=(320, 60))
    negative = wf.add("ConditioningZeroOut", (860, 380), [], {"conditioning": (batch, 0)}, size=(320, 30))
    latent = wf.add("EmptySD3LatentImage", (400, 540), [1024, 1024, 4], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (860, 460),
        [42, "fixed", 20, 1.0, "euler", "simple", 1.0],
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", (1220, 40), [], {"samples": (sampler, 0), "vae": (vae, 0)}, size=(200, 50))
    wf.add("SaveImage", (1220, 140), ["RefDrop_flux_consistent"], {"images": (decode, 0)}, size=(520, 560))
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


def build() -> dict[str, Workflow]:
    return {"refdrop_flux_consistent_character": consistent_character()}
