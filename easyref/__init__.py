"""The MLLM half of EasyRef (arXiv 2412.09618): reference images + prompt -> 64 reference tokens.

Plain torch (+ transformers, imported lazily): nothing here imports ComfyUI, so the math can be
tested on its own. The ComfyUI glue lives in ``comfy_patches/easyref_glue.py``.

Modules, in the order of the steps in the README ("EasyRef", "What is computed"):
- ``prompt``: the exact token string (steps 1-2).
- ``preprocess``: the two-stage resize and pixel packing (step 3).
- ``checkpoint``: key routing, old/new transformers layout mapping, validation.
- ``encoder``: vision tower per image -> 27 prefix layers -> final layer -> projector (steps 3c-8).
- ``embeds``: the EASYREF_EMBEDS value object and its safetensors form.
"""
