"""Diffusion-transformer families: which model classes, their block names, and which attention call is which.

One module per model family (``flux``, ``qwen_image``, ``lumina``, ``sd3``, ``cosmos``, ``wan``, ...), each a small
declarative :class:`~.base.DiTFamily` entry: the ``comfy.supported_models`` configurations and diffusion-model
classes it covers, its block labels (what ``exclude_blocks`` accepts) and its call order (which attention call
of a forward is which block's self-attention, and where that call's image tokens are). :data:`FAMILIES` lists
them; :func:`dit_family` finds and binds the entry for one model. Adding a family = one entry here + its tests
(``tests/refguide_testing/tiny_dits.py`` and the family-parametrized host tests); ``comfy_patches/coverage.py``
then lists its configurations as supported.
"""

from __future__ import annotations

from .anima import AnimaFamily
from .aura import AuraFlowFamily
from .base import IMAGE_LAST, IMAGE_ONLY, NO_IMAGE, TEXT_THEN_IMAGE, CallSite, DiTFamily, unexpected_call
from .chroma_radiance import ChromaRadianceFamily
from .cogvideo import CogVideoXFamily
from .cosmos import CosmosPredict2Family
from .cosmos_video import Cosmos1Family, CosmosPredict2VideoFamily
from .flux import ChromaFamily, FluxFamily
from .flux2 import Flux2Family
from .hidream import HiDreamFamily
from .hunyuan_image import HunyuanImageFamily
from .hunyuan_video import HunyuanVideoFamily
from .ideogram4 import Ideogram4Family
from .joyimage import JoyImageFamily
from .kandinsky import Kandinsky5ImageFamily
from .kandinsky_video import Kandinsky5VideoFamily
from .krea2 import Krea2Family
from .lens import LensFamily
from .longcat_image import LongCatImageFamily
from .ltxv import LTXVFamily
from .lumina import LuminaFamily
from .mage_flow import MageFlowFamily
from .mochi import MochiFamily
from .omnigen import BooguFamily, OmniGen2Family
from .pixeldit import PixelDiTFamily
from .qwen_image import QwenImageFamily
from .sd3 import SD3Family
from .wan import WAN_FAMILIES
from .zimage_pixel import ZImagePixelSpaceFamily

FAMILIES: tuple[DiTFamily, ...] = (
    FluxFamily(),
    ChromaFamily(),
    QwenImageFamily(),
    LuminaFamily(),
    SD3Family(),
    CosmosPredict2Family(),
    *WAN_FAMILIES,  # Wan 2.x and its variants (VACE, Camera, S2V, HuMo, Animate, SCAIL, WanDancer)
    HunyuanVideoFamily(),
    Kandinsky5VideoFamily(),
    CogVideoXFamily(),
    CosmosPredict2VideoFamily(),
    Cosmos1Family(),
    MochiFamily(),
    LTXVFamily(),
    Flux2Family(),
    LongCatImageFamily(),
    ChromaRadianceFamily(),
    ZImagePixelSpaceFamily(),
    MageFlowFamily(),
    AnimaFamily(),
    AuraFlowFamily(),
    OmniGen2Family(),
    BooguFamily(),
    PixelDiTFamily(),
    HiDreamFamily(),
    HunyuanImageFamily(),
    Kandinsky5ImageFamily(),
    LensFamily(),
    JoyImageFamily(),
    Krea2Family(),
    Ideogram4Family(),
)

__all__ = [
    "FAMILIES", "IMAGE_LAST", "IMAGE_ONLY", "NO_IMAGE", "TEXT_THEN_IMAGE", "CallSite", "DiTFamily",
    "config_names", "dit_family", "unexpected_call",
]  # fmt: skip


def _diffusion_model(model_patcher):
    return getattr(model_patcher.model, "diffusion_model", None)


def config_names(model_patcher) -> tuple[str, ...]:
    """The class names of the model's ``comfy.supported_models`` configuration and its bases, most specific first."""
    config = getattr(model_patcher.model, "model_config", None)
    return tuple(cls.__name__ for cls in type(config).__mro__) if config is not None else ()


def dit_family(model_patcher) -> DiTFamily | None:
    """The family of a ModelPatcher's diffusion transformer, bound to this model's layout; None if unsupported."""
    diffusion_model = _diffusion_model(model_patcher)
    for name in config_names(model_patcher):  # the most specific configuration an entry names decides
        for family in FAMILIES:
            if name in family.configs:
                return family.bind(diffusion_model) if type(diffusion_model) in family.model_classes else None
    return None
