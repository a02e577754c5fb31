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


def _dit_family(file_name: str) -> str | None:
    """The tiny DiT (refguide_testing.tiny_dits) a diffusion-model, text-encoder or VAE file name belongs to."""
    lowered = file_name.lower().replace("-", "_")
    if "flux2" in lowered:  # flux2_dev_fp8mixed, flux2-vae: the light Flux 2 (1024x1024 on a CPU)
        return "flux2_light"
    if "z_image" in lowered or "zimage" in lowered:
        return "zimage"
    if "qwen_image" in lowered:
        return "qwen_image"
    return None


class RefGuideTestUNETLoader:
    """Stand-in for UNETLoader: a tiny real diffusion model of the family the file name names.

    Wan files (``wan...``): ComfyUI's real WanModel at toy size, the variant the name says (t2v, i2v, Wan 2.2 14B
    i2v experts, 5B TI2V); Wan 2.2's high- and low-noise experts get different weights, as the two real files
    have. Z-Image (``z_image...``) and Qwen-Image (``qwen_image...``) files: the tiny real Z-Image / Qwen-Image
    transformer; Flux 2 files (``flux2...``): the light Flux 2 (Flux 2's parameters, one double-stream block).
    Anything else: a tiny real Flux diffusion model (one double-stream block).
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

        return (tiny_dits.tiny_dit(_dit_family(unet_name) or "flux_light"),)


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
    """Stand-in for CLIPLoader: a real tiny comfy.sd.CLIP whose width fits the tiny model of the `type`: "lumina2"
    (Qwen3-4B for Z-Image) the tiny Z-Image, "qwen_image" (Qwen2.5-VL 7B) the tiny Qwen-Image, "flux2" (Mistral 3
    Small / Qwen 3) the tiny Flux 2, else (umt5-xxl for Wan) the tiny Wan."""

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
        from refguide_testing import tiny_dits, tiny_wan

        if type == "lumina2":
            return (tiny_models.tiny_clip(context_dim=tiny_dits.TINY_ZIMAGE["cap_feat_dim"]),)
        if type == "qwen_image":
            return (tiny_models.tiny_clip(context_dim=tiny_dits.TINY_QWEN_IMAGE["joint_attention_dim"]),)
        if type == "flux2":  # Mistral 3 Small (Flux 2 dev) / Qwen 3 (Klein): the tiny Flux 2's text width
            return (tiny_models.tiny_clip(context_dim=tiny_dits.TINY_FLUX2["context_in_dim"]),)
        return (tiny_wan.tiny_wan_text_encoder(),)


class RefGuideTestVAELoader:
    """Stand-in for VAELoader: ComfyUI's real Wan 2.1 VAE class at toy width for Wan and Qwen-Image files
    (``wan...``, ``qwen_image...``: Qwen-Image's VAE is a Wan 2.1 VAE), else a tiny real AutoencoderKL with 16
    latent channels (the Flux VAE ae.safetensors, which Z-Image uses too); Flux 2 files (``flux2-vae``): the
    Flux 2 shaped VAE (128 latent channels, 16x down-sampling)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": ("STRING", {"default": "ae.safetensors"})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, vae_name):
        if "wan" in vae_name.lower() or _dit_family(vae_name) == "qwen_image":
            from refguide_testing import tiny_wan

            return (tiny_wan.tiny_wan_vae(),)
        from refguide_testing import tiny_dits

        if _dit_family(vae_name) == "flux2_light":  # flux2-vae: 128 latent channels, 16x down-sampling
            return (tiny_dits.tiny_flux2_vae(),)

        return (tiny_dits.tiny_flux_vae(),)


NODE_CLASS_MAPPINGS["RefGuideTestUNETLoader"] = RefGuideTestUNETLoader
NODE_CLASS_MAPPINGS["RefGuideTestDualCLIPLoader"] = RefGuideTestDualCLIPLoader
NODE_CLASS_MAPPINGS["RefGuideTestCLIPLoader"] = RefGuideTestCLIPLoader
NODE_CLASS_MAPPINGS["RefGuideTestVAELoader"] = RefGuideTestVAELoader


# ---------------------------------------------------------------------------------------------
# Probes for the reliability tests: they read the server's state, they change nothing
# ---------------------------------------------------------------------------------------------

PACK_FOLDER = "comfyui-refguide"  # the folder name the test server installs the pack under (server.PACK_LINK_NAME)
AFTER = {f"after_{i}": ("*", {"tooltip": "links only order this probe after other nodes"}) for i in (1, 2, 3, 4)}


def _module_of(obj) -> str:
    import types

    try:
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", "")
        else:
            module = type(obj).__module__
    except Exception:  # objects whose attribute access fails (proxies, half-torn-down objects)
        return ""
    return module if isinstance(module, str) else ""


def _is_pack(obj) -> bool:
    module = _module_of(obj)
    return PACK_FOLDER in module or module.startswith("refguide.")


def pack_objects(root, path: str) -> list[str]:
    """Where in ``root`` (dicts, sequences, partials, bound methods) an object, function or key of the pack sits."""
    import functools
    import types

    import torch

    found, seen, stack = [], set(), [(root, path, 0)]
    while stack:
        obj, where, depth = stack.pop()
        if id(obj) in seen or depth > 16 or isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type(None))):
            if isinstance(obj, str) and "refguide" in obj:
                found.append(f"{where}: {obj!r}")
            continue
        seen.add(id(obj))
        if _is_pack(obj):
            found.append(f"{where}: {type(obj).__name__}")
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                if _is_pack(key) or (isinstance(key, str) and "refguide" in key):
                    found.append(f"{where}[{key!r}]")
                stack.append((value, f"{where}[{key!r}]", depth + 1))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((value, f"{where}[{i}]", depth + 1) for i, value in enumerate(obj))
        elif isinstance(obj, functools.partial):
            stack.extend([(obj.func, f"{where}.func", depth + 1), (obj.args, f"{where}.args", depth + 1)])
            stack.append((obj.keywords, f"{where}.keywords", depth + 1))
        elif isinstance(obj, types.MethodType):
            stack.extend(
                [(obj.__func__, f"{where}.__func__", depth + 1), (obj.__self__, f"{where}.__self__", depth + 1)]
            )
    return found


def model_report(patcher) -> dict:
    """What the pack could have left on a ModelPatcher and on its torch modules."""
    patcher_state = {k: v for k, v in vars(patcher).items() if k != "model"}
    found = pack_objects(patcher_state, "patcher")
    hooks = 0
    for name, module in patcher.model.named_modules():
        state = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        found += pack_objects(state, f"module {name or 'root'}")
        hooks += len(module._forward_hooks) + len(module._forward_pre_hooks)
    options = patcher.model_options.get("transformer_options", {})
    return {
        "weight_patches": len(patcher.patches),
        "object_patches": sorted(patcher.object_patches),
        "additional_models": sorted(patcher.additional_models),
        "transformer_options": sorted(k for k, v in options.items() if v),
        "pack_objects": found,
        "module_hooks": hooks,
    }


def _loaded_models() -> list[dict]:
    import comfy.model_management as mm

    out = []
    for loaded in mm.current_loaded_models:
        patcher = loaded.model
        if patcher is None:
            continue
        out.append(
            {
                "model": type(patcher.model).__name__,
                "module": _module_of(patcher.model),
                "device": str(loaded.device),
                "compute_device": loaded.device == mm.get_torch_device(),
                "loaded_bytes": int(patcher.loaded_size()),
            }
        )
    return out


class RefGuideTestInspectModel:
    """Test probe: reports what the pack left on a MODEL (see model_report); re-runs every time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}, "optional": dict(AFTER)}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "inspect"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def inspect(self, model, **_after):
        import json

        return {"ui": {"refguide_model": [json.dumps(model_report(model))]}}


class RefGuideTestProcessState:
    """Test probe: ComfyUI's loaded models (before and after ComfyUI asks the compute device for all its memory,
    when ``request_memory``), the live objects of the pack and of transformers' models after gc, and the version of
    transformers the server imports."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"request_memory": ("BOOLEAN", {"default": False})}, "optional": dict(AFTER)}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def report(self, request_memory, **_after):
        import collections
        import gc
        import json

        import comfy.model_management as mm
        import torch

        gc.collect()
        before = _loaded_models()
        if request_memory:
            mm.free_memory(1e30, mm.get_torch_device())  # what ComfyUI does when a model needs the whole device
        after = _loaded_models()
        gc.collect()
        live = collections.Counter(
            type(obj).__name__
            for obj in gc.get_objects()
            if _is_pack(obj) or (isinstance(obj, torch.nn.Module) and _module_of(obj).startswith("transformers."))
        )
        import transformers

        report = {"loaded_before": before, "loaded_after": after, "live_objects": dict(live)}
        report["transformers"] = transformers.__version__  # the release this server's Python imports
        return {"ui": {"refguide_state": [json.dumps(report)]}}


class RefGuideTestEmptyImage:
    """Test source of a bad input: an IMAGE batch with no images (what an upstream filter node can produce)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        import torch

        return (torch.zeros((0, 64, 64, 3)),)


class RefGuideTestPacedModel:
    """A clone of the model whose every model call first waits ``seconds_per_call``: sampling with tiny stand-ins
    then lasts long enough for a test to interrupt it at a known step (outputs are unchanged)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seconds_per_call": ("FLOAT", {"default": 0.2, "min": 0.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "pace"
    CATEGORY = "testing"

    def pace(self, model, seconds_per_call):
        import time

        import comfy.patcher_extension

        def paced(executor, *args, **kwargs):
            time.sleep(seconds_per_call)
            return executor(*args, **kwargs)

        paced_model = model.clone()
        paced_model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "refguide_test_pace", paced)
        return (paced_model,)


NODE_CLASS_MAPPINGS["RefGuideTestPacedModel"] = RefGuideTestPacedModel
NODE_CLASS_MAPPINGS["RefGuideTestInspectModel"] = RefGuideTestInspectModel
NODE_CLASS_MAPPINGS["RefGuideTestProcessState"] = RefGuideTestProcessState
NODE_CLASS_MAPPINGS["RefGuideTestEmptyImage"] = RefGuideTestEmptyImage
