"""ComfyUI glue: replace-patch objects and model inspection. Math lives in ``attention_patches``."""
