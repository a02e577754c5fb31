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

Other nodes' per-row patch points never see these rows (the pack's own patches, which read the key, are left
alone): their attn1/attn2 replaces (and other nodes' branches in Apply EasyRef's attn2 object) are wrapped per
call (:func:`hide_reference_rows`), and on diffusion transformers their attention override, before the pack's
(:func:`row_safe_override`) or after it (:meth:`ReferenceRows.hide_from_override`), is called with the latent
batch's rows only. The reference rows run there as the model runs them without that patch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
import comfy.sample
import comfy.utils
import torch

from ..attention_patches.tokens import center_crop_box
from .attention_calls import FallbackNotice, plain_attention
from .dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY, _bind
from .step_window import EVERY_STEP, StepWindow

REFERENCE_ROWS_KEY = "refguide_reference_rows"  # int: extra reference rows in front of every guidance chunk
REFERENCE_MASKS_KEY = "refguide_reference_masks"  # (references, H, W) float masks of this call, or None
# Set on the options of an attention call over the reference rows alone: another node's override does not see it.
REFERENCE_ROWS_ONLY_KEY = "refguide_reference_rows_only"


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
    """True for the pack's patches that read ``REFERENCE_ROWS_KEY`` themselves (``knows_reference_rows = True``):
    its attn1 replaces, its DiT attention overrides and Apply EasyRef's branches."""
    return getattr(patch, "knows_reference_rows", False) is True


def _own_rows_options(extra_options: dict, own_rows: int) -> dict:
    """A copy of a call's options as the latent batch's own rows see them: no reference rows, no masks."""
    options = dict(extra_options)
    options[REFERENCE_ROWS_KEY] = 0
    options[REFERENCE_MASKS_KEY] = None
    if options.get("activations_shape") is not None:
        options["activations_shape"] = [own_rows, *options["activations_shape"][1:]]
    return options


def _splits(rows: int, chunks: int, extra: int, *per_row) -> bool:
    """Whether a call's rows split into chunks with ``extra`` reference rows in front (k/v: per row or shared)."""
    if not extra or rows % chunks or rows // chunks <= extra:
        return False
    return all(torch.is_tensor(t) and t.shape[0] in (rows, 1) for t in per_row)


def _split_or_share(tensor: torch.Tensor, rows: int, chunks: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference rows, own rows) of a per-row tensor; a tensor of one row (shared by every row) goes to both."""
    return split_rows(tensor, chunks, extra) if tensor.shape[0] == rows else (tensor, tensor)


class WithoutReferenceRows:
    """Another node's attn1 or attn2 replace, called on the latent batch's own rows only.

    Patches such as ComfyUI's Self-Attention Guidance (attn1) or an IPAdapter with per-image attention masks
    (attn2) index rows per guidance chunk (``q.shape[0] // len(cond_or_uncond)``) and would mistake the reference
    rows for images. This adapter hands such a patch the batch as it is without reference images (rows,
    ``activations_shape`` and ``REFERENCE_ROWS_KEY`` 0) and runs the reference rows as the layer runs without the
    patch: plain attention of their own q/k/v (``plain_attention``, as ComfyUI's CrossAttention computes it), i.e.
    self-attention in attn1 and cross-attention to their own context rows in attn2 (k/v may have another token
    count than q there; k/v of one row, shared by every row, go to both parts as they are). Made per call; it
    holds nothing between calls.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, q, k, v, extra_options):
        extra = int(extra_options.get(REFERENCE_ROWS_KEY) or 0)
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        rows = q.shape[0]
        if not _splits(rows, chunks, extra, k, v):
            return self.inner(q, k, v, extra_options)
        q_ref, q_own = split_rows(q, chunks, extra)
        (k_ref, k_own), (v_ref, v_own) = (_split_or_share(t, rows, chunks, extra) for t in (k, v))
        own = self.inner(q_own, k_own, v_own, _own_rows_options(extra_options, q_own.shape[0]))
        references = plain_attention(q_ref, k_ref, v_ref, {**extra_options, REFERENCE_ROWS_ONLY_KEY: True})
        return extend_rows(own, chunks, references.unflatten(0, (chunks, extra)))


class BranchWithoutReferenceRows:
    """Another node's branch in Apply EasyRef's attn2 object (IPAdapter protocol: ``callback(out, q, k, v,
    extra_options, **kwargs)`` returns a term added to ``out``), called on the latent batch's own rows only; the
    reference rows get no term (the layer as it runs without that branch). Made per call."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, out, q, k, v, extra_options, **kwargs):
        extra = int(extra_options.get(REFERENCE_ROWS_KEY) or 0)
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        rows = q.shape[0]
        if out.shape[0] != rows or not _splits(rows, chunks, extra, k, v):
            return self.inner(out, q, k, v, extra_options, **kwargs)
        out_own = split_rows(out, chunks, extra)[1]
        q_own = split_rows(q, chunks, extra)[1]
        k_own, v_own = (_split_or_share(t, rows, chunks, extra)[1] for t in (k, v))
        options = _own_rows_options(extra_options, q_own.shape[0])
        term = self.inner(out_own, q_own, k_own, v_own, options, **kwargs)
        term = torch.as_tensor(term, dtype=out.dtype, device=out.device).expand_as(out_own)
        return extend_rows(term, chunks, term.new_zeros((chunks, extra, *term.shape[1:])))


def row_safe(patch):
    """``patch`` as it may run in a call with reference rows: itself when it reads them (the pack's own); Apply
    EasyRef's attn2 object with its chained replace and other nodes' branches made row-safe (its own branches read
    the rows; a per-call fork, the model's object untouched); any other in :class:`WithoutReferenceRows`."""
    if knows_reference_rows(patch):
        return patch
    from .easyref_patch import DecoupledCrossAttention  # easyref_patch imports this module: looked up at use

    if not isinstance(patch, DecoupledCrossAttention):
        return WithoutReferenceRows(patch)
    inner = None if patch.inner is None else row_safe(patch.inner)
    callbacks = [c if knows_reference_rows(c) else BranchWithoutReferenceRows(c) for c in patch.callback]
    if inner is patch.inner and all(safe is c for safe, c in zip(callbacks, patch.callback, strict=True)):
        return patch
    safe = patch.fork()
    safe.inner, safe.callback = inner, callbacks
    return safe


def hide_reference_rows(patches_replace: dict) -> dict:
    """A per-call copy of ``patches_replace`` with every attn1 and attn2 replace :func:`row_safe` (other nodes'
    patches see only the latent batch's rows; the model's own options are not touched)."""
    hidden = patches_replace
    for point in ("attn1", "attn2"):
        replaces = patches_replace.get(point)
        if not replaces:
            continue
        safe = {key: row_safe(patch) for key, patch in replaces.items()}
        if any(safe[key] is not patch for key, patch in replaces.items()):
            hidden = {**hidden, point: safe}
    return hidden


# --- diffusion transformers: other nodes' optimized_attention_override -----------------------------------------
HIDDEN_ROWS_KEY = "refguide_hidden_reference_rows"  # HiddenRows of a call whose reference rows were taken out


@dataclass(eq=False)
class HiddenRows:
    """The reference rows :class:`OverrideWithoutReferenceRows` took out of one attention call, for the pack's
    own override that another node's override chains (:func:`reveal_reference_rows` puts them back; the pack's
    override guides the call with them and leaves their output in ``out``)."""

    chunks: int
    extra: int
    own_rows: int
    q: torch.Tensor
    k: torch.Tensor | None  # None: k had one row, shared by every row
    v: torch.Tensor | None
    mask: torch.Tensor | None  # the reference rows of a per-row mask; None: the mask is shared or absent
    options: dict  # the call's transformer_options, reference rows included
    out: torch.Tensor | None = None

    def restore(self, own: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return extend_rows(own, self.chunks, references.unflatten(0, (self.chunks, self.extra)))

    def conceal(self, out: torch.Tensor) -> torch.Tensor:
        """The own rows of a whole call's output; its reference rows are kept in ``out``."""
        self.out, own = split_rows(out, self.chunks, self.extra)
        return own


def _call_directly(func, *args, **kwargs):
    return func(*args, **kwargs)


class OverrideWithoutReferenceRows:
    """Another node's ``optimized_attention_override`` (diffusion transformers), called on the latent batch's own
    rows only: q/k/v rows, the mask's rows when the mask is per row, ``REFERENCE_ROWS_KEY`` 0.

    The reference rows run as the model runs them without that override: the backend ``func`` ComfyUI passes to
    the override, called directly. When the other override chains one of the pack's (it was applied after Apply
    RefDrop (Reference Image) and calls the override it found), the pack's override gets the rows back
    (:func:`reveal_reference_rows`), guides the call with them and hands their output up, so nothing is computed
    twice. The pack's extra attentions (``EXTRA_CALL_KEY``) pass straight through. ``on_unchained`` is called
    when the pack's override was expected down the chain but never reached (the other node replaced it). Made
    per call (or per attention call); it holds nothing between calls.
    """

    def __init__(self, inner, on_unchained=None):
        self.inner = inner
        self.on_unchained = on_unchained

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if isinstance(options, dict) and options.get(REFERENCE_ROWS_ONLY_KEY):
            return func(*args, **kwargs)  # the reference rows alone, as the model runs them without the override
        if not isinstance(options, dict) or options.get(EXTRA_CALL_KEY) or not options.get(REFERENCE_ROWS_KEY):
            return self.inner(func, *args, **kwargs)
        try:
            q, k, v, heads, mask, skip_reshape, skip_output_reshape, rest = _bind(*args, **kwargs)
        except TypeError:
            return self.inner(func, *args, **kwargs)
        extra = int(options[REFERENCE_ROWS_KEY])
        chunks = len(options.get("cond_or_uncond") or [0])
        rows = q.shape[0] if torch.is_tensor(q) else 0
        if not _splits(rows, chunks, extra, k, v):
            return self.inner(func, *args, **kwargs)
        per_row_mask = torch.is_tensor(mask) and mask.ndim >= 3 and mask.shape[0] == rows
        q_ref, q_own = split_rows(q, chunks, extra)
        (k_ref, k_own), (v_ref, v_own) = (_split_or_share(t, rows, chunks, extra) for t in (k, v))
        mask_ref, mask_own = split_rows(mask, chunks, extra) if per_row_mask else (mask, mask)
        hidden = HiddenRows(
            chunks, extra, q_own.shape[0], q_ref,
            k_ref if k.shape[0] == rows else None, v_ref if v.shape[0] == rows else None,
            mask_ref if per_row_mask else None, options,
        )  # fmt: skip
        flags = dict(rest, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)
        own_options = _own_rows_options(options, q_own.shape[0])
        own_options[HIDDEN_ROWS_KEY] = hidden
        own = self.inner(
            func, q_own, k_own, v_own, heads, mask=mask_own, **{**flags, "transformer_options": own_options}
        )
        references = hidden.out
        if references is None:
            if self.on_unchained is not None:
                self.on_unchained()
            references = func(q_ref, k_ref, v_ref, heads, mask=mask_ref, **flags)
        return hidden.restore(own, references)


def row_safe_override(override):
    """How one of the pack's overrides calls the override set before it (``previous``): directly when that one
    reads the reference rows itself (the pack's), else in :class:`OverrideWithoutReferenceRows`; None: the
    backend ``func`` directly."""
    if override is None:
        return _call_directly
    return override if knows_reference_rows(override) else OverrideWithoutReferenceRows(override)


def reveal_reference_rows(args: tuple, kwargs: dict):
    """For the pack's override: ``(hidden, args, kwargs)`` of a call whose reference rows an outer
    :class:`OverrideWithoutReferenceRows` took out, with them put back (and the options as they were); ``hidden``
    None and the call unchanged when nothing was hidden, or when the other node's override changed the call's
    rows (it then runs as it came, without reference rows)."""
    options = kwargs.get("transformer_options")
    hidden = options.get(HIDDEN_ROWS_KEY) if isinstance(options, dict) else None
    if hidden is None:
        return None, args, kwargs
    options = {key: value for key, value in options.items() if key != HIDDEN_ROWS_KEY}
    kwargs = {**kwargs, "transformer_options": options}
    try:
        q, k, v, heads, mask, skip_reshape, skip_output_reshape, rest = _bind(*args, **kwargs)
        if q.shape[0] != hidden.own_rows:
            return None, args, kwargs
        q = hidden.restore(q, hidden.q)
        k = k if hidden.k is None else hidden.restore(k, hidden.k)
        v = v if hidden.v is None else hidden.restore(v, hidden.v)
        mask = mask if hidden.mask is None else hidden.restore(mask, hidden.mask)
    except (TypeError, RuntimeError, IndexError):
        return None, args, kwargs
    for key in (REFERENCE_ROWS_KEY, REFERENCE_MASKS_KEY, "activations_shape"):
        if key in hidden.options:
            options[key] = hidden.options[key]
    return hidden, (q, k, v, heads), {**rest, "mask": mask, "skip_reshape": skip_reshape,
                                      "skip_output_reshape": skip_output_reshape}  # fmt: skip


def _cannot_extend(name: str, value, rows: int) -> ValueError:
    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
    return ValueError(
        f"Apply RefDrop (Reference Image): the model input '{name}' of shape {shape} cannot be extended for the "
        f"reference rows (the model call has {rows} rows; a per-row input has them on its first axis, an input "
        "shared by all rows has 1 there). This combination of nodes is not supported with reference images."
    )


def map_per_row(value, rows: int, per_row, cannot, name: str = "input"):
    """A model input with ``per_row`` applied to each of its per-row tensors (the one rule of which input is per row).

    A tensor with ``rows`` rows on its first axis is per-row (any dtype and shape: text masks, pooled vectors,
    guidance, reference latents of any rank); lists and tuples (e.g. ``ref_latents``) are mapped item by item.
    Unchanged: a tensor with 1 row (shared by every row), a 0-d tensor, and anything that is not a tensor (Lumina's
    ``num_tokens``, methods, None). A tensor with any other number of rows: ``cannot(name, value, rows)`` is
    raised, never a wrong image.
    """
    if torch.is_tensor(value):
        if value.ndim == 0 or (value.shape[0] == 1 and rows != 1):
            return value
        if value.shape[0] == rows:
            return per_row(value)
        raise cannot(name, value, rows)
    if isinstance(value, (list, tuple)):
        items = [map_per_row(item, rows, per_row, cannot, f"{name}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def chunk_first_sigmas(t: torch.Tensor, rows: int, chunks: int, cannot) -> tuple[torch.Tensor, bool]:
    """(the sigma of each chunk's first row, shape (chunks,); whether ``t`` is per row).

    ``t`` is per row (``rows`` on its first axis, any trailing shape of one value a row) or one sigma for the
    whole call. Several values a row (per-token / per-frame noise levels) cannot noise a reference latent:
    ``cannot("t (sigma)", t, rows)`` is raised.
    """
    if torch.is_tensor(t) and t.ndim > 0 and t.shape[0] == rows and t[0].numel() == 1:
        return t[:: rows // chunks].reshape(chunks), True
    if torch.is_tensor(t) and t.numel() == 1:
        return t.reshape(1).expand(chunks), False
    raise cannot("t (sigma)", t, rows)


def _extend_cond(value, rows: int, chunks: int, extra: int, name: str = "input"):
    """A model input extended for the reference rows: E copies of each chunk's first row of every per-row tensor
    (:func:`map_per_row`); an input that cannot be extended is a ValueError naming ``name``."""
    return map_per_row(value, rows, lambda tensor: extend_rows(tensor, chunks, extra), _cannot_extend, name)


def _extend_sigma(t: torch.Tensor, rows: int, chunks: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the reference rows' sigmas (chunks, E), ``t`` extended for them): each chunk's first row's sigma
    (:func:`chunk_first_sigmas`); one sigma for the whole call stays as it is."""
    first, per_row = chunk_first_sigmas(t, rows, chunks, _cannot_extend)
    sigmas = first.reshape(chunks, 1).expand(chunks, extra)
    return sigmas, extend_rows(t, chunks, extra) if per_row else t


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

    ``latents`` are the references' VAE latents (E, C, H, W), or (E, C, 1, H, W) from a 3-D VAE (Qwen-Image,
    Cosmos), as VAE Encode made them for each picture; ``selected`` the indices
    of the references that guide (None = all: a reference with strength 0 or an all-black mask adds no row,
    but the noise is drawn for the whole batch so that the others' noise does not depend on it); ``masks``
    (len(selected), H', W') subject masks already cropped like the pixels VAE Encode used (white = subject),
    or None.
    At a call with latent size (h, w) and sigma s (the first row's sigma of each guidance chunk):
        z = common_upscale(latent, w, h, "bilinear", "center")       (once per size; 5-D latents frame by frame,
                                                                       a 1-frame latent repeated over a call's T
                                                                       frames)
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
        self._by_size: dict = {}  # (h, w, frames, device, dtype) -> (process_latent_in(z), eps, masks for the size)

    @property
    def count(self) -> int:
        return len(self.selected) if self.selected is not None else self.latents.shape[0]

    def references_for(self, base_model, height: int, width: int, device, dtype, frames: tuple[int, ...] = ()):
        """(process_latent_in(z), eps, masks) for a latent size, computed once per size.

        ``frames`` are the call's latent dims between channels and height: () for (B, C, H, W) latents, (T,) for
        the (B, C, T, H, W) latents of 3-D VAEs (Qwen-Image, Cosmos)."""
        key = (height, width, tuple(frames), str(device), dtype)
        with self._lock:
            if key not in self._by_size:
                self._by_size[key] = self._references_at(base_model, height, width, device, dtype, tuple(frames))
            return self._by_size[key]

    def _references_at(self, base_model, height: int, width: int, device, dtype, frames: tuple[int, ...] = ()):
        """Resize, noise and process the references for one latent size (see the class docstring)."""
        latent = self.latents
        if latent.ndim != len(frames) + 4:
            raise ValueError(
                f"Apply RefDrop (Reference Image): the references' latents have shape {tuple(latent.shape)} but the "
                f"model samples {len(frames) + 4}-D latents (of size {(*frames, height, width)}). Connect the VAE "
                "of the same checkpoint as the model."
            )
        z = latent
        if tuple(latent.shape[-2:]) != (height, width):
            # common_upscale resizes 5-D latents frame by frame (on the (B*T, C, H, W) view), same rule
            z = comfy.utils.common_upscale(latent, width, height, "bilinear", "center")
        if tuple(z.shape[2:-2]) != tuple(frames):
            if any(have not in (1, want) for have, want in zip(z.shape[2:-2], frames, strict=True)):
                raise ValueError(
                    f"Apply RefDrop (Reference Image): the references' latents have {tuple(z.shape[2:-2])} frames "
                    f"but the model call has {tuple(frames)}; only still pictures (1 frame) can be repeated."
                )
            z = z.expand(*z.shape[:2], *frames, *z.shape[-2:]).contiguous()  # a still picture over the T frames
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
        frames = tuple(x.shape[2:-2])  # (T,) for the (B, C, T, H, W) latents of 3-D VAEs
        clean, eps, masks = self.references_for(executor.class_obj, x.shape[-2], x.shape[-1], x.device, x.dtype, frames)
        sampling = executor.class_obj.model_sampling
        sigmas, t = _extend_sigma(t, rows, chunks, extra)
        x_ref = [sampling.noise_scaling(sigmas[chunk], eps, clean, max_denoise=False) for chunk in range(chunks)]
        x = extend_rows(x, chunks, torch.stack(x_ref))
        c_concat = _extend_cond(c_concat, rows, chunks, extra, "c_concat")
        c_crossattn = _extend_cond(c_crossattn, rows, chunks, extra, "c_crossattn")
        kw = {name: _extend_cond(value, rows, chunks, extra, name) for name, value in kw.items()}
        if control is not None:
            control = _extend_control(control, rows, chunks, extra)
        options = dict(transformer_options)
        options[REFERENCE_ROWS_KEY] = extra
        options[REFERENCE_MASKS_KEY] = masks
        self.check_own_patches(options.get("patches_replace"))
        if options.get("patches_replace"):
            options["patches_replace"] = hide_reference_rows(options["patches_replace"])
        self.hide_from_override(options, executor.class_obj)
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

    def hide_from_override(self, options: dict, base_model) -> None:
        """Another node's attention override (on a DiT set after the node's own, replacing it or chaining it as the
        override it found; on a UNet any) sees only the latent batch's rows, per call (``options`` is the call's
        copy; the model's options are not touched). The pack's overrides, which read the reference rows, stay as
        they are. On a UNet no override of the pack's is expected down the chain (nothing to report)."""
        override = options.get(OVERRIDE_KEY)
        if override is None or knows_reference_rows(override):
            return
        unet = isinstance(getattr(base_model, "diffusion_model", None), openaimodel.UNetModel)
        options[OVERRIDE_KEY] = OverrideWithoutReferenceRows(override, None if unet else self.report_unchained)

    def report_unchained(self) -> None:
        """Warn once when a node applied later replaced (did not chain) the node's own attention override."""
        self.replaced_notice.report(
            "a node applied after it (e.g. an attention backend switcher) set its own attention override without "
            "calling the node's"
        )

    def __deepcopy__(self, memo):
        return self
