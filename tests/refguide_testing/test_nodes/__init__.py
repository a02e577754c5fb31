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


class RefGuideTestImageOnlyCheckpointLoader:
    """Stand-in for ImageOnlyCheckpointLoader (SVD): tiny SVD-layout MODEL, CLIP_VISION and VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "svd_xt_1_1.safetensors"})}}

    RETURN_TYPES = ("MODEL", "CLIP_VISION", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name):
        return (tiny_models.tiny_unet("svd_light"), tiny_models.tiny_clip_vision(), tiny_models.tiny_vae())


NODE_CLASS_MAPPINGS = {
    "RefGuideTestCheckpointLoader": RefGuideTestCheckpointLoader,
    "RefGuideTestImageOnlyCheckpointLoader": RefGuideTestImageOnlyCheckpointLoader,
}


class RefGuideTestControlNetLoader:
    """Stand-in for ControlNetLoader: a real tiny comfy.controlnet.ControlNet for the tiny SDXL ("sdxl_light") layout."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": ("STRING", {"default": "controlnet-canny-sdxl-1.0.safetensors"})}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, control_net_name):
        from refguide_testing import tiny_easyref

        return (tiny_easyref.tiny_controlnet("sdxl_light"),)


NODE_CLASS_MAPPINGS["RefGuideTestControlNetLoader"] = RefGuideTestControlNetLoader


def _wan_variant(unet_name: str) -> str:
    lowered = unet_name.lower()
    if "ti2v" in lowered or "5b" in lowered:
        return "ti2v_5b"
    if "i2v" in lowered:
        return "i2v_22" if "2.2" in lowered or "2_2" in lowered else "i2v"
    return "t2v"


class RefGuideTestUNETLoader:
    """Stand-in for UNETLoader: a tiny real diffusion model of the family the file name names.

    Wan files (``wan...``): ComfyUI's real WanModel at toy size, the variant the name says (t2v, i2v, Wan 2.2 14B
    i2v experts, 5B TI2V); Wan 2.2's high- and low-noise experts get different weights, as the two real files
    have. Anything else: a tiny real Flux diffusion model (one double-stream block).
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": ("STRING", {"default": "flux1-dev.safetensors"}),
                "weight_dtype": ("STRING", {"default": "default"}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, unet_name, weight_dtype):
        if "wan" in unet_name.lower():
            from refguide_testing import tiny_wan

            return (tiny_wan.tiny_wan(_wan_variant(unet_name), seed=1 if "low_noise" in unet_name else 0),)
        from refguide_testing import tiny_dits

        return (tiny_dits.tiny_dit("flux_light"),)


class RefGuideTestDualCLIPLoader:
    """Stand-in for DualCLIPLoader (Flux: CLIP-L + T5): a tiny real CLIP whose outputs fit the tiny Flux."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name1": ("STRING", {"default": "clip_l.safetensors"}),
                "clip_name2": ("STRING", {"default": "t5xxl_fp16.safetensors"}),
                "type": ("STRING", {"default": "flux"}),
            },
            "optional": {"device": ("STRING", {"default": "default"})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name1, clip_name2, type, device="default"):
        from refguide_testing import tiny_dits

        return (tiny_models.tiny_clip(context_dim=tiny_dits.TINY_FLUX["context_in_dim"]),)


class RefGuideTestCLIPLoader:
    """Stand-in for CLIPLoader (umt5-xxl for Wan): a real tiny comfy.sd.CLIP whose width fits the tiny Wan."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": ("STRING", {"default": "umt5_xxl_fp8_e4m3fn_scaled.safetensors"}),
                "type": ("STRING", {"default": "wan"}),
            },
            "optional": {"device": ("STRING", {"default": "default"})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name, type, device="default"):
        from refguide_testing import tiny_wan

        return (tiny_wan.tiny_wan_text_encoder(),)


class RefGuideTestVAELoader:
    """Stand-in for VAELoader: ComfyUI's real Wan 2.1 VAE class at toy width for Wan files (``wan...``), else a
    tiny real AutoencoderKL with 16 latent channels (Flux ae.safetensors)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": ("STRING", {"default": "ae.safetensors"})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, vae_name):
        if "wan" in vae_name.lower():
            from refguide_testing import tiny_wan

            return (tiny_wan.tiny_wan_vae(),)
        from refguide_testing import tiny_dits

        return (tiny_dits.tiny_flux_vae(),)


NODE_CLASS_MAPPINGS["RefGuideTestUNETLoader"] = RefGuideTestUNETLoader
NODE_CLASS_MAPPINGS["RefGuideTestDualCLIPLoader"] = RefGuideTestDualCLIPLoader
NODE_CLASS_MAPPINGS["RefGuideTestCLIPLoader"] = RefGuideTestCLIPLoader
NODE_CLASS_MAPPINGS["RefGuideTestVAELoader"] = RefGuideTestVAELoader
