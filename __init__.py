"""Reference-guided generation for ComfyUI: EasyRef and RefDrop nodes.

ComfyUI imports this folder as a custom node pack and calls ``comfy_entrypoint`` (V3 node API).
"""

from .nodes import comfy_entrypoint

# Node help pages (web/docs/<node id>.md), served under /extensions/<folder>/docs/ for the front end.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
