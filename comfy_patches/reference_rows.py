"""Reference images as extra batch rows: the model-agnostic half of "Apply RefDrop (Reference Image)".

An APPLY_MODEL wrapper (ComfyUI ``WrappersMP.APPLY_MODEL``: x before ``calculate_input``, sigma ``t``,
``c_crossattn``, ``control``, extra conds such as SDXL's ``y`` in kwargs) puts the noised reference latents as
extra rows in front of every guidance chunk's rows, extends every other per-row input for them, runs the
model, and strips the extra rows from its output. Nothing is stored between calls except the reference
latent resized to a call's latent size (and its noise), computed once per size.

The seam for attention patches (UNet attn1 replaces, diffusion-transformer attention overrides): during such
a call ``transformer_options[REFERENCE_ROWS_KEY]`` is the number of extra rows in front of each chunk. A patch
that guides toward images of the latent batch counts its references after these rows and leaves them alone;
the reference-image patch uses them as the chunk's references. ``REFERENCE_MASKS_KEY`` carries the subject
masks of this call's references (cropped like the references, at image resolution) or None.
"""

from __future__ import annotations

import threading

import comfy.sample
import comfy.utils
import torch

from .attention_calls import FallbackNotice, plain_attention
from .step_window import EVERY_STEP, StepWindow

REFERENCE_ROWS_KEY = "refguide_reference_rows"  # int: extra reference rows in front of every guidance chunk
REFERENCE_MASKS_KEY = "refguide_reference_masks"  # (references, H, W) float masks of this call, or None


def center_crop_box(old_height: int, old_width: int, height: int, width: int) -> tuple[int, int]:
    """(y, x) offsets of the centre crop that comfy.utils.common_upscale(..., "center") takes (same rule)."""
    old_aspect, new_aspect = old_width / old_height, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return y, x


def extend_rows(tensor: torch.Tensor, chunks: int, extra: torch.Tensor | int) -> torch.Tensor:
    """Put ``extra`` rows in front of each of the ``chunks`` chunks of ``tensor`` (rows along dim 0).

    ``extra`` is a tensor (chunks, E, ...) of the rows to insert, or an int E: E copies of each chunk's first
    row (the conditioning of the chunk's first image).
    """
    per_chunk = tensor.shape[0] // chunks
    parts = []
    for chunk in range(chunks):
        own = tensor[chunk * per_chunk : (chunk + 1) * per_chunk]
        if isinstance(extra, int):
            parts.append(own[:1].expand(extra, *own.shape[1:]))
        else:
            parts.append(extra[chunk].to(own.device, own.dtype))
        parts.append(own)
    return torch.cat(parts)


def split_rows(tensor: torch.Tensor, chunks: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`extend_rows`: (the first ``extra`` rows of each chunk, the chunks' own rows)."""
    grouped = tensor.unflatten(0, (chunks, tensor.shape[0] // chunks))
    return grouped[:, :extra].flatten(0, 1), grouped[:, extra:].flatten(0, 1)


def strip_rows(tensor: torch.Tensor, chunks: int, extra: int) -> torch.Tensor:
    """Drop the first ``extra`` rows of each chunk (the model output without the reference rows)."""
    return split_rows(tensor, chunks, extra)[1]


def knows_reference_rows(patch) -> bool:
    """True for the pack's attn1 patches, which read ``REFERENCE_ROWS_KEY`` themselves."""
    return bool(getattr(patch, "knows_reference_rows", False))


class WithoutReferenceRows:
    """Another node's attn1 replace, called on the latent batch's own rows only.

    Patches such as ComfyUI's Self-Attention Guidance index rows per guidance chunk (``q.shape[0] //
    len(cond_or_uncond)``) and would mistake the reference rows for images. This adapter hands such a patch the
    batch as it is without reference images (rows, ``activations_shape`` and ``REFERENCE_ROWS_KEY`` 0) and runs
    the reference rows as plain self-attention. Made per call; it holds nothing between calls.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, q, k, v, extra_options):
        extra = int(extra_options.get(REFERENCE_ROWS_KEY) or 0)
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        rows = q.shape[0]
        if not extra or rows % chunks or rows // chunks <= extra or k.shape[0] != rows or v.shape[0] != rows:
            return self.inner(q, k, v, extra_options)
        options = dict(extra_options)
        options[REFERENCE_ROWS_KEY] = 0
        options[REFERENCE_MASKS_KEY] = None
        if options.get("activations_shape") is not None:
            options["activations_shape"] = [rows - chunks * extra, *options["activations_shape"][1:]]
        (q_ref, q_own), (k_ref, k_own), (v_ref, v_own) = (split_rows(t, chunks, extra) for t in (q, k, v))
        own = self.inner(q_own, k_own, v_own, options)
        references = plain_attention(q_ref, k_ref, v_ref, extra_options)
        return extend_rows(own, chunks, references.unflatten(0, (chunks, extra)))


def row_safe(patch):
    """``patch`` itself when it reads the reference rows (the pack's own), else in :class:`WithoutReferenceRows`."""
    return patch if knows_reference_rows(patch) else WithoutReferenceRows(patch)


def hide_reference_rows(patches_replace: dict) -> dict:
    """A per-call copy of ``patches_replace`` with every other node's attn1 replace made :func:`row_safe` (the
    model's own options are not touched)."""
    attn1 = patches_replace.get("attn1")
    if not attn1 or all(knows_reference_rows(patch) for patch in attn1.values()):
        return patches_replace
    return {**patches_replace, "attn1": {key: row_safe(patch) for key, patch in attn1.items()}}


def _extend_cond(value, rows: int, chunks: int, extra: int):
    """A per-row conditioning input (tensor with ``rows`` rows, or a list of them) extended; others unchanged."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
        return extend_rows(value, chunks, extra)
    if isinstance(value, list):
        return [_extend_cond(item, rows, chunks, extra) for item in value]
    return value


def _extend_control(value, rows: int, chunks: int, extra: int):
    """ControlNet residuals (dict of lists of tensors) with zero residuals for the extra rows."""
    if isinstance(value, dict):
        return {key: _extend_control(item, rows, chunks, extra) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_extend_control(item, rows, chunks, extra) for item in value)
    if torch.is_tensor(value) and value.ndim > 0:
        if value.shape[0] == 1 and rows > 1:
            value = value.expand(rows, *value.shape[1:])
        if value.shape[0] != rows:
            raise ValueError(
                f"Apply RefDrop (Reference Image): a ControlNet residual has {value.shape[0]} rows where the model "
                f"call has {rows}; this ControlNet cannot be combined with reference images."
            )
        zeros = torch.zeros((chunks, extra, *value.shape[1:]), device=value.device, dtype=value.dtype)
        return extend_rows(value, chunks, zeros)
    return value


def reference_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """``comfy.sample.prepare_noise(latent, seed)``'s values from a private generator (the global RNG untouched)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return comfy.sample.prepare_noise_inner(latent, generator)


class ReferenceRows:
    """APPLY_MODEL wrapper: the reference images as extra rows in front of every guidance chunk.

    ``latents`` are the references' VAE latents (E, C, H, W) as VAE Encode made them; ``selected`` the indices
    of the references that guide (None = all: a reference with strength 0 or an all-black mask adds no row,
    but the noise is drawn for the whole batch so that the others' noise does not depend on it); ``masks``
    (len(selected), H', W') subject masks already cropped like the pixels VAE Encode used (white = subject),
    or None.
    At a call with latent size (h, w) and sigma s:
        z = common_upscale(latent, w, h, "bilinear", "center")       (once per size)
        eps = comfy.sample.prepare_noise(z, seed)                     (once per size; same values, drawn from a
                                                                       private generator: the global RNG is never
                                                                       touched, so concurrent calls agree)
        x_ref = model_sampling.noise_scaling(s, eps, process_latent_in(z))   (max_denoise False)
    """

    def __init__(
        self,
        latents: torch.Tensor,
        seed: int,
        masks: torch.Tensor | None,
        window: StepWindow = EVERY_STEP,
        selected: tuple[int, ...] | None = None,
        attn1_keys: tuple = (),
    ):
        self.latents = latents
        self.attn1_keys = tuple(attn1_keys)  # the attn1 replace keys of the node's own patches (UNets)
        self.selected = list(selected) if selected is not None else None
        self.seed = int(seed)
        self.masks = masks
        self.window = window
        self.notice = FallbackNotice(
            "Apply RefDrop (Reference Image)", "such model calls run without the reference images (reported once)."
        )
        self.replaced_notice = FallbackNotice(
            "Apply RefDrop (Reference Image)",
            "those layers run without the reference images (reported once). Apply that node before Apply RefDrop "
            "(Reference Image) to keep both: the pack's patch then calls it.",
        )
        self._lock = threading.Lock()  # ComfyUI's multi-GPU CFG split calls the model from pool threads at once
        self._by_size: dict = {}  # (h, w, device, dtype) -> (process_latent_in(z), eps, masks cropped for the size)

    @property
    def count(self) -> int:
        return len(self.selected) if self.selected is not None else self.latents.shape[0]

    def references_for(self, base_model, height: int, width: int, device, dtype):
        """(process_latent_in(z), eps, masks) for a latent size, computed once per size."""
        key = (height, width, str(device), dtype)
        with self._lock:
            if key not in self._by_size:
                self._by_size[key] = self._references_at(base_model, height, width, device, dtype)
            return self._by_size[key]

    def _references_at(self, base_model, height: int, width: int, device, dtype):
        """Resize, noise and process the references for one latent size (see the class docstring)."""
        latent = self.latents
        z = latent
        if tuple(latent.shape[-2:]) != (height, width):
            z = comfy.utils.common_upscale(latent, width, height, "bilinear", "center")
        eps = reference_noise(z, self.seed)
        if self.selected is not None:
            z, eps = z[self.selected], eps[self.selected]
        clean = base_model.process_latent_in(z)
        masks = None
        if self.masks is not None:
            y, x = center_crop_box(latent.shape[-2], latent.shape[-1], height, width)
            scale_y = self.masks.shape[-2] / latent.shape[-2]
            scale_x = self.masks.shape[-1] / latent.shape[-1]
            top, left = round(y * scale_y), round(x * scale_x)
            masks = self.masks[:, top : self.masks.shape[-2] - top, left : self.masks.shape[-1] - left]
            masks = masks.to(device)
        return clean.to(device, dtype), eps.to(device, dtype), masks

    def active_at(self, transformer_options: dict) -> bool:
        return self.window.contains(transformer_options)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
        if not self.active_at(transformer_options):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        rows = x.shape[0]
        if rows % chunks != 0:
            self.notice.report(f"a model input of shape {tuple(x.shape)} does not split into {chunks} image chunks")
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)
        extra = self.count
        per_chunk = rows // chunks
        clean, eps, masks = self.references_for(executor.class_obj, x.shape[-2], x.shape[-1], x.device, x.dtype)
        sampling = executor.class_obj.model_sampling
        x_ref, t_ref = [], []
        for chunk in range(chunks):
            sigma = t[chunk * per_chunk].expand(extra)
            x_ref.append(sampling.noise_scaling(sigma.reshape(extra), eps, clean, max_denoise=False))
            t_ref.append(sigma)
        x = extend_rows(x, chunks, torch.stack(x_ref))
        t = extend_rows(t, chunks, torch.stack(t_ref))
        c_concat = _extend_cond(c_concat, rows, chunks, extra)
        c_crossattn = _extend_cond(c_crossattn, rows, chunks, extra)
        kw = {name: _extend_cond(value, rows, chunks, extra) for name, value in kw.items()}
        if control is not None:
            control = _extend_control(control, rows, chunks, extra)
        options = dict(transformer_options)
        options[REFERENCE_ROWS_KEY] = extra
        options[REFERENCE_MASKS_KEY] = masks
        self.check_own_patches(options.get("patches_replace"))
        if options.get("patches_replace"):
            options["patches_replace"] = hide_reference_rows(options["patches_replace"])
        out = executor(x, t, c_concat, c_crossattn, control, options, **kw)
        return strip_rows(out, chunks, extra)

    def check_own_patches(self, patches_replace: dict | None) -> None:
        """Warn once when a node applied later replaced (did not chain) the node's own attn1 patches."""
        attn1 = (patches_replace or {}).get("attn1") or {}
        replaced = [key for key in self.attn1_keys if not knows_reference_rows(attn1.get(key))]
        if replaced:
            names = ", ".join(" ".join(str(part) for part in key) for key in replaced[:4])
            self.replaced_notice.report(
                f"a node applied after it (e.g. Self-Attention Guidance) replaced its self-attention patch on "
                f"{len(replaced)} layer(s) ({names})"
            )

    def __deepcopy__(self, memo):
        return self
