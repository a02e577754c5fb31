"""Reference-guided generation for ComfyUI: EasyRef and RefDrop nodes.

ComfyUI imports this folder as a custom node pack and calls ``comfy_entrypoint`` (V3 node API).
"""

from .comfy_patches.easyref_files import register_model_folders
from .nodes import comfy_entrypoint

register_model_folders()  # models/LLM and models/easyref, before the nodes list their files

# Node help pages (web/docs/<node id>.md), served under /extensions/<folder>/docs/ for the front end.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
