"""RefDrop for video diffusion transformers: "Temporal RefDrop" (Wan 2.1 / 2.2 today)."""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_patches import refdrop as glue
from ..comfy_patches.refdrop.settings import TEMPORAL as NODE_NAME
from .validation import REFDROP_CATEGORY, widget_ranges, window_inputs, window_problem


class TemporalRefDrop(io.ComfyNode):
    """Guide every latent frame's self-attention toward one reference frame of the same clip (video DiTs)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TemporalRefDrop",
            display_name=NODE_NAME,
            category=REFDROP_CATEGORY,
            description=(
                "RefDrop's video variant for Wan 2.1 / 2.2 (text-to-video, image-to-video, the 5B TI2V, each expert "
                "of the 14B pair): in every self-attention, the tokens of every latent frame t other than the "
                "reference frame r become c*Attn(Q_t, K_r, V_r) + (1-c)*(the model's own output), which steadies "
                "identity and reduces flicker over the clip. The reference frame itself and all cross-attention "
                "(text, CLIP image) are untouched. For Wan 2.2 14B put one node on each expert model."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A Wan 2.1 / 2.2 model (Load Diffusion Model). For the 14B pair, one node per expert.",
                ),
                io.Float.Input(
                    "strength",
                    default=0.2,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "c of Eq. 5. 0.2 is the paper's value for Stable Video Diffusion. Larger values steady the "
                        "clip further but freeze motion (1 = every frame attends only to the reference); negative "
                        "values push frames apart; 0 = model unchanged."
                    ),
                ),
                io.Int.Input(
                    "reference_frame",
                    default=0,
                    min=0,
                    max=4095,
                    tooltip=(
                        "The reference, as a LATENT frame index. Wan's latent frame 0 is the first video frame; "
                        "every later latent frame covers four video frames (latent frame n = video frames 4n-3..4n), "
                        "so an 81-frame video has 21 latent frames (0..20). Must be inside the clip."
                    ),
                ),
                *window_inputs(
                    "Start guiding at this fraction of the sampling schedule (0 = from the first step). With "
                    "two experts, each model's node sees the whole schedule: the percents are of the full "
                    "schedule, not of the expert's part.",
                    "Stop guiding after this fraction of the sampling schedule (1 = to the last step).",
                ),
                io.String.Input(
                    "exclude_blocks",
                    default="",
                    optional=True,
                    advanced=True,
                    tooltip=(
                        "Transformer blocks to leave untouched, in the model's own numbering: 'block 0' is the first "
                        "(Wan 14B has blocks 0..39, 1.3B and 5B 0..29), e.g. 'block 0, block 1'. Unknown names are "
                        "refused with the valid range."
                    ),
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with Temporal RefDrop (a clone; the input is unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0, exclude_blocks="", **others):
        problem = widget_ranges(cls, dict(others, start_percent=start_percent, end_percent=end_percent))
        if problem:
            return problem
        return window_problem(start_percent, end_percent) or True

    @classmethod
    def execute(
        cls, model, strength, reference_frame, start_percent=0.0, end_percent=1.0, exclude_blocks=""
    ) -> io.NodeOutput:
        return io.NodeOutput(
            glue.apply_temporal_refdrop(model, strength, reference_frame, start_percent, end_percent, exclude_blocks)
        )


NODES = [TemporalRefDrop]
