"""Convert a UI-format workflow (what the ComfyUI front end saves) into an API prompt, as the front end does.

Widget values are matched to input names with the server's /object_info; loader nodes may be swapped for
test loaders that take the same inputs (the only substitution the tests make).
"""

from __future__ import annotations

import json
from pathlib import Path

FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
AUTOGROW = "COMFY_AUTOGROW_V3"  # V3 inputs that grow a socket at a time (Batch Images, Batch Masks)


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    result = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            result.append((name, info["input"][section][name]))
    return result


def ui_to_api(workflow: dict, object_info: dict, swap: dict[str, str] | None = None) -> dict:
    """Return the API prompt for a UI workflow; ``swap`` maps node types to stand-in node types."""
    swap = swap or {}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        if node_type not in object_info:
            raise KeyError(f"node type {node_type!r} (node {node['id']}) is not registered on the server")
        info = object_info[node_type]
        linked = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                linked[socket["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in _ordered_inputs(info):
            if spec[0] == AUTOGROW:  # a growing list of sockets "<name>.<prefix>0", ...: the linked ones, in order
                inputs.update({key: source for key, source in linked.items() if key.startswith(f"{name}.")})
                continue
            if name in linked:
                inputs[name] = linked[name]
                if _is_widget(spec) and values:
                    values.pop(0)  # a widget converted to an input keeps its slot in widgets_values
                continue
            if not _is_widget(spec):
                continue
            if not values:
                break
            inputs[name] = values.pop(0)
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
                if values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
        prompt[str(node["id"])] = {"class_type": swap.get(node_type, node_type), "inputs": inputs}
    return prompt


def node_types(workflow: dict) -> set[str]:
    return {node["type"] for node in workflow["nodes"]}
