"""Every node the pack registers (whoever added it) declares a description, a tooltip on every input and output,
and a unique id; ComfyUI's own schema check accepts it."""

import asyncio

import pytest
import refguide


def registered_nodes():
    extension = asyncio.run(refguide.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


NODES = registered_nodes()


def test_the_pack_registers_its_nodes_once():
    ids = [node.define_schema().node_id for node in NODES]
    assert len(ids) == len(set(ids)) and len(ids) >= 9
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
