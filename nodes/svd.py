"""RefDrop for video: "SVD Temporal RefDrop" (Stable Video Diffusion img2vid)."""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_patches import refdrop as glue
from .validation import REFDROP_CATEGORY, widget_ranges, window_inputs, window_problem


class SVDTemporalRefDrop(io.ComfyNode):
    """Guide every frame's spatial self-attention toward one reference frame (RefDrop's video variant)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SVDTemporalRefDrop",
            display_name="SVD Temporal RefDrop",
            category=REFDROP_CATEGORY,
            description=(
                "RefDrop for Stable Video Diffusion: in every spatial self-attention layer, each frame becomes "
                "c*Attn(Q, K_ref, V_ref) + (1-c)*Attn(Q, K, V) with the reference frame's keys/values, which "
                "reduces flicker and face distortion while keeping motion. Temporal attention is not touched. "
                "Paper: c = 0.2 at every step; larger values make the video static."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Stable Video Diffusion model (e.g. from Image Only Checkpoint Loader)."
                ),
                io.Float.Input(
                    "strength",
                    default=0.2,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip="c of Eq. 5. Paper: 0.2. Larger values steady the video further but freeze motion; 0 = off.",
                ),
                io.Int.Input(
                    "reference_frame",
                    default=0,
                    min=0,
                    max=4095,
                    tooltip="Which frame of the clip is the reference (0 = the first frame, as in the paper).",
                ),
                *window_inputs(
                    "Start guiding at this fraction of the sampling schedule (paper: 0, every step).",
                    "Stop guiding after this fraction of the sampling schedule (paper: 1, every step).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with temporal RefDrop (a clone; the input is unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0, **others):
        problem = widget_ranges(cls, dict(others, start_percent=start_percent, end_percent=end_percent))
        if problem:
            return problem
        return window_problem(start_percent, end_percent) or True

    @classmethod
    def execute(cls, model, strength, reference_frame, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        return io.NodeOutput(
            glue.apply_svd_temporal_refdrop(model, strength, reference_frame, start_percent, end_percent)
        )


NODES = [SVDTemporalRefDrop]
