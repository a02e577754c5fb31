"""Node declarations (thin): one module per node family, collected into one ComfyUI extension."""

from comfy_api.latest import ComfyExtension, io

from . import easyref, refdrop, svd, video


class ReferenceGuidanceExtension(ComfyExtension):
    """The pack's V3 extension: lists every node of every family."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*refdrop.NODES, *svd.NODES, *video.NODES, *easyref.NODES]


async def comfy_entrypoint() -> ReferenceGuidanceExtension:
    return ReferenceGuidanceExtension()
