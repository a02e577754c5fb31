"""RefDrop for video diffusion transformers: "Temporal RefDrop" (every video DiT family of the README's table)."""

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
                "RefDrop's video variant for video diffusion transformers: Wan 2.1 / 2.2 and its variants (VACE, "
                "Camera, S2V, HuMo, Animate, SCAIL, WanDancer), HunyuanVideo 1.0 / 1.5, Kandinsky 5, CogVideoX, "
                "Cosmos, Mochi, LTX-Video. In every self-attention, the video tokens of every latent frame t other "
                "than the reference frame r become c*Attn(Q_t, K_r, V_r) + (1-c)*(the model's own output), where "
                "K_r, V_r are frame r's tokens plus the row's non-video tokens (text, reference tokens); this "
                "steadies identity and reduces flicker over the clip. Frame r, text tokens and all cross-attention "
                "are untouched. For Wan 2.2 14B put one node on each expert model. "
                "With `image` (and `vae`) connected, the reference is that picture instead of a frame (text-to-video "
                "models only: Wan 2.1 / 2.2 t2v, the Wan 2.2 5B, HunyuanVideo 1.0 t2v and 1.5): every latent frame "
                "is guided toward it, c*Attn(Q_t, K_pic, V_pic) + (1-c)*X_t, e.g. a character from one picture in a "
                "generated clip."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "A video diffusion transformer (Load Diffusion Model): Wan 2.x and its variants, "
                        "HunyuanVideo, Kandinsky 5, CogVideoX, Cosmos, Mochi, LTX-Video (the README's family table "
                        "lists them and the refused ones). For the Wan 2.2 14B pair, one node per expert."
                    ),
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
                        "The reference, as a LATENT frame index. Latent frame 0 is the first video frame; on Wan, "
                        "HunyuanVideo, Kandinsky 5, CogVideoX and Cosmos Predict2 every later latent frame covers four "
                        "video frames (81 frames = 21 latent frames, 0..20); Mochi six, Cosmos 1 and LTX-Video eight; "
                        "CogVideoX 1.5 counts pairs of latent frames; Wan Animate counts the generated frames after "
                        "its picture frame. Must be inside the clip."
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
                        "Transformer blocks to leave untouched, in the model's own names: Wan, CogVideoX, Cosmos, "
                        "Mochi, LTX-Video 'block 0'.. (Wan 14B has blocks 0..39, 1.3B and 5B 0..29); HunyuanVideo "
                        "'double 0'.., 'single 0'..; Kandinsky 5 'visual 0'... E.g. 'block 0, block 1'. Unknown names "
                        "are refused with the valid ones."
                    ),
                ),
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip=(
                        "Optional: ONE picture (e.g. a character) as the reference instead of a frame of the clip; "
                        "every latent frame is guided toward it and `reference_frame` is not used. Text-to-video "
                        "models only (Wan 2.1 / 2.2 t2v, the Wan 2.2 5B, HunyuanVideo 1.0 t2v and 1.5); an "
                        "image-to-video model is refused (its clip starts from a picture already: use "
                        "`reference_frame`). Any size: it is resized and centre-cropped to the latent size."
                    ),
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip=(
                        "The VAE of the same checkpoint as the model (Load VAE): encodes `image` once, when the node "
                        "runs. Needed with `image`; unused without it."
                    ),
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=io.ControlAfterGenerate.fixed,
                    optional=True,
                    tooltip=(
                        "With `image`: the fixed noise that carries the picture through the steps (as a KSampler "
                        "seed noises a latent). Unused without `image`."
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
        cls,
        model,
        strength,
        reference_frame,
        start_percent=0.0,
        end_percent=1.0,
        exclude_blocks="",
        image=None,
        vae=None,
        seed=0,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            glue.apply_temporal_refdrop(
                model, strength, reference_frame, start_percent, end_percent, exclude_blocks, image, vae, seed
            )
        )


NODES = [TemporalRefDrop]
