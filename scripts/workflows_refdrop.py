"""RefDrop image workflows (SDXL): consistent character, diverse generation, two-reference blend, and the
reference-image node (a character from one picture, with and without a subject mask)."""

from __future__ import annotations

from workflow_builder import SDXL_BASE, Workflow

NEGATIVE = "blurry, lowres, bad anatomy, worst quality, low quality, deformed"


def sdxl_refdrop(prompts: str, refdrop_widgets: list, batch: int, note: str, seed: int, prefix: str) -> Workflow:
    """SDXL base + Apply RefDrop + per-image prompts + one KSampler over the whole batch."""
    wf = Workflow()
    ckpt = wf.add("CheckpointLoaderSimple", (40, 120), ["sd_xl_base_1.0.safetensors"], size=(320, 100),
                  models=[SDXL_BASE])  # fmt: skip
    refdrop = wf.add("ApplyRefDrop", (400, 40), [*refdrop_widgets, 0.0, 1.0], {"model": (ckpt, 0)}, size=(320, 200))
    positive = wf.add("RefDropPromptBatch", (400, 280), [prompts], {"clip": (ckpt, 1)}, size=(420, 220))
    negative = wf.add("CLIPTextEncode", (400, 540), [NEGATIVE], {"clip": (ckpt, 1)}, size=(420, 120))
    latent = wf.add("EmptyLatentImage", (400, 700), [1024, 1024, batch], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (860, 120),
        [seed, "fixed", 20, 5.0, "dpmpp_2m", "karras", 1.0],
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", (1220, 120), [], {"samples": (sampler, 0), "vae": (ckpt, 2)}, size=(200, 50))
    wf.add("SaveImage", (1220, 220), [prefix], {"images": (decode, 0)}, size=(520, 560))
    wf.note((40, 300), note)
    return wf


MODEL_NOTE = (
    "**Model files:** `models/checkpoints/sd_xl_base_1.0.safetensors` "
    "([stabilityai/stable-diffusion-xl-base-1.0](https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0)). "
    "Any SDXL, SD1.x or SD2.x checkpoint works; the paper used ProtoVision-XL."
)


def consistent_character() -> Workflow:
    prompts = "\n".join(
        [
            "photo of a young woman with short red hair and freckles, green wool coat, studio portrait, neutral background",
            "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe",
            "photo of a young woman with short red hair and freckles, green wool coat, walking on a beach at sunset",
            "photo of a young woman with short red hair and freckles, green wool coat, hiking in snowy mountains",
        ]
    )
    note = (
        "## RefDrop: consistent character\n\n"
        "The latent batch has 4 images. Image 1 is the **reference** (first prompt line); images 2-4 get their own "
        "scene prompts and their self-attention is pulled toward the reference with strength c = 0.35 "
        "(paper: 0.3-0.4 for people, about 0.2 for toys and cartoons).\n\n"
        "- More consistency: raise `strength` (too high copies the pose and layout too).\n"
        "- Same subject, freer layout: turn on `skip_up1`.\n\n" + MODEL_NOTE
    )
    return sdxl_refdrop(prompts, [0.35, 1, False, "", ""], 4, note, 42, "RefDrop_consistent")


def diverse_generation() -> Workflow:
    prompts = "\n".join(["photo of a cat sitting on a windowsill, soft morning light"] * 4)
    note = (
        "## RefDrop: more diverse images\n\n"
        "All 4 images share one prompt. With a **negative** strength (c = -0.3) images 2-4 are pushed away from "
        "image 1's features, so the batch varies more than plain sampling (paper: -0.3; lower values hurt "
        "quality).\n\n" + MODEL_NOTE
    )
    return sdxl_refdrop(prompts, [-0.3, 1, False, "", ""], 4, note, 7, "RefDrop_diverse")


def blend_two_references() -> Workflow:
    prompts = "\n".join(
        [
            "photo of an old fisherman with a white beard and a yellow raincoat, portrait",
            "photo of a young astronaut woman with curly black hair in a white space suit, portrait",
            "photo of a person standing on a harbour pier at dawn, full body",
            "photo of a person drinking coffee in a kitchen, upper body",
        ]
    )
    note = (
        "## RefDrop: blending two references\n\n"
        "Images 1 and 2 are references (`reference_count` = 2), each with its own strength "
        "(`reference_strengths` = 0.3, 0.3: Eq. 6 of the paper, one extra attention per reference). Images 3 and 4 "
        "mix features of both (paper: 0.2-0.4 per reference for two or three references).\n\n" + MODEL_NOTE
    )
    return sdxl_refdrop(prompts, [0.3, 2, False, "0.3, 0.3", ""], 4, note, 1234, "RefDrop_blend")


REFERENCE_PICTURE = "refdrop_reference_character.png"
PICTURE_PROMPTS = "\n".join(
    [
        "photo of a young woman with short red hair and freckles, green wool coat, reading a book in a cozy cafe",
        "photo of a young woman with short red hair and freckles, green wool coat, walking on a beach at sunset",
        "photo of a young woman with short red hair and freckles, green wool coat, hiking in snowy mountains",
        "photo of a young woman with short red hair and freckles, green wool coat, riding a bicycle in the city",
    ]
)


def sdxl_refdrop_picture(note: str, with_mask: bool, seed: int, prefix: str) -> Workflow:
    """SDXL base + LoadImage -> Apply RefDrop (Reference Image) + four per-image prompts -> four images."""
    wf = Workflow()
    ckpt = wf.add("CheckpointLoaderSimple", (40, 120), ["sd_xl_base_1.0.safetensors"], size=(320, 100),
                  models=[SDXL_BASE])  # fmt: skip
    picture = wf.add("LoadImage", (40, 280), [REFERENCE_PICTURE, "image"], size=(320, 360))
    inputs = {"model": (ckpt, 0), "vae": (ckpt, 2), "image": (picture, 0)}
    if with_mask:
        inputs["mask"] = (picture, 1)
    refdrop = wf.add("ApplyRefDropImage", (400, 40), [0.35, seed, "fixed", False, "", "", 0.0, 1.0], inputs,
                     size=(340, 300))  # fmt: skip
    positive = wf.add("RefDropPromptBatch", (400, 380), [PICTURE_PROMPTS], {"clip": (ckpt, 1)}, size=(420, 220))
    negative = wf.add("CLIPTextEncode", (400, 640), [NEGATIVE], {"clip": (ckpt, 1)}, size=(420, 120))
    latent = wf.add("EmptyLatentImage", (400, 800), [1024, 1024, 4], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (880, 120),
        [seed, "fixed", 20, 5.0, "dpmpp_2m", "karras", 1.0],
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", (1240, 120), [], {"samples": (sampler, 0), "vae": (ckpt, 2)}, size=(200, 50))
    wf.add("SaveImage", (1240, 220), [prefix], {"images": (decode, 0)}, size=(520, 560))
    wf.note((40, 680), note)
    return wf


def character_from_picture() -> Workflow:
    note = (
        "## RefDrop: a consistent character from one picture\n\n"
        "Load the picture of your character in **Load Image** (any size: it is resized and centre-cropped to the "
        "latent). *Apply RefDrop (Reference Image)* encodes it once with the VAE; at every step it is noised to "
        "the step's noise level and runs as an extra batch row, and every image's self-attention is pulled toward "
        "it with strength c = 0.35 (paper: 0.3-0.4 for people, about 0.2 for toys and cartoons). The four prompts "
        "of *RefDrop Prompt Batch* become four images of the same character.\n\n"
        "- More likeness: raise `strength` (too high copies the picture's pose and layout too).\n"
        "- Same character, freer layout: turn on `skip_up1`, or end the guidance earlier (`end_percent`).\n"
        "- The node's `seed` fixes the noise that carries the picture through the steps.\n\n" + MODEL_NOTE
    )
    return sdxl_refdrop_picture(note, with_mask=False, seed=42, prefix="RefDrop_from_picture")


def subject_only() -> Workflow:
    note = (
        "## RefDrop: subject only (mask)\n\n"
        "The same as *consistent character from one picture*, with a **subject mask**: right-click the Load Image "
        "node, *Open in MaskEditor*, and paint over the character. Only the painted part of the picture guides "
        "(its background does not leak into the new images). Without a painted mask Load Image gives an all-black "
        "mask, and the node then does not guide (a warning in the log says so).\n\n"
        "Masks are this pack's extension, not part of the paper: in every self-attention layer the reference's "
        "keys and values are restricted to the tokens the mask covers at least half.\n\n" + MODEL_NOTE
    )
    return sdxl_refdrop_picture(note, with_mask=True, seed=42, prefix="RefDrop_subject_only")


def build() -> dict[str, Workflow]:
    return {
        "refdrop_sdxl_consistent_character": consistent_character(),
        "refdrop_sdxl_diverse_generation": diverse_generation(),
        "refdrop_sdxl_blend_two_references": blend_two_references(),
        "refdrop_sdxl_character_from_picture": character_from_picture(),
        "refdrop_sdxl_subject_only": subject_only(),
    }
