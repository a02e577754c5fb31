"""Wan 2.1 / 2.2 (WanModel) and its variants: per block a self-attention over every frame's tokens, then
cross-attention(s).

Every variant runs the blocks of WanModel (``block_type`` "double", ``block_index`` i); a variant entry says only
what differs: its configurations and model class, extra calls (HuMo's audio cross-attention, the VACE blocks),
and where its video tokens sit among other tokens (references and motion tokens before or after them). Adapter
attentions that ComfyUI runs without ``transformer_options`` (S2V's audio injector, Animate's face adapter,
WanDancer's music encoder and injector) never reach the attention override: they run plain by construction.
"""

from __future__ import annotations

from dataclasses import replace

import comfy.ldm.wan.model
import comfy.ldm.wan.model_animate
import comfy.ldm.wan.model_wandancer

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call


class WanFamily(DiTFamily):
    """Wan 2.1 / 2.2 (t2v, i2v, the 5B TI2V, each 14B expert): per block one self-attention over all frames'
    tokens (frame-major: frames, height, width), then the cross-attention(s): the text, and for Wan 2.1
    image-to-video first the CLIP-image one. Cross-attention is never touched, whatever the token counts; only
    the order of the calls in each block (``block_index``) says which is which.

    The row's video tokens are the model input's latent frames; tokens the model adds before them (a ``ref_conv``
    reference picture) or after them (``time_dim_concat`` frames, in-context ``context_latents``) are the row's
    other tokens: keys/values of the reference frame, never guided queries."""

    name = "Wan 2.1 / 2.2"
    video = True
    configs = ("WAN21_T2V", "WAN21_I2V", "WAN22_T2V", "WAN21_FunControl2V", "WAN21_FlowRVS")
    model_classes = (comfy.ldm.wan.model.WanModel,)
    naming = "`block 0`..; self-attention over every frame's tokens (text / CLIP-image cross-attention untouched)"
    cross_calls = 1  # cross-attention calls after the self-attention of each block
    ref_conv = False  # WanModel.ref_conv: a ``reference_latent`` input becomes tokens in front of the video
    leading_reference_frames = 0  # latent frames at the front of the model input that are a picture, not video
    # Temporal RefDrop's `image` (a picture as the clip's reference) on text-to-video Wan: see clip_picture_problem.
    # The variants below inherit Wan's calls, not this: a subclass has it only where it sets it (__init_subclass__).
    clip_pictures = True
    picture_configs = ("WAN21_T2V", "WAN22_T2V")  # the most specific configurations that may be text-to-video

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.clip_pictures = cls.__dict__.get("clip_pictures", False)

    def plan(self, diffusion_model) -> None:
        i2v = isinstance(diffusion_model.blocks[0].cross_attn, comfy.ldm.wan.model.WanI2VCrossAttention)
        self.cross_calls = 2 if i2v else 1
        self.ref_conv = getattr(diffusion_model, "ref_conv", None) is not None

    def clip_picture_problem(self, config: str, diffusion_model) -> str | None:
        """Text-to-video Wan only: Wan 2.1 / 2.2 t2v (``WAN21_T2V`` with in_dim == out_dim) and the Wan 2.2 5B
        (``WAN22_T2V``, whose start image is a denoise mask, not input channels). A model whose input takes more
        channels than it outputs is image-to-video (Wan 2.1 i2v and the Wan 2.2 14B i2v experts: 36 = 16 latent +
        4 mask + 16 start-image channels; Fun Control: 48); other configurations (FlowRVS) are not text-to-video."""
        if not self.clip_pictures:
            return super().clip_picture_problem(config, diffusion_model)
        in_dim, out_dim = diffusion_model.patch_embedding.weight.shape[1], diffusion_model.out_dim
        if in_dim > out_dim:
            return (
                f"this is an image-to-video Wan model (its input takes {in_dim} channels for {out_dim} latent "
                "channels: the start image and its mask, or a control video), so its clip already starts from a picture"
            )
        if config not in self.picture_configs:
            return f"this Wan model ({config}) is not a text-to-video model"
        return None

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type == "double" and index is not None and ordinal <= self.cross_calls:
            return CallSite(f"block {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return unexpected_call(key, ordinal)

    def tokens_before_video(self, forward, frame_tokens: int) -> int:
        """Tokens the model puts in front of the video tokens: WanModel.forward_orig prepends ``ref_conv`` of the
        ``reference_latent`` (one picture, patchified by a stride-patch Conv2d) when the model has ``ref_conv``."""
        reference = forward.inputs.get("reference_latent") if self.ref_conv else None
        if reference is None:
            return 0
        return (reference.shape[-2] // self.patch[1]) * (reference.shape[-1] // self.patch[2])

    def with_image_tokens(self, site: CallSite, call) -> CallSite:
        """The video tokens of a self-attention call: the model input's latent frames after
        ``leading_reference_frames``, from token :meth:`tokens_before_video`; the rest of the row is other tokens."""
        site = super().with_image_tokens(site, call)
        if site.image is None:
            return site
        image, lead = site.image, self.leading_reference_frames
        frame_tokens = image.height * image.width
        start = self.tokens_before_video(call.forward, frame_tokens) + lead * frame_tokens
        frames = image.frames - lead
        if frames < 1 or start + frames * frame_tokens > call.q_tokens:
            problem = (
                f"{site.label}: {frames} video latent frames of {frame_tokens} tokens from token {start} do not fit "
                f"the call's {call.q_tokens} tokens"
            )
            return replace(site, image=None, problem=problem)
        return replace(site, image=replace(image, start=start, frames=frames))


class WanVaceFamily(WanFamily):
    """Wan 2.1 VACE (VaceWanModel): the main blocks as Wan's; after main block i (every
    ``num_layers // vace_layers``-th) VACE block ``vace_layers_mapping[i]`` runs once per control video with the
    same ``block_index``: its self-attention over the control tokens (control latents + mask + the embedded
    input), then its text cross-attention. The VACE blocks compute the hints added to the video stream from the
    control video alone (they never see the guided stream), so they stay plain: guiding them would mix frame r's
    control into every frame's hint."""

    name = "Wan 2.1 VACE"
    configs = ("WAN21_Vace",)
    model_classes = (comfy.ldm.wan.model.VaceWanModel,)
    naming = (
        "`block 0`.. (the main blocks, guided); the VACE blocks (`vace block 0`..) run after main blocks with the "
        "same index and stay plain"
    )
    vace_blocks: dict[int, int] = {}

    def plan(self, diffusion_model) -> None:
        super().plan(diffusion_model)
        self.vace_blocks = dict(getattr(diffusion_model, "vace_layers_mapping", {}))

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        vace = self.vace_blocks.get(index) if block_type == "double" else None
        if vace is not None and ordinal > self.cross_calls:  # one self + one text cross-attention per control video
            return CallSite(f"vace block {vace}", False)
        return super().call_site(key, ordinal, call)


class WanCameraFamily(WanFamily):
    """Wan Camera (CameraWanModel, Wan 2.1 with CLIP image, Wan 2.2 without): the camera conditions are added to
    the patch embedding, so the row is Wan's (video tokens only)."""

    name = "Wan Camera"
    configs = ("WAN21_Camera", "WAN22_Camera")
    model_classes = (comfy.ldm.wan.model.CameraWanModel,)


class WanS2VFamily(WanFamily):
    """Wan 2.2 S2V (WanModel_S2V): row = [video; reference picture frames; FramePack motion tokens]; the appended
    tokens are the row's other tokens. The audio injector's cross-attention after each injected block runs
    without ``transformer_options`` (plain, never seen by the override)."""

    name = "Wan 2.2 S2V"
    configs = ("WAN22_S2V",)
    model_classes = (comfy.ldm.wan.model.WanModel_S2V,)
    naming = (
        "`block 0`..; self-attention over the video frames (appended reference and motion tokens are keys/values "
        "only; text and audio cross-attention untouched)"
    )


class WanHuMoFamily(WanFamily):
    """HuMo (HumoWanModel): row = [video; reference picture frames]; each block after its text cross-attention
    runs an audio cross-attention (one query batch per frame, 16 audio tokens each) when audio is given."""

    name = "Wan HuMo"
    configs = ("WAN21_HuMo",)
    model_classes = (comfy.ldm.wan.model.HumoWanModel,)
    naming = (
        "`block 0`..; self-attention over the video frames (appended reference frames are keys/values only; text "
        "and audio cross-attention untouched)"
    )

    def plan(self, diffusion_model) -> None:
        super().plan(diffusion_model)
        self.cross_calls += 1  # WanAttentionBlockAudio's audio cross-attention


class WanAnimateFamily(WanFamily):
    """Wan 2.2 Animate (AnimateWanModel): latent frame 0 of the model input is the character reference picture
    (WanAnimateToVideo puts it there; the pose latents are added from frame 1 on), so the video is frames 1..:
    frame 0's tokens are the row's other tokens. The face adapter's attention runs without
    ``transformer_options`` (plain, never seen by the override)."""

    name = "Wan 2.2 Animate"
    configs = ("WAN22_Animate",)
    model_classes = (comfy.ldm.wan.model_animate.AnimateWanModel,)
    naming = (
        "`block 0`..; self-attention over the video frames (latent frame 0, the reference picture, is keys/values "
        "only: `reference_frame` 0 is the first video frame; face adapter and cross-attention untouched)"
    )
    leading_reference_frames = 1


class WanSCAILFamily(WanFamily):
    """SCAIL / SCAIL-2 (SCAILWanModel): row = [reference frames; video; pose tokens]: the ``reference_latent``
    frames are concatenated in front of the input in time, the pose latents appended as tokens."""

    name = "Wan SCAIL"
    configs = ("WAN21_SCAIL", "WAN21_SCAIL2")
    model_classes = (comfy.ldm.wan.model.SCAILWanModel, comfy.ldm.wan.model.SCAIL2WanModel)
    naming = (
        "`block 0`..; self-attention over the video frames (reference frames before them and pose tokens after "
        "them are keys/values only; cross-attention untouched)"
    )

    def tokens_before_video(self, forward, frame_tokens: int) -> int:
        reference = forward.inputs.get("reference_latent")
        return 0 if reference is None else reference.shape[2] * frame_tokens


class WanDancerFamily(WanFamily):
    """WanDancer (WanDancerModel): Wan image-to-video blocks; the music encoder's self-attention and the music
    injector's cross-attention run without ``transformer_options`` (plain, never seen by the override)."""

    name = "WanDancer"
    configs = ("WAN22_WanDancer",)
    model_classes = (comfy.ldm.wan.model_wandancer.WanDancerModel,)
    naming = "`block 0`..; self-attention over every frame's tokens (music and cross-attention untouched)"


WAN_FAMILIES = (
    WanFamily(),
    WanVaceFamily(),
    WanCameraFamily(),
    WanS2VFamily(),
    WanHuMoFamily(),
    WanAnimateFamily(),
    WanSCAILFamily(),
    WanDancerFamily(),
)
