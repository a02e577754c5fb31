"""Temporal RefDrop's glue on video diffusion transformers: a policy for the shared DiT override.

Which attention calls are self-attention (and which are the text / CLIP-image cross-attentions of the same
block) is decided by the one shared mechanism, :mod:`..dit_override` with the family tables of
:mod:`..dit_families`. This module only says, for one self-attention call, which tokens are guided toward which:
the family places the call's video tokens (``site.image``: where they start, latent frames, height and width
in tokens, from the model input's latent and the family's patch size), every row (one whole clip) is split
into frames, and every video token of a frame other than the reference frame is guided toward frame r plus the
row's non-video tokens (text, appended condition tokens: never guided queries themselves)
(:func:`...attention_patches.temporal.reference_frame_groups`).

With the node's ``image`` the reference is a picture instead (text-to-video models; :mod:`.clip_picture`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...attention_patches.temporal import reference_frame_groups
from .. import dit_families, model_families
from ..attention_calls import FallbackNotice
from ..dit_families import CallSite
from ..dit_override import AttentionCall, NotUnderstood, patch_dit
from ..step_window import StepWindow
from .blocks import excluded_blocks
from .clip_picture import PICTURE_FORWARD_KEY, ClipPictureRows, PictureReferencePolicy, add_outermost, has_picture
from .reference_image import check_images, check_vae, encode_references
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
        if not self.settings.window.contains(options) or options.get(PICTURE_FORWARD_KEY) is not None:
            return None  # outside the window, or another node's picture forward (one frame, not a clip)
        video = site.image
        if video is None:
            raise NotUnderstood("the video tokens of this call are unknown (the model input is not a 5-D latent)")
        reference = self.settings.reference_frame
        if reference >= video.frames:
            raise ValueError(
                f"{self.node_name}: reference_frame {reference} is past the end of this clip, which has "
                f"{video.frames} latent frames (0..{video.frames - 1}; with Wan's, HunyuanVideo's and most video VAEs "
                f"a video of N frames has 1 + (N - 1) // 4 latent frames). Set reference_frame to {video.frames - 1} "
                "or less."
            )
        if video.frames == 1:
            self.single_frame.report("the clip has a single latent frame (an image)")
            return None
        return reference_frame_groups(
            call.rows, video.frames, video.height * video.width, reference, self.settings.strength,
            video_start=video.start, tokens=call.q_tokens, device=call.q.device,
        )  # fmt: skip


def apply_temporal_refdrop(
    model,
    strength: float,
    reference_frame: int,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    exclude_blocks: str = "",
    image=None,
    vae=None,
    seed: int = 0,
):
    """A clone of a video DiT ``model`` with Temporal RefDrop on every self-attention outside the excluded blocks:
    toward latent frame ``reference_frame`` of each clip, or, when ``image`` is given, toward that picture
    (:mod:`.clip_picture`: encoded here with ``vae``, noised from ``seed`` at every step)."""
    family = model_families.require_family(model, TEMPORAL, (model_families.VIDEO_DIT,))
    window = StepWindow.from_percents(model, start_percent, end_percent)
    excluded = excluded_blocks(family, TEMPORAL, exclude_blocks)
    if image is not None:
        return _with_picture(model, family, excluded, window, float(strength), image, vae, int(seed))
    if strength == 0.0:
        return model.clone()
    settings = ReferenceFrameSettings(float(strength), int(reference_frame), window)
    return patch_dit(model, family.dit, ReferenceFramePolicy(settings), excluded)


def _with_picture(model, family, excluded, window, strength, image, vae, seed):
    """Temporal RefDrop toward a picture (text-to-video models only): every check, then the encode (once)."""
    if vae is None:
        raise ValueError(
            f"{TEMPORAL}: `image` is connected but `vae` is not. Connect the VAE of the same checkpoint as the model "
            "(Load VAE): it encodes the picture once, when the node runs."
        )
    config = next(iter(dit_families.config_names(model)), "")
    problem = family.dit.clip_picture_problem(config, model.model.diffusion_model)
    if problem:
        raise ValueError(
            f"{TEMPORAL}: a picture cannot be the reference on this model: {problem}. Leave `image` unconnected and "
            "use `reference_frame` instead (a frame of the clip as the reference; on image-to-video models latent "
            "frame 0 is the start image)."
        )
    if has_picture(model):
        raise ValueError(
            f"{TEMPORAL}: this model already has a picture reference from another {TEMPORAL} node; one picture per "
            "model."
        )
    check_vae(model, vae, TEMPORAL)
    check_images(image, vae, TEMPORAL)
    if image.shape[0] != 1:
        raise ValueError(
            f"{TEMPORAL}: `image` is a batch of {image.shape[0]} pictures; the clip takes ONE picture as its "
            "reference. Pick one (e.g. Image From Batch)."
        )
    if strength == 0.0:
        return model.clone()
    latent = encode_references(model, vae, image, TEMPORAL)
    policy = PictureReferencePolicy(strength, window)
    patched = patch_dit(model, family.dit, policy, excluded)
    add_outermost(patched, ClipPictureRows(policy, latent, seed, window))
    return patched
