"""Every node the pack registers (whoever added it) declares a description, a tooltip on every input and output,
and a unique id; ComfyUI's own schema check accepts it."""

import asyncio
import importlib
import inspect
import pkgutil

import pytest
import refguide
import refguide.nodes
from comfy_api.latest import io


def registered_nodes():
    extension = asyncio.run(refguide.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


NODES = registered_nodes()


def declared_nodes():
    """Every node class the modules of ``refguide.nodes`` define, whether or not a list names it."""
    found = []
    for info in pkgutil.iter_modules(refguide.nodes.__path__):
        module = importlib.import_module(f"{refguide.nodes.__name__}.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, io.ComfyNode) and c.__module__ == module.__name__]  # fmt: skip
    return found


def test_the_pack_registers_its_nodes_once():
    ids = [node.define_schema().node_id for node in NODES]
    assert len(ids) == len(set(ids))
    # exactly the nodes the pack's node modules declare: none forgotten in a NODES list, none listed twice
    assert sorted(ids) == sorted(node.define_schema().node_id for node in declared_nodes())
    assert {"ApplyRefDrop", "SVDTemporalRefDrop", "LoadEasyRefMLLM", "ApplyEasyRef"} <= set(ids)


@pytest.mark.parametrize("node", NODES, ids=lambda node: node.__name__)
def test_description_and_tooltips(node):
    schema = node.define_schema()
    schema.validate()  # ComfyUI's own checks (ids, duplicate input names)
    assert schema.description and len(schema.description) > 40, schema.node_id
    assert schema.display_name and schema.category
    for inp in schema.inputs:
        assert inp.tooltip, f"{schema.node_id}: input {inp.id} has no tooltip"
    for out in schema.outputs:
        assert out.tooltip, f"{schema.node_id}: output {out.display_name or out.id} has no tooltip"
