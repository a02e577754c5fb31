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


CHARACTER_PICTURES = ("refdrop_character_1.png", "refdrop_character_2.png")  # opaque, 512 x 640 each
TWO_CHARACTERS_PROMPT = (
    "photo of two friends sitting side by side on a park bench in autumn, on the left a young woman with short red "
    "hair and freckles in a green wool coat, on the right a young man with short black hair and round glasses in a "
    "yellow raincoat"
)
TWO_CHARACTERS_SIZE = (1216, 832)  # landscape: room for two people side by side


def two_characters_inputs(wf: Workflow, width: int, height: int) -> tuple[int, int]:
    """Two Load Image pictures joined by Batch Images (reference 1, reference 2) and their regions in the generated
    image's frame: a black canvas with a white half composited at x = 0 (left) and at x = width / 2 (right), joined
    by Batch Masks in reference order. Returns the node ids of (images, regions)."""
    first = wf.add("LoadImage", None, [CHARACTER_PICTURES[0], "image"], size=(320, 360), title="Load Image (left)")
    second = wf.add("LoadImage", None, [CHARACTER_PICTURES[1], "image"], size=(320, 360), title="Load Image (right)")
    images = wf.add("BatchImagesNode", None, [], {"images.image0": (first, 0), "images.image1": (second, 0)},
                    size=(240, 100))  # fmt: skip
    canvas = wf.add("SolidMask", None, [0.0, width, height], size=(280, 110), title="Canvas (black)")
    half = wf.add("SolidMask", None, [1.0, width // 2, height], size=(280, 110), title="Half (white)")
    left = wf.add("MaskComposite", None, [0, 0, "add"], {"destination": (canvas, 0), "source": (half, 0)},
                  size=(300, 150), title="Region 1 (left)")  # fmt: skip
    right = wf.add("MaskComposite", None, [width // 2, 0, "add"], {"destination": (canvas, 0), "source": (half, 0)},
                   size=(300, 150), title="Region 2 (right)")  # fmt: skip
    regions = wf.add("BatchMasksNode", None, [], {"masks.mask0": (left, 0), "masks.mask1": (right, 0)},
                     size=(240, 100))  # fmt: skip
    return images, regions


def regions_note(width: int, height: int) -> str:
    """How the two pictures and their regions are wired (shared by the SDXL and the Flux workflow)."""
    return (
        "The two pictures are joined by **Batch Images** in order: picture 1 (left) is reference 1, picture 2 "
        "(right) reference 2. The **regions** say where in the generated image each reference guides (white = "
        f"here): *Create Solid Mask* makes a black {width} x {height} canvas (the image's size) and a white "
        f"{width // 2} x {height} half, *Combine Masks* puts the half at x = 0 (region 1) and x = {width // 2} "
        "(region 2), *Batch Masks* joins them in reference order. Inside each region the generated image's "
        "self-attention is pulled toward its own reference only, so the two characters do not blend.\n\n"
        "- The prompt names both characters, left and right, so the layout matches the regions.\n"
        "- Other layouts: change the half's size and the x / y of *Combine Masks*, or paint a mask of the image's "
        "size (e.g. *Load Image (as Mask)*) per reference; one mask per picture, in picture order.\n"
    )


def two_characters() -> Workflow:
    """SDXL: two pictures -> Apply RefDrop (Reference Image) with left / right regions -> four images of both."""
    width, height = TWO_CHARACTERS_SIZE
    wf = Workflow()
    ckpt = wf.add("CheckpointLoaderSimple", None, ["sd_xl_base_1.0.safetensors"], size=(320, 100),
                  models=[SDXL_BASE])  # fmt: skip
    images, regions = two_characters_inputs(wf, width, height)
    refdrop = wf.add(
        "ApplyRefDropImage", None, [0.35, 42, "fixed", False, "0.35, 0.35", "", 0.0, 1.0],
        {"model": (ckpt, 0), "vae": (ckpt, 2), "image": (images, 0), "regions": (regions, 0)}, size=(340, 320),
        group="RefDrop",
    )  # fmt: skip
    positive = wf.add("CLIPTextEncode", None, [TWO_CHARACTERS_PROMPT], {"clip": (ckpt, 1)}, size=(420, 160))
    negative = wf.add("CLIPTextEncode", None, [NEGATIVE], {"clip": (ckpt, 1)}, size=(420, 120),
                      title="CLIP Text Encode (Negative Prompt)")  # fmt: skip
    latent = wf.add("EmptyLatentImage", None, [width, height, 4], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        None,
        [42, "fixed", 20, 5.0, "dpmpp_2m", "karras", 1.0],
        {"model": (refdrop, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", None, [], {"samples": (sampler, 0), "vae": (ckpt, 2)}, size=(200, 50))
    wf.add("SaveImage", None, ["RefDrop_two_characters"], {"images": (decode, 0)}, size=(520, 560))
    wf.note(
        None,
        "## RefDrop: two characters in one image\n\n"
        "Two pictures, one character each, guide one image: *Apply RefDrop (Reference Image)* encodes both with the "
        "VAE and runs them, noised to each step's level, as extra batch rows; `reference_strengths` = 0.35, 0.35 "
        "gives each its own c (Eq. 6).\n\n"
        + regions_note(width, height)
        + "- More likeness: raise the strengths; freer layout: turn on `skip_up1` or end the guidance earlier "
        "(`end_percent`).\n\n" + MODEL_NOTE,
        size=(400, 700),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {
        "refdrop_sdxl_consistent_character": consistent_character(),
        "refdrop_sdxl_diverse_generation": diverse_generation(),
        "refdrop_sdxl_blend_two_references": blend_two_references(),
        "refdrop_sdxl_character_from_picture": character_from_picture(),
        "refdrop_sdxl_subject_only": subject_only(),
        "refdrop_sdxl_two_characters": two_characters(),
    }
