"""Wan 2.x video workflows, each with Temporal RefDrop next to plain Wan from the same seed: Wan 2.2 14B
image-to-video (two experts), and Wan 2.2 14B text-to-video with a character from one picture as the reference."""

from __future__ import annotations

from workflow_builder import OUTPUTS, Workflow

OUTPUTS.update(
    {
        "UNETLoader": [("MODEL", "MODEL")],
        "CLIPLoader": [("CLIP", "CLIP")],
        "VAELoader": [("VAE", "VAE")],
        "ModelSamplingSD3": [("MODEL", "MODEL")],
        "WanImageToVideo": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
        "KSamplerAdvanced": [("LATENT", "LATENT")],
        "TemporalRefDrop": [("MODEL", "MODEL")],
        "EmptyHunyuanLatentVideo": [("LATENT", "LATENT")],
    }
)

_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN22_HIGH = {
    "name": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    "url": f"{_WAN22}/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    "directory": "diffusion_models",
}
WAN22_LOW = {
    "name": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "url": f"{_WAN22}/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "directory": "diffusion_models",
}
WAN22_T2V_HIGH = {
    "name": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    "url": f"{_WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    "directory": "diffusion_models",
}
WAN22_T2V_LOW = {
    "name": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    "url": f"{_WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    "directory": "diffusion_models",
}
UMT5 = {
    "name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "url": f"{_WAN21}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "directory": "text_encoders",
}
WAN_VAE = {
    "name": "wan_2.1_vae.safetensors",
    "url": f"{_WAN22}/vae/wan_2.1_vae.safetensors",
    "directory": "vae",
}
INPUT_IMAGE = "refdrop_wan_input.png"
PROMPT = (
    "a small orange cat with a blue collar walks across a sunny kitchen floor, looks at the camera and sits down, "
    "smooth camera, natural light"
)
NEGATIVE = "static, blurry, low quality, jpeg artifacts, deformed, extra limbs, flicker, watermark, text"
STEPS, SWITCH_STEP, CFG, SEED = 20, 10, 3.5, 42


def expert_samplers(wf: Workflow, high, low, conditioning, x: int, y: int, latent=None, negative=None):
    """Wan 2.2's split schedule: the high-noise expert runs steps 0-10, the low-noise expert the rest.

    ``conditioning``: WanImageToVideo's node (positive, negative, latent), or the positive prompt's node with
    ``negative`` and ``latent`` given (text-to-video)."""
    positive = (conditioning, 0)
    negative = (conditioning, 1) if negative is None else (negative, 0)
    latent = (conditioning, 2) if latent is None else (latent, 0)
    first = wf.add(
        "KSamplerAdvanced", (x, y),
        ["enable", SEED, "fixed", STEPS, CFG, "euler", "simple", 0, SWITCH_STEP, "enable"],
        {"model": high, "positive": positive, "negative": negative, "latent_image": latent},
        size=(320, 340), title="KSampler (Advanced) high noise",
    )  # fmt: skip
    second = wf.add(
        "KSamplerAdvanced", (x + 360, y),
        ["disable", 0, "fixed", STEPS, CFG, "euler", "simple", SWITCH_STEP, 10000, "disable"],
        {"model": low, "positive": positive, "negative": negative, "latent_image": (first, 0)},
        size=(320, 340), title="KSampler (Advanced) low noise",
    )  # fmt: skip
    return second


def wan22_i2v_with_comparison() -> Workflow:
    wf = Workflow()
    high = wf.add("UNETLoader", (40, 40), [WAN22_HIGH["name"], "default"], size=(360, 90), models=[WAN22_HIGH])
    low = wf.add("UNETLoader", (40, 170), [WAN22_LOW["name"], "default"], size=(360, 90), models=[WAN22_LOW])
    clip = wf.add("CLIPLoader", (40, 300), [UMT5["name"], "wan", "default"], size=(360, 110), models=[UMT5])
    vae = wf.add("VAELoader", (40, 450), [WAN_VAE["name"]], size=(360, 60), models=[WAN_VAE])
    image = wf.add("LoadImage", (40, 550), [INPUT_IMAGE, "image"], size=(360, 360))
    positive = wf.add("CLIPTextEncode", (440, 300), [PROMPT], {"clip": (clip, 0)}, size=(400, 130))
    negative = wf.add("CLIPTextEncode", (440, 470), [NEGATIVE], {"clip": (clip, 0)}, size=(400, 130))
    conditioning = wf.add(
        "WanImageToVideo", (440, 640), [640, 640, 81, 1],
        {"positive": (positive, 0), "negative": (negative, 0), "vae": (vae, 0), "start_image": (image, 0)},
        size=(320, 210),
    )  # fmt: skip
    high_shift = wf.add("ModelSamplingSD3", (440, 40), [8.0], {"model": (high, 0)}, size=(300, 60))
    low_shift = wf.add("ModelSamplingSD3", (440, 140), [8.0], {"model": (low, 0)}, size=(300, 60))
    refdrop = [0.2, 0, 0.0, 1.0, "", 0, "fixed"]
    high_guided = wf.add("TemporalRefDrop", (880, 40), refdrop, {"model": (high_shift, 0)}, size=(320, 180),
                         title="Temporal RefDrop (high-noise expert)")  # fmt: skip
    low_guided = wf.add("TemporalRefDrop", (1240, 40), refdrop, {"model": (low_shift, 0)}, size=(320, 180),
                        title="Temporal RefDrop (low-noise expert)")  # fmt: skip
    branches = {}
    for name, models, y in (
        ("RefDrop_wan22", ((high_guided, 0), (low_guided, 0)), 260),
        ("Wan22_plain", ((high_shift, 0), (low_shift, 0)), 660),
    ):
        latent = expert_samplers(wf, *models, conditioning, 880, y)
        frames = wf.add("VAEDecode", (1600, y), [], {"samples": (latent, 0), "vae": (vae, 0)}, size=(200, 50))
        wf.add("SaveAnimatedWEBP", (1840, y), [name, 16.0, False, 85, "default"], {"images": (frames, 0)},
               size=(420, 380))  # fmt: skip
        branches[name] = frames
    stitched = wf.add(
        "ImageStitch", (2300, 260), ["right", True, 0, "white"],
        {"image1": (branches["RefDrop_wan22"], 0), "image2": (branches["Wan22_plain"], 0)}, size=(320, 180),
    )  # fmt: skip
    wf.add("SaveAnimatedWEBP", (2300, 480), ["RefDrop_vs_plain_wan22", 16.0, False, 85, "default"],
           {"images": (stitched, 0)}, size=(640, 400))  # fmt: skip
    wf.note(
        (40, 960),
        "## Wan 2.2 image-to-video with Temporal RefDrop\n\n"
        "**Temporal RefDrop** pulls every latent frame's self-attention toward latent frame 0 (the start image) "
        "with c = 0.2: less identity drift and flicker over the clip. Cross-attention (the prompt) is untouched. "
        "Wan 2.2 14B is two models (a high-noise expert for steps 0-10, a low-noise expert for steps 10-20): put "
        "one Temporal RefDrop node on **each** expert.\n\n"
        "The lower branch is plain Wan 2.2 from the same seed; the last node saves both side by side (left: "
        "RefDrop, right: plain). Larger strengths steady the clip further but freeze motion.\n\n"
        "`reference_frame` counts latent frames: latent frame 0 is the first video frame, each later one covers "
        "four video frames (81 frames = 21 latent frames).\n\n"
        "Settings as in ComfyUI's Wan 2.2 template: 640x640, 81 frames, shift 8, 20 steps, cfg 3.5, euler/simple, "
        "16 fps.\n\n"
        "**Model files:** `models/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors` and "
        "`wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors`, `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`, "
        "`models/vae/wan_2.1_vae.safetensors` ([Comfy-Org/Wan_2.2_ComfyUI_Repackaged]"
        "(https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged)). Put your start image in `input/` and pick "
        f"it in Load Image (the example expects `{INPUT_IMAGE}`).",
        size=(560, 420),
    )
    return wf


CHARACTER_PICTURE = "refdrop_reference_character.png"
CHARACTER_PROMPT = (
    "a young woman with short red hair and freckles in a green wool coat walks along a rainy city street at night, "
    "turns to the camera and smiles, neon reflections, smooth tracking shot, cinematic light"
)
PICTURE_STRENGTH = 0.3


def wan22_t2v_character_from_picture() -> Workflow:
    """Wan 2.2 14B text-to-video (two experts), each expert with Temporal RefDrop toward one character picture,
    next to plain Wan 2.2 from the same seed and prompt."""
    wf = Workflow()
    high = wf.add("UNETLoader", (40, 40), [WAN22_T2V_HIGH["name"], "default"], size=(360, 90), models=[WAN22_T2V_HIGH])
    low = wf.add("UNETLoader", (40, 170), [WAN22_T2V_LOW["name"], "default"], size=(360, 90), models=[WAN22_T2V_LOW])
    clip = wf.add("CLIPLoader", (40, 300), [UMT5["name"], "wan", "default"], size=(360, 110), models=[UMT5])
    vae = wf.add("VAELoader", (40, 450), [WAN_VAE["name"]], size=(360, 60), models=[WAN_VAE])
    picture = wf.add("LoadImage", (40, 550), [CHARACTER_PICTURE, "image"], size=(360, 360))
    positive = wf.add("CLIPTextEncode", (440, 300), [CHARACTER_PROMPT], {"clip": (clip, 0)}, size=(400, 130))
    negative = wf.add("CLIPTextEncode", (440, 470), [NEGATIVE], {"clip": (clip, 0)}, size=(400, 130))
    latent = wf.add("EmptyHunyuanLatentVideo", (440, 640), [640, 640, 81, 1], size=(320, 150),
                    title="Empty Latent Video (Wan)")  # fmt: skip
    high_shift = wf.add("ModelSamplingSD3", (440, 40), [8.0], {"model": (high, 0)}, size=(300, 60))
    low_shift = wf.add("ModelSamplingSD3", (440, 140), [8.0], {"model": (low, 0)}, size=(300, 60))
    refdrop = [PICTURE_STRENGTH, 0, 0.0, 1.0, "", SEED, "fixed"]
    guided = [
        wf.add(
            "TemporalRefDrop",
            (880, 40 + 220 * i),
            refdrop,
            {"model": (shift, 0), "image": (picture, 0), "vae": (vae, 0)},
            size=(340, 280),
            title=f"Temporal RefDrop, picture ({expert}-noise expert)",
        )  # fmt: skip
        for i, (shift, expert) in enumerate(((high_shift, "high"), (low_shift, "low")))
    ]
    branches = {}
    for name, models, y in (
        ("RefDrop_wan22_t2v_picture", ((guided[0], 0), (guided[1], 0)), 260),
        ("Wan22_t2v_plain", ((high_shift, 0), (low_shift, 0)), 660),
    ):
        result = expert_samplers(wf, *models, positive, 880, y, latent=latent, negative=negative)
        frames = wf.add("VAEDecode", (1600, y), [], {"samples": (result, 0), "vae": (vae, 0)}, size=(200, 50))
        wf.add("SaveAnimatedWEBP", (1840, y), [name, 16.0, False, 85, "default"], {"images": (frames, 0)},
               size=(420, 380))  # fmt: skip
        branches[name] = frames
    stitched = wf.add(
        "ImageStitch", (2300, 260), ["right", True, 0, "white"],
        {"image1": (branches["RefDrop_wan22_t2v_picture"], 0), "image2": (branches["Wan22_t2v_plain"], 0)},
        size=(320, 180),
    )  # fmt: skip
    wf.add("SaveAnimatedWEBP", (2300, 480), ["RefDrop_vs_plain_wan22_t2v_picture", 16.0, False, 85, "default"],
           {"images": (stitched, 0)}, size=(640, 400))  # fmt: skip
    wf.note(
        (40, 960),
        "## Wan 2.2: character from one picture in a text-to-video clip\n\n"
        "Load the picture of your character in **Load Image** (any size: it is resized and centre-cropped to the "
        "video's latent). With `image` and `vae` connected, **Temporal RefDrop** takes that picture as the "
        "reference instead of a frame of the clip: it is encoded once as a one-frame clip; at every step it is "
        "noised to the step's noise level (from the node's `seed`) and runs through the expert as its own one-frame "
        "pass with the step's prompts, just before the clip. In every self-attention call, every latent frame of the "
        f"clip puts c = {PICTURE_STRENGTH} of its attention on the picture's keys and values. The prompt still "
        "decides the scene; the picture pulls the character's look toward it.\n\n"
        "Wan 2.2 14B is two models (a high-noise expert for steps 0-10, a low-noise expert for steps 10-20): put "
        "one Temporal RefDrop node on **each** expert, with the same picture, VAE and seed.\n\n"
        "The lower branch is plain Wan 2.2 from the same seed and prompt; the last node saves both side by side "
        "(left: RefDrop, right: plain). More likeness: raise `strength` (too high freezes the clip on the "
        "picture); freer motion: end the guidance earlier (`end_percent`).\n\n"
        "Text-to-video models only (Wan 2.1 / 2.2 t2v, the Wan 2.2 5B): an image-to-video model is refused (its "
        "clip starts from your picture already: use `reference_frame` there). Cost: one extra one-frame pass per "
        "step (about 1/21 of the clip's at 81 frames).\n\n"
        "Settings as in ComfyUI's Wan 2.2 template: 640x640, 81 frames, shift 8, 20 steps, cfg 3.5, euler/simple, "
        "16 fps.\n\n"
        "**Model files:** `models/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors` and "
        "`wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors`, `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`, "
        "`models/vae/wan_2.1_vae.safetensors` ([Comfy-Org/Wan_2.2_ComfyUI_Repackaged]"
        "(https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged)). The pack copies the example picture "
        f"`{CHARACTER_PICTURE}` into `input/`; pick your own in Load Image.",
        size=(560, 460),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {
        "refdrop_wan22_i2v_comparison": wan22_i2v_with_comparison(),
        "refdrop_wan22_t2v_character_from_picture": wan22_t2v_character_from_picture(),
    }
