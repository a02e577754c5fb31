"""A small builder for ComfyUI front-end ("UI" format, version 0.4) workflows, used by scripts/build_workflows.py."""

from __future__ import annotations

SDXL_BASE = {
    "name": "sd_xl_base_1.0.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    "directory": "checkpoints",
}
SVD_XT = {
    "name": "svd_xt_1_1.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt-1-1/resolve/main/svd_xt_1_1.safetensors",
    "directory": "checkpoints",
}

# Output sockets of the node types the workflows use: (name, type). Add the types a new workflow uses.
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "ImageOnlyCheckpointLoader": [("MODEL", "MODEL"), ("CLIP_VISION", "CLIP_VISION"), ("VAE", "VAE")],
    "ApplyRefDrop": [("MODEL", "MODEL")],
    "ApplyRefDropImage": [("MODEL", "MODEL")],
    "SVDTemporalRefDrop": [("MODEL", "MODEL")],
    "RefDropPromptBatch": [("CONDITIONING", "CONDITIONING")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "SaveAnimatedWEBP": [],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "ImageScale": [("IMAGE", "IMAGE")],
    "ImageFromBatch": [("IMAGE", "IMAGE")],
    "SVD_img2vid_Conditioning": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
    "VideoLinearCFGGuidance": [("MODEL", "MODEL")],
    "ImageBatch": [("IMAGE", "IMAGE")],
    "ImageStitch": [("IMAGE", "IMAGE")],
    "MarkdownNote": [],
    "LoadEasyRefMLLM": [("easyref", "EASYREF_MODEL")],
    "EasyRefReferenceGroup": [("references", "EASYREF_REFERENCES")],
    "EncodeReferenceGroup": [("embeds", "EASYREF_EMBEDS")],
    "ApplyEasyRef": [("MODEL", "MODEL")],
    "ControlNetLoader": [("CONTROL_NET", "CONTROL_NET")],
    "ControlNetApplyAdvanced": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "Canny": [("IMAGE", "IMAGE")],
}


class Workflow:
    """A small builder for UI-format graphs: nodes with sockets, widget values and links."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, node_type, pos, widgets=(), inputs=None, size=(320, 160), title=None, models=None) -> int:
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id,
            "type": node_type,
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": node_id - 1,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": name, "type": kind, "links": [], "slot_index": slot}
                for slot, (name, kind) in enumerate(OUTPUTS[node_type])
            ],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = models
        self.nodes.append(node)
        for name, (source, slot) in (inputs or {}).items():
            self.connect(source, slot, node_id, name)
        return node_id

    def connect(self, source_id, source_slot, target_id, input_name):
        source = self.nodes[source_id - 1]
        target = self.nodes[target_id - 1]
        kind = source["outputs"][source_slot]["type"]
        link_id = len(self.links) + 1
        target["inputs"].append({"name": input_name, "type": kind, "link": link_id})
        source["outputs"][source_slot]["links"].append(link_id)
        self.links.append([link_id, source_id, source_slot, target_id, len(target["inputs"]) - 1, kind])

    def note(self, pos, text, size=(420, 300)):
        return self.add("MarkdownNote", pos, [text], size=size, title="Read me")

    def to_json(self) -> dict:
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }
