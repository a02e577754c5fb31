"""Reference-guided generation for ComfyUI: EasyRef and RefDrop nodes.

ComfyUI imports this folder as a custom node pack and calls ``comfy_entrypoint`` (V3 node API).
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
