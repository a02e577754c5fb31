"""Masks on attention tokens, plain torch: subject masks (S_j) and regions (m_j), this pack's extensions.

A mask (white = selected) is placed on a layer's tokens in three steps: centre-cropped to the latent's aspect
ratio (the rule ``comfy.utils.common_upscale(..., "center")`` applies to the references and to the generated
latent's frame), area-averaged onto the token grid (a UNet layer's feature map; a diffusion transformer's
latent resized to the latent size, padded with 0 where the model pads to whole patches, then averaged per
patch), and thresholded: a token is selected when its average is >= 0.5.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageTokens:
    """Where one row's image tokens sit in a self-attention call: ``frames`` x ``height`` x ``width`` tokens
    (frame-major, row-major) from token ``start``; each token covers ``patch`` (h, w) latent pixels of a latent
    of ``latent_size`` (h, w) pixels (padded up to whole patches). ``row_stride``: tokens from one image row to
    the next in the call (0: ``width``, the rows are contiguous; more when each token row of the sequence also
    holds other tokens, e.g. HiDream E1's image condition concatenated along the width)."""

    start: int
    frames: int
    height: int
    width: int
    latent_size: tuple[int, int]
    patch: tuple[int, int] = (1, 1)
    row_stride: int = 0

    @property
    def count(self) -> int:
        return self.frames * self.height * self.width

    def positions(self, device=None) -> torch.Tensor:
        """The call's token index of every image token (``count`` of them, frame-major, row-major)."""
        stride = self.row_stride or self.width
        rows = torch.arange(self.frames * self.height, device=device).unsqueeze(1) * stride
        return (self.start + rows + torch.arange(self.width, device=device)).reshape(-1)


def center_crop_box(old_height: int, old_width: int, height: int, width: int) -> tuple[int, int]:
    """(y, x) offsets of the centre crop that comfy.utils.common_upscale(..., "center") takes (same rule)."""
    old_aspect, new_aspect = old_width / old_height, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return y, x


def crop_to_aspect(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre crop of ``masks`` (N, H, W) to the aspect ratio of (height, width) (a view)."""
    y, x = center_crop_box(masks.shape[-2], masks.shape[-1], height, width)
    return masks[..., y : masks.shape[-2] - y, x : masks.shape[-1] - x]


def token_grid_mask(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Masks on a token grid: (N, h*w) booleans, row-major tokens (UNet feature maps).

    ``masks`` (N, H, W) in [0, 1] is area-averaged onto the (h, w) grid; selected when the average is >= 0.5.
    """
    height, width = grid
    averaged = F.interpolate(masks.unsqueeze(1).float(), size=(height, width), mode="area")
    return (averaged >= 0.5).reshape(masks.shape[0], height * width)


def image_token_mask(masks: torch.Tensor, image: ImageTokens) -> torch.Tensor:
    """Masks on a diffusion transformer's image tokens: (N, image.count) booleans (every frame alike).

    ``masks`` (N, H, W) already cropped to the latent's aspect: area-averaged to the latent size, padded with 0
    up to whole patches (where the model pads the latent), then averaged per patch.
    """
    latent_height, latent_width = image.latent_size
    patch_height, patch_width = image.patch
    latent = F.interpolate(masks.unsqueeze(1).float(), size=(latent_height, latent_width), mode="area")
    padded = F.pad(
        latent, (0, image.width * patch_width - latent_width, 0, image.height * patch_height - latent_height)
    )
    averaged = F.avg_pool2d(padded, (patch_height, patch_width))
    selected = (averaged >= 0.5).reshape(masks.shape[0], 1, image.height * image.width)
    return selected.expand(-1, image.frames, -1).reshape(masks.shape[0], image.count)


def patch_grid(latent_size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Tokens per axis of a latent padded up to whole patches."""
    return tuple(math.ceil(size / step) for size, step in zip(latent_size, patch, strict=True))


class TokenMasks:
    """Region masks (N, H, W) in the generated image's frame, placed on token grids once per grid (cached).

    The cache holds derived values of the masks only (thread-safe: ComfyUI's multi-GPU CFG split calls the model
    from two threads); the masks themselves never change.
    """

    def __init__(self, masks: torch.Tensor):
        self.masks = masks.float().clamp(0.0, 1.0)
        self._lock = threading.Lock()
        self._placed: dict = {}

    def __len__(self) -> int:
        return self.masks.shape[0]

    def on_grid(self, grid: tuple[int, int], device) -> torch.Tensor:
        """(N, h*w) booleans on a UNet feature map of (h, w) tokens."""
        key = ("grid", tuple(grid), str(device))
        with self._lock:
            if key not in self._placed:
                cropped = crop_to_aspect(self.masks, *grid)
                self._placed[key] = token_grid_mask(cropped, grid).to(device)
            return self._placed[key]

    def on_image_tokens(self, image: ImageTokens, device) -> torch.Tensor:
        """(N, image.count) booleans on a diffusion transformer's image tokens."""
        key = ("image", image.frames, image.height, image.width, image.latent_size, image.patch, str(device))
        with self._lock:
            if key not in self._placed:
                cropped = crop_to_aspect(self.masks, *image.latent_size)
                self._placed[key] = image_token_mask(cropped, image).to(device)
            return self._placed[key]

    def __deepcopy__(self, memo):
        return self
