"""Temporal RefDrop with a picture as the clip's reference (our extension; text-to-video diffusion transformers).

Instead of a frame of the clip, the reference is a picture (``image``), VAE-encoded once when the node runs as a
one-frame clip. At every model call (an APPLY_MODEL wrapper, :class:`ClipPictureRows`):

1. one picture row per guidance chunk (``transformer_options["cond_or_uncond"]``), made exactly as Apply RefDrop
   (Reference Image) makes its rows (:class:`..reference_rows.ReferenceRows`): the picture latent resized to the
   call's latent height and width (``common_upscale``, bilinear, centre crop), ONE latent frame,
   eps = ``comfy.sample.prepare_noise`` of that shape from ``seed`` (a private generator),
   x_ref = ``model_sampling.noise_scaling(sigma, eps, process_latent_in(z))`` with the chunk's first row's sigma,
   and the chunk's first row of every per-row model input (its conditioning; a model that always takes
   concatenated start-image channels, HunyuanVideo 1.5, gets them as zeros of one frame, as its text-to-video
   calls have them; a clip with a start image is refused there);
2. the picture rows run as their OWN forward of the model (their frame count differs from the clip's), before
   the clips; the policy (:class:`PictureReferencePolicy`) keeps the keys/values (and key mask) of every guided
   self-attention call of that forward, by (block_type, block_index, ordinal) as the override counts calls; the
   forward's output is dropped (the sampler never sees it);
3. the clips' forward: in every guided self-attention call, every VIDEO query token of every latent frame of
   each clip becomes c * Attn(Q_t, K_pic, V_pic) + (1 - c) * X_t (Eq. 5 with the picture row of the clip's chunk
   as the reference: its video tokens and, on joint-sequence models, its other tokens), through the one blend
   (:func:`...attention_patches.guidance.reference_feature_guidance_` with ``Reference(keys=, values=)``).

The picture's keys/values live in a store made per model call (in that call's ``transformer_options``); each
call's entry is released when the clips' forward has used it, the rest when the model call ends: nothing survives
a model call but the resized, noised picture latent of each size (as Apply RefDrop (Reference Image) keeps it).
Cost per model call: one forward of ``chunks`` one-frame rows (about 1/frames of the clips' forward), and per
self-attention call one attention of every video query over one frame's keys (1/frames of the plain attention);
memory: one frame's K and V per chunk and guided self-attention call, held from the picture forward until the
clips' forward reaches that call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.patcher_extension
import torch

from ...attention_patches.guidance import GuidanceGroup, Reference, Span
from ..attention_calls import FallbackNotice
from ..dit_families import CallSite
from ..dit_override import AttentionCall, NotUnderstood
from ..reference_rows import ReferenceRows, chunk_first_sigmas, map_per_row
from ..step_window import StepWindow
from .settings import TEMPORAL

WRAPPER_KEY = "refguide_temporal_clip_picture"  # the APPLY_MODEL wrapper (one picture node per model)
# Set on the transformer_options of the picture forward: the store its self-attention keys/values go to. Other
# Temporal RefDrop policies leave that forward plain.
PICTURE_FORWARD_KEY = "refguide_clip_picture_forward"
# Set on the transformer_options of the clips' forward: the store the picture forward filled.
PICTURE_KEYS_KEY = "refguide_clip_picture_keys"
# Per-row model inputs of the clip that a one-frame picture row cannot take (their frames are the clip's): the
# picture is noised at the row's sigma everywhere, which is what a denoise mask of ones says.
CLIP_ONLY_INPUTS = ("denoise_mask",)


@dataclass(eq=False)
class PictureKeysValues:
    """The picture rows' keys, values and key mask of every guided self-attention call of one picture forward,
    by (block_type, block_index, ordinal). Made per model call; ``owner`` is the node's policy. The clips' forward
    takes each call's entry when it reaches that call, so they are released block by block."""

    owner: object
    calls: dict = field(default_factory=dict)

    def record(self, site_key, k, v, mask) -> None:
        self.calls[site_key] = (k, v, mask)

    def take(self, site_key):
        """The picture's (keys, values, key mask) of one call, released from the store (each is used once)."""
        return self.calls.pop(site_key, None)


def site_key(call: AttentionCall) -> tuple:
    """(block_type, block_index, ordinal) of a call, as the override counted it (its ordinal was just drawn)."""
    options = call.transformer_options
    key = (options.get("block_type"), options.get("block_index"))
    return (*key, call.forward.calls[key] - 1)


@dataclass(frozen=True, eq=False)
class PictureReferencePolicy:
    """The override's policy: record the picture forward's keys/values, guide the clips toward them (Eq. 5)."""

    strength: float
    window: StepWindow
    node_name: str = TEMPORAL
    notice: FallbackNotice = field(default=None, compare=False)

    def __post_init__(self):
        if self.notice is None:
            consequence = "the clips run without the picture (reported once)."
            object.__setattr__(self, "notice", FallbackNotice(self.node_name, consequence))

    def groups(self, call: AttentionCall, site: CallSite):
        options = call.transformer_options
        recording = options.get(PICTURE_FORWARD_KEY)
        if recording is not None:  # the picture forward: keep its K/V (ours), leave it plain
            if recording.owner is self:
                recording.record(site_key(call), call.k, call.v, call.mask)
            return None
        store = options.get(PICTURE_KEYS_KEY)
        if store is None or store.owner is not self:
            if self.window.contains(options) and options.get("cond_or_uncond") is not None:
                self.notice.report("the picture rows did not run before this model call (its wrapper is missing)")
            return None
        recorded = store.take(site_key(call))
        if recorded is None:
            raise NotUnderstood("no keys/values of the picture forward at this call (it made no such call)")
        video = site.image
        if video is None:
            raise NotUnderstood("the video tokens of this call are unknown (the model input is not a 5-D latent)")
        if video.row_stride not in (0, video.width):
            raise NotUnderstood("the video tokens of this call are not one contiguous run")
        keys, values, key_mask = recorded
        chunks = len(options.get("cond_or_uncond") or [0])
        if call.rows % chunks or keys.shape[0] != chunks:
            raise NotUnderstood(f"{call.rows} clip rows and {keys.shape[0]} picture rows for {chunks} chunks")
        per_chunk = call.rows // chunks
        return [
            GuidanceGroup(
                Span(chunk * per_chunk, per_chunk, video.start, video.start + video.count),
                (Reference(Span(chunk), self.strength, keys=keys, values=values, key_mask=key_mask),),
            )
            for chunk in range(chunks)
        ]


def _no_picture_row(name: str, value, rows: int) -> ValueError:
    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
    return ValueError(
        f"{TEMPORAL}: the model input '{name}' of shape {shape} has no row per clip (the model call has {rows} rows; "
        "a per-row input has them on its first axis, an input shared by all rows has 1 there), so the picture rows "
        "cannot take their chunk's value. This combination of nodes is not supported with a picture reference."
    )


def _first_rows(value, rows: int, chunks: int, name: str):
    """The picture rows' value of a model input: each chunk's first row of every per-row tensor (the rule of Apply
    RefDrop (Reference Image), :func:`..reference_rows.map_per_row`)."""
    return map_per_row(value, rows, lambda tensor: tensor[:: rows // chunks], _no_picture_row, name)


def _chunk_sigmas(t: torch.Tensor, rows: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma of each chunk's first row (chunks,), the picture rows' ``t``); one sigma for the call is shared."""
    first, per_row = chunk_first_sigmas(t, rows, chunks, _no_picture_row)
    return first, t[:: rows // chunks] if per_row else t


def _picture_concat(c_concat, chunks: int):
    """The picture rows' concatenated input channels: none without them; on a text-to-video call whose model
    always takes them (HunyuanVideo 1.5: start image and mask channels, all zero without a start image) zeros of one
    frame. A clip conditioned on a start image (non-zero channels) is image-to-video: refused."""
    if c_concat is None:
        return None
    if c_concat.ndim != 5 or bool(c_concat.any()):
        raise ValueError(
            f"{TEMPORAL}: this clip is conditioned on a start image (image-to-video: the model's input has the image "
            "and its mask concatenated), so a picture cannot be its reference. Leave `image` unconnected and use "
            "`reference_frame` instead (latent frame 0 is the start image)."
        )
    return c_concat.new_zeros(chunks, c_concat.shape[1], 1, *c_concat.shape[-2:])


class ClipPictureRows:
    """APPLY_MODEL wrapper: the picture forward (one noised picture row per chunk), then the clips' forward with
    the picture's keys/values at hand. Outermost of the model's APPLY_MODEL wrappers (the per-forward call
    counters of the pack's overrides then start afresh for each of the two forwards)."""

    def __init__(self, policy: PictureReferencePolicy, latent: torch.Tensor, seed: int, window: StepWindow):
        self.policy = policy
        self.window = window
        self.rows = ReferenceRows(latent, seed, None, window)  # the picture latent, resized and noised per size
        self.notice = FallbackNotice(TEMPORAL, "such model calls run without the picture (reported once).")

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
        def plain():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)

        if transformer_options.get(PICTURE_FORWARD_KEY) is not None or not self.window.contains(transformer_options):
            return plain()
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        rows = x.shape[0]
        if x.ndim != 5 or rows % chunks:
            self.notice.report(f"a model input of shape {tuple(x.shape)} is not {chunks} chunks of clips")
            return plain()
        picture_concat = _picture_concat(c_concat, chunks)
        store = PictureKeysValues(self.policy)
        base_model = executor.class_obj
        clean, eps, _ = self.rows.references_for(base_model, x.shape[-2], x.shape[-1], x.device, x.dtype, (1,))
        sigmas, picture_t = _chunk_sigmas(t, rows, chunks)
        sampling = base_model.model_sampling
        picture_x = torch.cat([sampling.noise_scaling(sigmas[c : c + 1], eps, clean, max_denoise=False)
                               for c in range(chunks)])  # fmt: skip
        picture_kw = {
            name: _first_rows(value, rows, chunks, name) for name, value in kw.items() if name not in CLIP_ONLY_INPUTS
        }
        options = dict(transformer_options)
        options[PICTURE_FORWARD_KEY] = store
        if torch.is_tensor(transformer_options.get("sigmas")):
            options["sigmas"] = _chunk_sigmas(transformer_options["sigmas"], rows, chunks)[1]
        context = None if c_crossattn is None else _first_rows(c_crossattn, rows, chunks, "c_crossattn")
        try:
            executor(picture_x, picture_t, picture_concat, context, None, options, **picture_kw)  # output dropped
            del picture_x, picture_concat, context, picture_kw
            options = dict(transformer_options)
            options[PICTURE_KEYS_KEY] = store
            return executor(x, t, c_concat, c_crossattn, control, options, **kw)
        finally:
            store.calls.clear()  # the picture's keys/values go with the model call


def add_outermost(model, wrapper) -> None:
    """Put ``wrapper`` first among ``model``'s APPLY_MODEL wrappers (a clone's own dict, rebuilt in order)."""
    kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    existing = model.wrappers.get(kind, {})
    model.wrappers[kind] = {
        WRAPPER_KEY: [wrapper],
        **{key: list(w) for key, w in existing.items() if key != WRAPPER_KEY},
    }


def has_picture(model) -> bool:
    return bool(model.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY))
