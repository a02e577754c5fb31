"""RefDrop on Flux 2 dev: a consistent character across a batch of four images (in-batch Apply RefDrop, cfg 1),
loaded as ComfyUI's Flux 2 template loads it (UNETLoader + CLIPLoader `flux2` + VAELoader, Empty Flux 2 Latent)."""

from __future__ import annotations

from workflow_builder import FLUX2_FILES, Workflow
from workflows_flux import one_prompt_sampling

PROMPT = (
    "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe, "
    "warm window light"
)
SIZE, BATCH = 1024, 4


def consistent_character() -> Workflow:
    """Flux 2 dev loaders -> Apply RefDrop (c = 0.3, image 1 the reference) -> one prompt, FluxGuidance 4 ->
    KSampler (cfg 1, euler / simple, 20 steps) on a 1024x1024 batch of 4 -> decode -> save."""
    unet_file, clip_file, vae_file = FLUX2_FILES
    wf = Workflow()
    unet = wf.add("UNETLoader", None, [unet_file["name"], "default"], size=(340, 90), models=[unet_file])
    clip = wf.add("CLIPLoader", None, [clip_file["name"], "flux2", "default"], size=(340, 110), models=[clip_file])
    vae = wf.add("VAELoader", None, [vae_file["name"]], size=(340, 60), models=[vae_file])
    refdrop = wf.add("ApplyRefDrop", None, [0.3, 1, False, "", "", 0.0, 1.0], {"model": (unet, 0)},
                     size=(340, 250))  # fmt: skip
    one_prompt_sampling(wf, refdrop, clip, vae, PROMPT, 4.0, ("EmptyFlux2LatentImage", [SIZE, SIZE, BATCH]),
                        "RefDrop_flux2_consistent")  # fmt: skip
    wf.note(
        None,
        "## RefDrop on Flux 2: consistent character\n\n"
        "Four images of one prompt in one batch: image 1 is the **reference**, and in every self-attention call "
        "of images 2-4 (each double- and single-stream block of Flux 2, over the joint text+image sequence) "
        "c = 0.3 of the attention goes to the reference's keys and values (paper Eq. 5). The four images get "
        "different noise, so they differ in pose and framing while keeping one look.\n\n"
        "- Flux 2 dev: cfg 1 (the negative is zeroed and never used), FluxGuidance 4. ComfyUI's own Flux 2 "
        "template samples with Flux2Scheduler; KSampler's `simple` schedule on Flux 2's shift is nearly the same "
        "at 1024x1024, and either works with Apply RefDrop.\n"
        "- One prompt for the whole batch: Flux 2's text encoder gives every prompt its own length, so per-image "
        "prompts (RefDrop Prompt Batch, made for CLIP / T5) do not batch well here. For another scene, change the "
        "prompt and queue again with the same seed.\n"
        "- More consistency: raise `strength`; freer layout: list early blocks in `exclude_blocks` (e.g. "
        "`double 0, double 1`; the blocks are `double 0`.. and `single 0`..: a name the model does not have is "
        "refused with the list of its blocks). `skip_up1` is a UNet option and is refused on Flux 2.\n"
        "- Flux 2 Klein works the same way: load its files instead (CLIPLoader `flux2` with its Qwen 3 text "
        "encoder, the same VAE) and use Klein's steps.\n\n"
        "**Model files** ([Comfy-Org/flux2-dev](https://huggingface.co/Comfy-Org/flux2-dev)): "
        "`models/diffusion_models/flux2_dev_fp8mixed.safetensors`, "
        "`models/text_encoders/mistral_3_small_flux2_fp8.safetensors`, `models/vae/flux2-vae.safetensors`.",
        size=(380, 560),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {"refdrop_flux2_consistent_character": consistent_character()}
