"""Every model configuration of the host's comfy.supported_models is supported by a named family, refused with its
reason, or not an image/video generator; each DiT family has a tiny real instance in the tests; the README's
family table is the one rendered from the same source (``comfy_patches/coverage.py``)."""

from __future__ import annotations

import comfy.supported_models
import pytest
from refguide.comfy_patches import coverage, dit_families, model_families
from refguide_testing import host, tiny_dits, tiny_video_dits


def test_every_configuration_of_the_host_is_supported_or_refused_with_a_reason():
    table = coverage.coverage()
    hosted = [cls.__name__ for cls in comfy.supported_models.models]
    missing = [name for name in hosted if name not in table]
    assert not missing, (
        f"comfy.supported_models has configurations the pack neither supports nor refuses: {missing}. Add a family "
        "entry (comfy_patches/dit_families/) or a reason to coverage.REFUSED / NOT_GENERATORS."
    )
    stale = sorted(set(table) - set(hosted) - set(dir(comfy.supported_models)))
    assert not stale, f"coverage lists configurations the host does not have: {stale}"
    for entry in table.values():
        assert (entry.family is not None) + (entry.refused is not None) + (entry.not_a_generator is not None) == 1


def test_no_configuration_is_both_supported_and_refused():
    supported = set(coverage.dit_coverage()) | set(coverage.IMAGE_UNET_CONFIGS) | set(coverage.VIDEO_UNET_CONFIGS)
    assert not supported & (set(coverage.REFUSED) | set(coverage.NOT_GENERATORS))
    counts = {}
    for family in dit_families.FAMILIES:
        for config in family.configs:
            counts[config] = counts.get(config, 0) + 1
    assert all(count == 1 for count in counts.values()), counts


def test_every_dit_family_has_a_tiny_real_instance_in_the_tests():
    tested = {entry.family for entry in tiny_dits.ENTRIES.values()} | {
        e.family for e in tiny_video_dits.ENTRIES.values()
    }
    untested = [family.name for family in dit_families.FAMILIES if family.name not in tested]
    assert not untested, f"families without a tiny instance (tests/refguide_testing/tiny_dits.py): {untested}"


@pytest.mark.parametrize("name", list(tiny_dits.ENTRIES))
def test_each_tiny_instance_is_the_family_its_entry_names(name):
    family = model_families.model_family(tiny_dits.tiny_dit(name))
    assert family.name == tiny_dits.ENTRIES[name].family and family.kind == model_families.IMAGE_DIT


def test_the_readme_family_table_is_current():
    readme = (host.REPO / "README.md").read_text()
    start, end = "<!-- family-table:start -->", "<!-- family-table:end -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == coverage.render_table(), "README family table is stale: run `python3 scripts/family_table.py`"
