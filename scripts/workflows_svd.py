"""RefDrop video workflows: SVD img2vid with SVD Temporal RefDrop (and a plain-SVD comparison), SDXL -> SVD."""

from __future__ import annotations

from workflow_builder import SDXL_BASE, SVD_XT, Workflow
from workflows_refdrop import NEGATIVE

SVD_NOTE_MODELS = (
    "**Model files:** `models/checkpoints/svd_xt_1_1.safetensors` "
    "([stabilityai/stable-video-diffusion-img2vid-xt-1-1](https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt-1-1)); "
    "`svd_xt.safetensors` or `svd.safetensors` work too."
)
INPUT_IMAGE = "refdrop_svd_input.png"


def svd_branch(wf: Workflow, svd_ckpt: int, image, x: int, y: int, refdrop: bool, seed: int, prefix: str):
    """SVD_img2vid_Conditioning -> VideoLinearCFGGuidance -> (SVD Temporal RefDrop) -> KSampler -> VAEDecode."""
    conditioning = wf.add(
        "SVD_img2vid_Conditioning",
        (x, y),
        [1024, 576, 14, 127, 6, 0.0],
        {"clip_vision": (svd_ckpt, 1), "init_image": image, "vae": (svd_ckpt, 2)},
        size=(320, 220),
    )
    model = wf.add("VideoLinearCFGGuidance", (x, y + 260), [1.0], {"model": (svd_ckpt, 0)}, size=(320, 60))
    if refdrop:
        model = wf.add("SVDTemporalRefDrop", (x, y + 360), [0.2, 0, 0.0, 1.0], {"model": (model, 0)}, size=(320, 150))
    sampler = wf.add(
        "KSampler",
        (x + 360, y),
        [seed, "fixed", 20, 2.5, "euler", "karras", 1.0],
        {"model": (model, 0), "positive": (conditioning, 0), "negative": (conditioning, 1),
         "latent_image": (conditioning, 2)},
        size=(320, 270),
    )  # fmt: skip
    decode = wf.add(
        "VAEDecode", (x + 360, y + 310), [], {"samples": (sampler, 0), "vae": (svd_ckpt, 2)}, size=(200, 50)
    )
    wf.add(
        "SaveAnimatedWEBP", (x + 720, y), [prefix, 6.0, False, 85, "default"], {"images": (decode, 0)}, size=(420, 380)
    )
    return decode


def svd_img2vid_with_comparison() -> Workflow:
    wf = Workflow()
    svd = wf.add("ImageOnlyCheckpointLoader", (40, 40), ["svd_xt_1_1.safetensors"], size=(320, 100), models=[SVD_XT])
    image = wf.add("LoadImage", (40, 200), [INPUT_IMAGE, "image"], size=(320, 360), group="Start image")
    guided = svd_branch(wf, svd, (image, 0), 400, 40, refdrop=True, seed=1024, prefix="RefDrop_svd")
    plain = svd_branch(wf, svd, (image, 0), 400, 620, refdrop=False, seed=1024, prefix="SVD_plain")
    stitched = wf.add(
        "ImageStitch", (1560, 40), ["right", True, 0, "white"], {"image1": (guided, 0), "image2": (plain, 0)},
        size=(320, 180),
    )  # fmt: skip
    wf.add("SaveAnimatedWEBP", (1560, 260), ["RefDrop_vs_plain_svd", 6.0, False, 85, "default"],
           {"images": (stitched, 0)}, size=(640, 400))  # fmt: skip
    wf.note(
        (40, 600),
        "## RefDrop for Stable Video Diffusion\n\n"
        "**SVD Temporal RefDrop** guides every frame's *spatial* self-attention toward frame 0 with c = 0.2 (the "
        "paper's value): less flicker and face distortion, motion kept. Temporal attention is untouched.\n\n"
        "The lower branch is plain SVD from the same seed; the last node saves both side by side "
        "(left: RefDrop, right: plain). Larger strengths make the video more and more static.\n\n"
        "Settings as in the paper: 1024x576, cfg 2.5 (VideoLinearCFGGuidance from 1.0), 14 frames "
        "(svd_xt also does 25).\n\n" + SVD_NOTE_MODELS + f"\n\n**Start image:** `{INPUT_IMAGE}` is a small example "
        "the pack copies into ComfyUI's `input/` folder; upload your own picture in *Load Image* (1024x576 or 16:9).",
    )
    return wf


def sdxl_to_svd_pipeline() -> Workflow:
    """The paper's pipeline: a consistent SDXL image (Apply RefDrop) animated by SVD with SVD Temporal RefDrop."""
    wf = Workflow()
    sdxl = wf.add("CheckpointLoaderSimple", (40, 40), ["sd_xl_base_1.0.safetensors"], size=(320, 100),
                  models=[SDXL_BASE])  # fmt: skip
    refdrop = wf.add(
        "ApplyRefDrop", (400, 40), [0.35, 1, False, "", "", 0.0, 1.0], {"model": (sdxl, 0)}, size=(320, 200)
    )
    prompts = (
        "photo of a small robot with round blue eyes and a yellow scarf, standing, plain background\n"
        "photo of a small robot with round blue eyes and a yellow scarf, waving in a sunny park"
    )
    positive = wf.add("RefDropPromptBatch", (400, 280), [prompts], {"clip": (sdxl, 1)}, size=(420, 180))
    negative = wf.add("CLIPTextEncode", (400, 500), [NEGATIVE], {"clip": (sdxl, 1)}, size=(420, 120))
    latent = wf.add("EmptyLatentImage", (400, 660), [1024, 1024, 2], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (860, 40),
        [77, "fixed", 20, 5.0, "dpmpp_2m", "karras", 1.0],
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    images = wf.add("VAEDecode", (860, 350), [], {"samples": (sampler, 0), "vae": (sdxl, 2)}, size=(200, 50))
    wf.add("SaveImage", (860, 440), ["RefDrop_sdxl_for_svd"], {"images": (images, 0)}, size=(420, 300))
    scene = wf.add("ImageFromBatch", (1220, 40), [1, 1], {"image": (images, 0)}, size=(280, 90))
    svd = wf.add("ImageOnlyCheckpointLoader", (1220, 180), ["svd_xt_1_1.safetensors"], size=(320, 100),
                 models=[SVD_XT])  # fmt: skip
    svd_branch(wf, svd, (scene, 0), 1560, 40, refdrop=True, seed=2024, prefix="RefDrop_sdxl_to_svd")
    wf.note(
        (40, 820),
        "## The paper's pipeline: consistent image, then a steady video\n\n"
        "1. SDXL makes a reference (first prompt line) and a scene (second line); **Apply RefDrop** (c = 0.35) keeps "
        "the character consistent between them.\n"
        "2. The scene (batch index 1) goes into Stable Video Diffusion with **SVD Temporal RefDrop** (c = 0.2), "
        "which guides every frame toward frame 0.\n\n"
        "**Model files:** `models/checkpoints/sd_xl_base_1.0.safetensors` and `models/checkpoints/svd_xt_1_1.safetensors`.",
        size=(460, 320),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {
        "refdrop_svd_img2vid_comparison": svd_img2vid_with_comparison(),
        "refdrop_sdxl_to_svd_pipeline": sdxl_to_svd_pipeline(),
    }
