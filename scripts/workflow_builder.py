"""A small builder for ComfyUI front-end ("UI" format, version 0.4) workflows, used by scripts/build_workflows.py.

Generators only say which nodes exist and how they connect; ``Workflow.to_json`` computes everything the user sees
when the file opens: node positions (auto-layout from the graph, links left to right, nothing overlapping), node
sizes (at least what the front end needs for the node's widgets), ComfyUI groups around related nodes, the
``properties.models`` download entries of every loader (from the ``MODEL_SOURCES`` table) and the saved view (scale
and offset, clear of the front end's side bar). ``tests/e2e/test_frontend_browser.py`` checks all of it in the real
front end. New node types: add their outputs to ``OUTPUTS`` (and a group to ``GROUP_OF``, a minimum size to
``MIN_SIZE`` where the estimate is too small); new model files: add them to ``MODEL_SOURCES``.
"""

from __future__ import annotations

import re

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

EASYREF_CHECKPOINT = {
    # The file name inside the authors' repository could not be checked here, so the url is the repository page
    # (the front end's missing-models list shows the name, the folder and this link). The Qwen2-VL folder is not a
    # file and has no entry (the front end can only download files); the note and the node's validation message
    # say where to get it.
    "name": "easyref.safetensors",
    "url": "https://huggingface.co/zongzhuofan/EasyRef",
    "directory": "easyref",
}
CONTROLNET_CANNY_SDXL = {
    "name": "controlnet-canny-sdxl-1.0.safetensors",
    "url": "https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0/resolve/main/diffusion_pytorch_model.fp16.safetensors",
    "directory": "controlnet",
}

HF = "https://huggingface.co"
FLUX_FILES = [
    {"name": "flux1-dev.safetensors", "url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
     "directory": "diffusion_models"},
    {"name": "clip_l.safetensors", "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
     "directory": "text_encoders"},
    {"name": "t5xxl_fp16.safetensors",
     "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "directory": "text_encoders"},
    {"name": "ae.safetensors", "url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors",
     "directory": "vae"},
]  # fmt: skip
WAN22 = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
WAN_FILES = [
    {"name": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
     "url": f"{WAN22}/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "directory": "diffusion_models"},
    {"name": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
     "url": f"{WAN22}/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "directory": "diffusion_models"},
    {"name": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
     "url": f"{WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "directory": "diffusion_models"},
    {"name": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
     "url": f"{WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "directory": "diffusion_models"},
    {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
     "url": f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/"
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders"},
    {"name": "wan_2.1_vae.safetensors", "url": f"{WAN22}/vae/wan_2.1_vae.safetensors", "directory": "vae"},
]  # fmt: skip

ZIMAGE = f"{HF}/Comfy-Org/z_image_turbo/resolve/main/split_files"
ZIMAGE_FILES = [
    {"name": "z_image_turbo_bf16.safetensors", "url": f"{ZIMAGE}/diffusion_models/z_image_turbo_bf16.safetensors",
     "directory": "diffusion_models"},
    {"name": "qwen_3_4b.safetensors", "url": f"{ZIMAGE}/text_encoders/qwen_3_4b.safetensors",
     "directory": "text_encoders"},
    # the Flux VAE, repackaged without Flux's licence gate (same file name and folder as FLUX_FILES' ae.safetensors)
    {"name": "ae.safetensors", "url": f"{ZIMAGE}/vae/ae.safetensors", "directory": "vae"},
]  # fmt: skip
QWEN_IMAGE = f"{HF}/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
QWEN_IMAGE_FILES = [
    {"name": "qwen_image_fp8_e4m3fn.safetensors", "url": f"{QWEN_IMAGE}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
     "directory": "diffusion_models"},
    {"name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
     "url": f"{QWEN_IMAGE}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors", "directory": "text_encoders"},
    {"name": "qwen_image_vae.safetensors", "url": f"{QWEN_IMAGE}/vae/qwen_image_vae.safetensors", "directory": "vae"},
]  # fmt: skip
FLUX2 = f"{HF}/Comfy-Org/flux2-dev/resolve/main/split_files"
FLUX2_FILES = [
    {"name": "flux2_dev_fp8mixed.safetensors", "url": f"{FLUX2}/diffusion_models/flux2_dev_fp8mixed.safetensors",
     "directory": "diffusion_models"},
    {"name": "mistral_3_small_flux2_fp8.safetensors",
     "url": f"{FLUX2}/text_encoders/mistral_3_small_flux2_fp8.safetensors", "directory": "text_encoders"},
    {"name": "flux2-vae.safetensors", "url": f"{FLUX2}/vae/flux2-vae.safetensors", "directory": "vae"},
]  # fmt: skip

# Every download entry a workflow may attach, by file name (what the front end's missing-models dialog reads: name,
# url, directory). A file that several repositories ship under one name (the Flux VAE `ae.safetensors`, also
# repackaged for Z-Image) has one entry per source: a workflow picks its source with `Workflow.add(...,
# models=[entry])`, else it gets the first one.
MODEL_SOURCES: dict[str, list[dict]] = {}
for _entry in (SDXL_BASE, SVD_XT, EASYREF_CHECKPOINT, CONTROLNET_CANNY_SDXL, *FLUX_FILES, *WAN_FILES, *ZIMAGE_FILES,
               *QWEN_IMAGE_FILES, *FLUX2_FILES):  # fmt: skip
    MODEL_SOURCES.setdefault(_entry["name"], []).append(_entry)
# Every model file a workflow names in a widget, by file name: the builder attaches this entry to the node's
# `properties.models` unless the node names another of the file's MODEL_SOURCES.
MODEL_FILES = {name: entries[0] for name, entries in MODEL_SOURCES.items()}

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
    "UNETLoader": [("MODEL", "MODEL")],
    "CLIPLoader": [("CLIP", "CLIP")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "VAELoader": [("VAE", "VAE")],
    "ModelSamplingAuraFlow": [("MODEL", "MODEL")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "ConditioningZeroOut": [("CONDITIONING", "CONDITIONING")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "EmptyFlux2LatentImage": [("LATENT", "LATENT")],
    "BatchImagesNode": [("IMAGE", "IMAGE")],
    "BatchMasksNode": [("MASK", "MASK")],
    "SolidMask": [("MASK", "MASK")],
    "MaskComposite": [("MASK", "MASK")],
}

# Nodes with a growing list of inputs (ComfyUI's Autogrow: Batch Images, Batch Masks): (input, socket prefix). Connect
# them as "<input>.<prefix>0", "<input>.<prefix>1", ...; the builder adds the empty socket the front end shows after
# the last connected one, as the front end saves these nodes.
AUTOGROW = {"BatchImagesNode": ("images", "image"), "BatchMasksNode": ("masks", "mask")}


# ComfyUI group (titled box) each node type is placed in; `Workflow.add(..., group=...)` overrides it. Types not
# listed: loaders go to "Models", everything else joins the group of the node that feeds it.
GROUP_OF = {
    "CheckpointLoaderSimple": "Models",
    "ImageOnlyCheckpointLoader": "Models",
    "LoadEasyRefMLLM": "Models",
    "ControlNetLoader": "Models",
    "LoadImage": "References",
    "EasyRefReferenceGroup": "References",
    "EncodeReferenceGroup": "References",
    "LoadEasyRefEmbeds": "References",
    "ApplyEasyRef": "EasyRef",
    "ApplyRefDrop": "RefDrop",
    "RefDropPromptBatch": "RefDrop",
    "SVDTemporalRefDrop": "RefDrop",
    "CLIPTextEncode": "Prompts",
    "ControlNetApplyAdvanced": "ControlNet",
    "Canny": "ControlNet",
    "SVD_img2vid_Conditioning": "Video",
    "VideoLinearCFGGuidance": "Video",
    "EmptyLatentImage": "Sampling",
    "KSampler": "Sampling",
    "VAEDecode": "Sampling",
    "SaveImage": "Sampling",
    "SaveAnimatedWEBP": "Sampling",
    "ImageStitch": "Sampling",
    "ImageFromBatch": "Sampling",
    "ImageBatch": "Sampling",
    "ImageScale": "Sampling",
    "ModelSamplingAuraFlow": "Models",
    "BatchImagesNode": "References",
    "SolidMask": "Regions",
    "MaskComposite": "Regions",
    "BatchMasksNode": "Regions",
}

# Smallest [width, height] per node type, at least what node.computeSize() asks for in the pinned and the newest
# front end (which otherwise enlarges the node on load and breaks the layout); other types get an estimate from
# their sockets and widgets. The browser test fails, naming the type and size, when a node is too small.
MIN_SIZE = {
    "ApplyRefDrop": (340, 250),
    "ApplyRefDropImage": (340, 320),
    "TemporalRefDrop": (350, 290),  # 3 sockets (model, image, vae), 6 widgets and the seed's control
    "LoadImage": (320, 360),
    "SaveImage": (420, 420),
    "SaveAnimatedWEBP": (420, 420),
    "MarkdownNote": (420, 300),
    "RefDropPromptBatch": (420, 200),
    "CLIPTextEncode": (400, 160),
    "EncodeReferenceGroup": (400, 200),
    "ImageOnlyCheckpointLoader": (360, 100),
    "ControlNetApplyAdvanced": (320, 190),
}

TITLE_HEIGHT = 30  # LiteGraph draws a node's title above its `pos`
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
COLUMN_GAP = 70  # between node columns (room for the links)
ROW_GAP = 40  # between a node's bottom and the next node's title
GROUP_PADDING = 20
GROUP_TITLE = 44  # room for the group's title bar inside its box
GROUP_GAP = 60
VIEW = (1600, 900)  # the browser viewport the saved view is fitted to (the test and the thumbnails use it)
MIN_SCALE = 0.6
VIEW_ORIGIN = (110, 110)  # screen position of the content's top-left: right of the side bar, under the top bar
GROUP_COLORS = {
    "Models": "#3f5159",
    "References": "#335533",
    "Regions": "#2f5d50",
    "EasyRef": "#553355",
    "RefDrop": "#355e6b",
    "Prompts": "#444444",
    "ControlNet": "#6b5535",
    "Video": "#35356b",
    "Sampling": "#593930",
}


class Workflow:
    """A small builder for UI-format graphs: nodes with sockets, widget values and links.

    Positions given to ``add`` / ``note`` are ignored: ``to_json`` lays the graph out (see the module docstring).
    """

    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: dict[int, str] = {}  # node id -> group title, where `add(..., group=...)` overrides GROUP_OF

    def add(
        self, node_type, pos=None, widgets=(), inputs=None, size=(0, 0), title=None, models=None, group=None
    ) -> int:
        """Add a node; ``inputs`` maps input names to (source node id, output slot). ``size`` is a minimum (the
        front end's own minimum for the type is used when larger); ``group`` overrides ``GROUP_OF``; ``models``
        picks the ``properties.models`` entry of a file the widget values name (one of its ``MODEL_SOURCES``; the
        first when not given) and adds entries beyond them."""
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id,
            "type": node_type,
            "pos": [0, 0],
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
        named = {m["name"]: m for m in (models or [])}
        files = [v for v in node["widgets_values"] if isinstance(v, str) and v in MODEL_FILES]
        entries = [named.get(v, MODEL_FILES[v]) for v in files]
        entries += [m for m in (models or []) if m not in entries and m["name"] not in files]
        if entries:
            node["properties"]["models"] = [dict(m) for m in entries]
        self.nodes.append(node)
        if group:
            self.groups[node_id] = group
        for name, (source, slot) in (inputs or {}).items():
            self.connect(source, slot, node_id, name)
        if node_type in AUTOGROW:
            self._autogrow_slot(node)
        return node_id

    def _autogrow_slot(self, node: dict) -> None:
        """Label the connected sockets of a growing-inputs node and add the next, empty one (optional: shape 7)."""
        group, prefix = AUTOGROW[node["type"]]
        for socket in node["inputs"]:
            socket["label"] = socket["name"].split(".", 1)[1]
        count = len(node["inputs"])
        kind = node["outputs"][0]["type"]
        node["inputs"].append(
            {"label": f"{prefix}{count}", "name": f"{group}.{prefix}{count}", "shape": 7, "type": kind, "link": None}
        )

    def connect(self, source_id, source_slot, target_id, input_name):
        source = self.nodes[source_id - 1]
        target = self.nodes[target_id - 1]
        kind = source["outputs"][source_slot]["type"]
        link_id = len(self.links) + 1
        target["inputs"].append({"name": input_name, "type": kind, "link": link_id})
        source["outputs"][source_slot]["links"].append(link_id)
        self.links.append([link_id, source_id, source_slot, target_id, len(target["inputs"]) - 1, kind])

    def note(self, pos=None, text="", size=(420, 300)):
        return self.add("MarkdownNote", pos, [text], size=size, title="Read me")

    def to_json(self) -> dict:
        nodes = [dict(n, pos=list(n["pos"]), size=list(n["size"])) for n in self.nodes]
        for node in nodes:
            node["size"] = list(node_size(node))
        groups = layout(nodes, self.links, self.groups)
        return {
            "last_node_id": len(nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": groups,
            "config": {},
            "extra": {"ds": saved_view(nodes, groups)},
            "version": 0.4,
        }


# ---------------------------------------------------------------------------------------------------------------
# Sizes, groups and layout
# ---------------------------------------------------------------------------------------------------------------


def node_size(node: dict) -> tuple[int, int]:
    """At least the given size, the type's ``MIN_SIZE`` and an estimate from its sockets and widgets."""
    sockets = max(len(node["inputs"]), len(node["outputs"]))
    widgets = len(node["widgets_values"])
    if node["type"] == "KSampler" or "control_after_generate" in node["widgets_values"]:
        widgets += 1
    estimate = (280, 10 + sockets * SLOT_HEIGHT + widgets * WIDGET_HEIGHT)
    minimum = MIN_SIZE.get(node["type"], (0, 0))
    return tuple(max(a, b, c) for a, b, c in zip(node["size"], estimate, minimum, strict=True))


def bounding(node: dict) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] of a node as the front end draws it (title bar above ``pos``)."""
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - TITLE_HEIGHT, x + w, y + h)


def _group_titles(nodes, links, explicit):
    """Group title per node id: explicit, ``GROUP_OF``, loaders to "Models", else the feeding node's group."""
    by_id = {n["id"]: n for n in nodes}
    sources = {}
    for _, src, _, dst, _, _ in links:
        sources.setdefault(dst, []).append(src)
    titles = {}

    def title(node_id, seen=()):
        if node_id in titles:
            return titles[node_id]
        node_type = by_id[node_id]["type"]
        found = explicit.get(node_id) or GROUP_OF.get(node_type)
        if not found and re.search(r"Loader", node_type):
            found = "Models"
        if not found:
            feeding = [s for s in sources.get(node_id, []) if s not in seen]
            found = title(feeding[0], (*seen, node_id)) if feeding else "Sampling"
        titles[node_id] = found
        return found

    for node in nodes:
        title(node["id"])
    return titles


def _is_acyclic(edges: set[tuple[int, int]], count: int) -> bool:
    indegree = [0] * count
    for _, b in edges:
        indegree[b] += 1
    ready = [i for i in range(count) if indegree[i] == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for a, b in edges:
            if a == i:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    return seen == count


def _partition(node_ids, edges, titles):
    """Group instances (lists of node ids): the nodes of one title, split only where one box per title would make
    the group graph cyclic (e.g. SDXL sampling -> video conditioning -> video sampling)."""
    # Start from single nodes and merge same-title instances in node order while the group graph stays acyclic.
    instance = {n: i for i, n in enumerate(node_ids)}
    members = {i: [n] for i, n in enumerate(node_ids)}

    def group_edges(inst):
        return {(inst[a], inst[b]) for a, b in edges if inst[a] != inst[b]}

    def compact(inst):
        order = {g: k for k, g in enumerate(sorted(set(inst.values())))}
        return {n: order[g] for n, g in inst.items()}, len(order)

    # Merge linked nodes first, then the ones closest in the graph's stage (longest path to an output: SDXL's RefDrop
    # nodes share a box, the video's SVD Temporal RefDrop gets its own).
    depth = _depths(node_ids, {(b, a) for a, b in edges})
    same = [(a, b) for a in node_ids for b in node_ids if a < b and titles[a] == titles[b]]
    pairs = sorted(same, key=lambda p: ((p[0], p[1]) not in edges, abs(depth[p[0]] - depth[p[1]]), p))
    for a, b in pairs:
        ga, gb = instance[a], instance[b]
        if ga == gb:
            continue
        trial = {n: (ga if g == gb else g) for n, g in instance.items()}
        compacted, count = compact(trial)
        if _is_acyclic(group_edges(compacted), count):
            instance = trial
            members[ga] += members.pop(gb)
    return [sorted(m) for m in members.values()]


def _depths(ids, edges):
    """Longest-path depth of every id in a DAG given as (a, b) edges."""
    depth = {i: 0 for i in ids}
    for _ in range(len(ids)):
        changed = False
        for a, b in edges:
            if a in depth and b in depth and depth[b] < depth[a] + 1:
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    return depth


def _stack_columns(columns, sizes, order_key):
    """Place columns of items left to right, each column's items top to bottom; returns {item: (x, y)} relative to
    (0, 0) for the top-left of each item's box (title included) and the total (width, height)."""
    pos, x, height = {}, 0, 0
    for column in columns:
        items = sorted(column, key=lambda item: order_key(item, pos))
        y, width = 0, 0
        for item in items:
            w, h = sizes[item]
            pos[item] = (x, y)
            y += h + ROW_GAP
            width = max(width, w)
        height = max(height, y - ROW_GAP)
        x += width + COLUMN_GAP
    return pos, (x - COLUMN_GAP, height)


def layout(nodes: list[dict], links: list[list], explicit_groups: dict[int, str]) -> list[dict]:
    """Set every node's ``pos``; return the ComfyUI groups. Nodes sit in columns by their depth in the graph (so
    every link reads left to right), inside titled group boxes that are themselves placed in columns by the
    depth of the group graph; the notes form the first column."""
    by_id = {n["id"]: n for n in nodes}
    notes = [n["id"] for n in nodes if n["type"] in ("MarkdownNote", "Note")]
    graph_ids = [n["id"] for n in nodes if n["id"] not in notes]
    edges = {(src, dst) for _, src, _, dst, _, _ in links}
    titles = _group_titles([by_id[i] for i in graph_ids], links, explicit_groups)
    instances = _partition(graph_ids, edges, titles)
    group_of = {n: g for g, members in enumerate(instances) for n in members}

    # Lay out each group's nodes (columns by depth inside the group), then the groups.
    inner, group_size = {}, {}
    for g, members in enumerate(instances):
        inside = {(a, b) for a, b in edges if a in members and b in members}
        depth = _depths(members, inside)
        columns = [[n for n in members if depth[n] == d] for d in range(max(depth.values()) + 1)]
        sizes = {n: (by_id[n]["size"][0], by_id[n]["size"][1] + TITLE_HEIGHT) for n in members}

        def key(n, placed, inside=inside, sizes=sizes):
            ups = [placed[a][1] + sizes[a][1] / 2 for a, b in inside if b == n and a in placed]
            return (sum(ups) / len(ups) if ups else 0, n)

        pos, (w, h) = _stack_columns(columns, sizes, key)
        inner[g] = pos
        group_size[g] = (w + 2 * GROUP_PADDING, h + 2 * GROUP_PADDING + GROUP_TITLE)

    group_edges = {(group_of[a], group_of[b]) for a, b in edges if group_of[a] != group_of[b]}
    gdepth = _depths(list(range(len(instances))), group_edges)
    gcolumns = [[g for g in gdepth if gdepth[g] == d] for d in range(max(gdepth.values(), default=-1) + 1)]

    def gkey(g, placed):
        ups = [placed[a][1] + group_size[a][1] / 2 for a, b in group_edges if b == g and a in placed]
        return (sum(ups) / len(ups) if ups else 0, min(instances[g]))

    gpos, _ = _stack_columns(gcolumns, {g: (group_size[g][0], group_size[g][1]) for g in group_size}, gkey)
    # The notes go in front of everything, top to bottom.
    left = 0
    y = 0
    for n in notes:
        node = by_id[n]
        node["pos"] = [0, y + TITLE_HEIGHT]
        y += node["size"][1] + TITLE_HEIGHT + ROW_GAP
        left = max(left, node["size"][0] + GROUP_GAP)
    groups = []
    for g, members in enumerate(instances):
        gx, gy = left + gpos[g][0], gpos[g][1]
        for n in members:
            ix, iy = inner[g][n]
            by_id[n]["pos"] = [gx + GROUP_PADDING + ix, gy + GROUP_PADDING + GROUP_TITLE + iy + TITLE_HEIGHT]
        title = titles[members[0]]
        groups.append(
            {
                "title": title,
                "bounding": [gx, gy, group_size[g][0], group_size[g][1]],
                "color": GROUP_COLORS.get(title, "#444444"),
                "font_size": 24,
                "flags": {},
            }
        )
    return groups


def saved_view(nodes: list[dict], groups: list[dict]) -> dict:
    """Scale that fits the whole graph into ``VIEW`` (not below ``MIN_SCALE``: the left part stays readable), offset that puts its top-left at
    ``VIEW_ORIGIN`` on screen (right of the side bar, under the top bar)."""
    boxes = [bounding(n) for n in nodes] + [(x, y, x + w, y + h) for x, y, w, h in (g["bounding"] for g in groups)]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    fit = min((VIEW[0] - VIEW_ORIGIN[0] - 40) / (x1 - x0), (VIEW[1] - VIEW_ORIGIN[1] - 40) / (y1 - y0))
    scale = round(max(MIN_SCALE, min(1.0, fit)), 3)
    offset = [round(VIEW_ORIGIN[0] / scale - x0, 1), round(VIEW_ORIGIN[1] / scale - y0, 1)]
    return {"scale": scale, "offset": offset}
