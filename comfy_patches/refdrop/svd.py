"""SVD Temporal RefDrop's glue: every frame's spatial self-attention guided toward a reference frame (Eq. 5).

ComfyUI gives a SpatialVideoTransformer's spatial block and its temporal block (time_stack) the same patch
keys, so one attn1 replace sees both. A DIFFUSION_MODEL wrapper puts the frame count and a per-call
counter into transformer_options; within one UNet call each key is called spatial first, then temporal,
for every depth index, which tells the two apart even when h*w equals the frame count (identical shapes).
The shapes are checked as well: a call whose shape does not fit its role runs unchanged, with a warning.
"""

from __future__ import annotations

import comfy.patcher_extension

from .. import model_families
from ..attention_calls import feature_map_tokens
from ..step_window import StepWindow
from .settings import SVD_TEMPORAL, RefDropSettings
from .unet import RefDropAttention, patch_self_attention

FRAMES_KEY = "refguide_video_frames"
CALLS_KEY = "refguide_attn1_calls"
WRAPPER_KEY = "refguide_svd_temporal_refdrop"


def video_frames_wrapper(
    executor, x, timesteps, context, y=None, control=None, transformer_options={}, *args, **kwargs
):
    """DIFFUSION_MODEL wrapper: expose the frame count and a fresh call counter to the attention patches."""
    frames = kwargs.get("num_video_frames") or x.shape[0]
    transformer_options[FRAMES_KEY] = int(frames)
    transformer_options[CALLS_KEY] = {}
    try:
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)
    finally:
        transformer_options.pop(FRAMES_KEY, None)
        transformer_options.pop(CALLS_KEY, None)


class SVDSpatialAttention(RefDropAttention):
    """Spatial calls: Eq. 5 with the reference frame of each chunk; temporal calls: exactly the inner attention.

    The whole latent batch is the frame axis: chunk k (a guidance branch) is rows [k*T, (k+1)*T) and
    ``settings.reference_rows`` holds the reference frame index.
    """

    def guidable_call(self, q, k, v, extra_options) -> bool:
        frames = extra_options.get(FRAMES_KEY)
        calls = extra_options.get(CALLS_KEY)
        activations = extra_options.get("activations_shape")
        if frames is None or calls is None or activations is None:
            self.notice.report("the frame count is unknown (the diffusion-model wrapper did not run)")
            return False
        key = (extra_options.get("block"), extra_options.get("block_index", 0))
        order = calls.get(key, 0)
        calls[key] = order + 1
        batch, tokens = activations[0], feature_map_tokens(activations)
        if order % 2 == 1:  # the temporal block (time_stack) of this depth index
            if q.shape[0] != batch // frames * tokens or q.shape[1] != frames:
                self.notice.report(
                    f"temporal attention input {tuple(q.shape[:2])} was not ({batch // frames * tokens}, {frames})"
                )
            return False
        if q.shape[0] != batch or q.shape[1] != tokens or batch % frames != 0:
            self.notice.report(
                f"spatial attention input {tuple(q.shape[:2])} does not match the feature map {activations}"
            )
            return False
        return super().guidable_call(q, k, v, extra_options)

    def chunk_count(self, q, extra_options) -> int:
        return q.shape[0] // extra_options[FRAMES_KEY]


def apply_svd_temporal_refdrop(
    model, strength: float, reference_frame: int, start_percent: float = 0.0, end_percent: float = 1.0
):
    """A clone of a Stable Video Diffusion ``model`` whose frames are guided toward ``reference_frame``."""
    family = model_families.require_family(model, SVD_TEMPORAL, (model_families.VIDEO_UNET,))
    window = StepWindow.from_percents(model, start_percent, end_percent)
    if strength == 0.0:
        return model.clone()
    settings = RefDropSettings((int(reference_frame),), (float(strength),), SVD_TEMPORAL, window)
    patched = patch_self_attention(model, settings, family.unet_blocks, SVDSpatialAttention)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, video_frames_wrapper)
    return patched
