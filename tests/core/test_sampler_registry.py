"""The registry as a whole: every sampler has its common tests, names and labels are unique,
and a diffusers scheduler class maps to at most one sampler."""

from __future__ import annotations

import re
from pathlib import Path

from diffusion_studio.core.samplers import REGISTRY, spec_for_diffusers_class

COMMON_SUBCLASS = re.compile(r'class \w+\(SamplerCommonTests\):\s+name = "([\w-]+)"')


def test_every_registered_sampler_runs_the_common_tests():
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    tested = set(COMMON_SUBCLASS.findall(sources))
    assert set(REGISTRY) <= tested, f"no SamplerCommonTests subclass for {set(REGISTRY) - tested}"


def test_names_labels_and_diffusers_classes_are_unique():
    specs = list(REGISTRY.values())
    assert len({s.label for s in specs}) == len(specs)
    classes = [c for s in specs for c in s.diffusers_classes]
    assert len(classes) == len(set(classes))
    for spec in specs:
        for class_name in spec.diffusers_classes:
            assert spec_for_diffusers_class(class_name) is spec
    assert spec_for_diffusers_class("NoSuchScheduler") is None
