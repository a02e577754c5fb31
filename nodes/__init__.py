"""Node declarations (thin): one module per node family, collected into one ComfyUI extension."""

import folder_paths
from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .. import example_inputs
from . import easyref, refdrop, svd, video_dit


class ReferenceGuidanceExtension(ComfyExtension):
    """The pack's V3 extension: lists every node of every family."""

    @override
    async def on_load(self) -> None:
        # The workflows' example images, copied into the input folder when missing (never overwritten).
        example_inputs.install(folder_paths.get_input_directory())

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*refdrop.NODES, *svd.NODES, *video_dit.NODES, *easyref.NODES]


async def comfy_entrypoint() -> ReferenceGuidanceExtension:
    return ReferenceGuidanceExtension()
