"""RefDrop for video diffusion transformers: "Temporal RefDrop" (Wan 2.1 / 2.2)."""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_patches import model_families
from ..comfy_patches.step_window import sigma_range
from ..comfy_patches.temporal_refdrop import TemporalRefDropSettings, block_labels, patch_temporal_refdrop
from .refdrop import parse_block_names
from .validation import check_window, widget_ranges, window_inputs, window_problem

NODE_NAME = "Temporal RefDrop"


class TemporalRefDrop(io.ComfyNode):
    """Guide every latent frame's self-attention toward one reference frame of the same clip (video DiTs)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TemporalRefDrop",
            display_name=NODE_NAME,
            category="RefDrop",
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
        problem = window_problem(start_percent, end_percent)
        if problem:
            return problem
        if isinstance(exclude_blocks, str):
            malformed = [name for name in parse_block_names(exclude_blocks) if not _is_block_name(name)]
            if malformed:
                return f"exclude_blocks: {', '.join(map(repr, malformed))} is not a block name; write e.g. 'block 0, block 5'."
        return True

    @classmethod
    def execute(
        cls, model, strength, reference_frame, start_percent=0.0, end_percent=1.0, exclude_blocks=""
    ) -> io.NodeOutput:
        model_families.require_family(model, NODE_NAME, (model_families.VIDEO_DIT,))
        check_window(start_percent, end_percent)
        labels = block_labels(model)
        excluded = parse_block_names(exclude_blocks or "")
        unknown = [name for name in excluded if name not in labels]
        if unknown:
            raise ValueError(
                f"exclude_blocks: {', '.join(map(repr, unknown))} is not a block of this model; it has "
                f"'{labels[0]}' .. '{labels[-1]}'."
            )
        if strength == 0.0:
            return io.NodeOutput(model.clone())
        window = sigma_range(model, start_percent, end_percent)
        settings = TemporalRefDropSettings(
            strength=float(strength),
            reference_frame=int(reference_frame),
            excluded_blocks=frozenset(excluded),
            sigma_window=window,
        )
        return io.NodeOutput(patch_temporal_refdrop(model, settings))


def _is_block_name(name: str) -> bool:
    words = name.split()
    return len(words) == 2 and words[0] == "block" and words[1].isdigit()


NODES = [TemporalRefDrop]
