"""Temporal RefDrop's glue on video diffusion transformers (Wan 2.x today): a policy for the shared DiT override.

Which attention calls are self-attention (and which are the text / CLIP-image cross-attentions of the same
block) is decided by the one shared mechanism, :mod:`..dit_override` with the family tables of
:mod:`..dit_families`. This module only says, for one self-attention call, which tokens are guided toward which:
the model's ``transformer_options["grid_sizes"]`` (latent frames, height, width in tokens) splits every row
(one whole clip) into frames, and every frame other than the reference frame is guided toward it
(:func:`...attention_patches.temporal.reference_frame_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...attention_patches.temporal import reference_frame_groups
from .. import model_families
from ..attention_calls import FallbackNotice
from ..dit_families import CallSite
from ..dit_override import AttentionCall, NotUnderstood, patch_dit
from ..step_window import StepWindow
from .blocks import excluded_blocks
from .settings import TEMPORAL, ReferenceFrameSettings

SINGLE_FRAME = (
    "there is no other frame to guide toward it, so the model runs unchanged (reported once). Temporal RefDrop "
    "needs a video of at least 5 frames (2 latent frames)."
)


@dataclass(frozen=True)
class ReferenceFramePolicy:
    """The temporal guidance policy: in every row (a clip), frames t != r are guided toward frame r (Eq. 5)."""

    settings: ReferenceFrameSettings
    single_frame: FallbackNotice = field(compare=False, default=None)

    def __post_init__(self):
        if self.single_frame is None:
            object.__setattr__(self, "single_frame", FallbackNotice(self.settings.node_name, SINGLE_FRAME))

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    def groups(self, call: AttentionCall, site: CallSite):
        options = call.transformer_options
        if not self.settings.window.contains(options):
            return None
        grid = options.get("grid_sizes")
        if grid is None or len(grid) != 3:
            raise NotUnderstood("the model did not report its token grid (transformer_options['grid_sizes'])")
        frames, height, width = (int(size) for size in grid)
        if frames * height * width != call.q_tokens:
            raise NotUnderstood(
                f"{call.q_tokens} tokens are not the {frames}x{height}x{width} frame grid (extra reference or "
                "context tokens in the sequence)"
            )
        reference = self.settings.reference_frame
        if reference >= frames:
            raise ValueError(
                f"{self.node_name}: reference_frame {reference} is past the end of this clip, which has {frames} "
                f"latent frames (0..{frames - 1}; a video of N frames has 1 + (N - 1) // 4 latent frames). Set "
                f"reference_frame to {frames - 1} or less."
            )
        if frames == 1:
            self.single_frame.report("the clip has a single latent frame (an image)")
            return None
        return reference_frame_groups(call.rows, frames, height * width, reference, self.settings.strength)


def apply_temporal_refdrop(
    model,
    strength: float,
    reference_frame: int,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    exclude_blocks: str = "",
):
    """A clone of a video DiT ``model`` with Temporal RefDrop on every self-attention outside the excluded blocks."""
    family = model_families.require_family(model, TEMPORAL, (model_families.VIDEO_DIT,))
    window = StepWindow.from_percents(model, start_percent, end_percent)
    excluded = excluded_blocks(family, TEMPORAL, exclude_blocks)
    if strength == 0.0:
        return model.clone()
    settings = ReferenceFrameSettings(float(strength), int(reference_frame), window)
    return patch_dit(model, family.dit, ReferenceFramePolicy(settings), excluded)
