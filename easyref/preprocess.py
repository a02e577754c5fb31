"""Reference image preprocessing (README step 3): two-stage resize, CLIP normalisation, pixel packing.

Each image keeps its own size and aspect ratio; nothing is batched across images.

Stage a reproduces ``qwen_vl_utils.fetch_image`` as the authors called it (PIL ``convert("RGB")``,
then PIL ``resize`` with its default bicubic filter to multiples of 28 inside
[3136, 12845056] pixels). Stage b reproduces ``Qwen2VLImageProcessor`` with EasyRef's
``min_pixels=121*784`` / ``max_pixels=145*784`` (PIL bicubic on the uint8 image, rescale 1/255,
OpenAI CLIP mean/std, the still image repeated along time, patches packed in the processor's order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

FACTOR = 28  # patch 14 x spatial merge 2
MAX_RATIO = 200  # both qwen_vl_utils and the image processor refuse more extreme aspect ratios
# Stage a: qwen_vl_utils defaults (MIN_PIXELS = 4*28*28, MAX_PIXELS = 16384*28*28).
STAGE_A_MIN_PIXELS = 4 * 28 * 28
STAGE_A_MAX_PIXELS = 16384 * 28 * 28
# Stage b: the processor settings of the authors' code (about 121-145 merged tokens per image).
STAGE_B_MIN_PIXELS = 121 * 784
STAGE_B_MAX_PIXELS = 145 * 784
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PackedImage:
    """One preprocessed reference: the vision tower's input for exactly this image."""

    pixel_values: torch.Tensor  # [grid_h * grid_w * grid_t, C * T * P * P], float32
    grid_thw: tuple[int, int, int]
    num_tokens: int  # merged visual tokens = number of <|image_pad|> ids for this image


def check_aspect_ratio(height: int, width: int) -> None:
    ratio = max(height, width) / max(1, min(height, width))
    if ratio > MAX_RATIO:
        raise ValueError(
            f"A reference image of {width}x{height} pixels has an aspect ratio of {ratio:.1f}:1; Qwen2-VL "
            f"accepts at most {MAX_RATIO}:1. Crop it closer to square (square crops work best for EasyRef)."
        )


def resize_stage_a(height: int, width: int) -> tuple[int, int]:
    """``qwen_vl_utils.smart_resize`` with its default pixel bounds (stage a)."""
    check_aspect_ratio(height, width)
    h_bar = max(FACTOR, round(height / FACTOR) * FACTOR)
    w_bar = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h_bar * w_bar > STAGE_A_MAX_PIXELS:
        beta = math.sqrt((height * width) / STAGE_A_MAX_PIXELS)
        h_bar = math.floor(height / beta / FACTOR) * FACTOR
        w_bar = math.floor(width / beta / FACTOR) * FACTOR
    elif h_bar * w_bar < STAGE_A_MIN_PIXELS:
        beta = math.sqrt(STAGE_A_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


def resize_stage_b(height: int, width: int) -> tuple[int, int]:
    """``Qwen2VLImageProcessor``'s ``smart_resize`` with EasyRef's bounds (stage b).

    The ``max(FACTOR, ...)`` guards of newer transformers releases are kept: they only matter for
    aspect ratios beyond about 145:1, where the older code produced a zero-sized image and failed.
    """
    check_aspect_ratio(height, width)
    h_bar = max(FACTOR, round(height / FACTOR) * FACTOR)
    w_bar = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h_bar * w_bar > STAGE_B_MAX_PIXELS:
        beta = math.sqrt((height * width) / STAGE_B_MAX_PIXELS)
        h_bar = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w_bar = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h_bar * w_bar < STAGE_B_MIN_PIXELS:
        beta = math.sqrt(STAGE_B_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


def to_pil_rgb(image) -> Image.Image:
    """A ComfyUI image ([H, W, C] float 0..1, C in 1..4), a uint8 array or a PIL image -> PIL RGB.

    Grey (C=1), grey+alpha (C=2) and RGBA (C=4) are converted the way the authors' loader did
    (``PIL.Image.convert("RGB")``: grey is replicated, alpha is dropped), not refused.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() == 2:
            image = image[..., None]
        if image.dim() != 3:
            raise ValueError(f"A reference image must be [height, width, channels]; got shape {tuple(image.shape)}.")
        arr = (image.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError("Array reference images must be uint8.")
        if arr.ndim == 2:
            arr = arr[..., None]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"A reference image is empty ({arr.shape[1]}x{arr.shape[0]} pixels).")
    channels = arr.shape[2]
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    if channels not in modes:
        raise ValueError(f"A reference image has {channels} channels; 1 (grey), 2, 3 (RGB) or 4 (RGBA) are supported.")
    if channels == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr), mode=modes[channels]).convert("RGB")


def pack_pixels(
    rgb_uint8: np.ndarray,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Rescale, normalise and pack one [H, W, 3] uint8 image like ``Qwen2VLImageProcessor._preprocess``."""
    height, width, _ = rgb_uint8.shape
    x = torch.from_numpy(np.array(rgb_uint8, dtype=np.uint8, copy=True)).permute(2, 0, 1).to(torch.float64) * (
        1.0 / 255.0
    )
    x = x.to(torch.float32)
    x = (x - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / torch.tensor(std, dtype=torch.float32)[
        :, None, None
    ]
    # A still image is repeated along time to fill one temporal patch.
    patches = x[None].expand(temporal_patch_size, -1, -1, -1)
    channel = patches.shape[1]
    grid_t = 1
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = patches.reshape(
        grid_t,
        temporal_patch_size,
        channel,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size)
    return flat.contiguous(), (grid_t, grid_h, grid_w)


def preprocess_image(
    image,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
) -> PackedImage:
    """Step 3 for one image: stage a, stage b, normalisation, packing."""
    pil = to_pil_rgb(image)
    width, height = pil.size
    h_a, w_a = resize_stage_a(height, width)
    if (w_a, h_a) != pil.size:
        pil = pil.resize((w_a, h_a))  # PIL default filter (bicubic), as qwen_vl_utils calls it
    h_b, w_b = resize_stage_b(h_a, w_a)
    if (w_b, h_b) != pil.size:
        pil = pil.resize((w_b, h_b), resample=Image.Resampling.BICUBIC)
    pixel_values, grid = pack_pixels(np.asarray(pil), patch_size, merge_size, temporal_patch_size, mean, std)
    num_tokens = grid[0] * grid[1] * grid[2] // (merge_size * merge_size)
    return PackedImage(pixel_values=pixel_values, grid_thw=grid, num_tokens=num_tokens)


def black_image(size: int = 512) -> np.ndarray:
    """The unconditional reference: one black 512x512 RGB image (README "What is computed", unconditional tokens)."""
    return np.zeros((size, size, 3), dtype=np.uint8)
