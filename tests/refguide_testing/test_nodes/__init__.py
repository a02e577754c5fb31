"""Test-only loader nodes for the live-server tests: they stand in for ComfyUI's checkpoint loaders.

They take the same inputs as the loaders they replace (the workflow's file name is accepted as text) and
return tiny randomly initialised models of the matching family, built by ``refguide_testing.tiny_models``.
"""

from refguide_testing import tiny_models


def _family(name: str) -> str:
    lowered = name.lower()
    if "xl" in lowered:
        return "sdxl_light"
    if "svd" in lowered:
        return "svd"
    return "sd15"


class RefGuideTestCheckpointLoader:
    """Stand-in for CheckpointLoaderSimple: tiny MODEL/CLIP/VAE of the family the file name suggests."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "sd_xl_base_1.0.safetensors"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name):
        family = _family(ckpt_name)
        model = tiny_models.tiny_unet(family)
        clip = tiny_models.tiny_clip(context_dim=model.model.model_config.unet_config["context_dim"])
        return (model, clip, tiny_models.tiny_vae())


NODE_CLASS_MAPPINGS = {"RefGuideTestCheckpointLoader": RefGuideTestCheckpointLoader}
