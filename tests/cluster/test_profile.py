"""Cluster profiles: the default one is valid and heterogeneous; broken ones are refused by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from heterotrain_contract import KNOWN_ACCELERATORS
from heterotrain_e2e.cluster import profile as p
from heterotrain_e2e.emulation import ANNOTATION_EMULATED_SPEED

REPO = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: heterotrain.io/cluster-profile/v1\nkind: ClusterProfile\nname: t\npools:\n"


def refused(text: str) -> str:
    with pytest.raises(p.ProfileError) as e:
        p.parse(HEAD + text, "bad.yaml")
    return str(e.value)


def test_default_profile_has_five_types_and_process_nodes():
    prof = p.load(REPO / "e2e" / "profiles" / "default.yaml")
    assert {"nvidia-h100", "nvidia-a100", "nvidia-h20", "huawei-ascend-910b", "amd-mi300x"} <= set(
        prof.types()
    )
    nodes = p.node_manifests(prof)
    procs = [n for n in nodes if n["metadata"]["labels"][p.RUNNER_LABEL] == "process"]
    assert len(procs) >= 3
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes)
    for n in nodes:
        labels = n["metadata"]["labels"]
        t = labels[p.ACCELERATOR_LABEL]
        res = KNOWN_ACCELERATORS[t].resource_name
        assert n["status"]["capacity"][res] == n["status"]["allocatable"][res]
        assert int(n["status"]["capacity"][res]) > 0
        if t.startswith("nvidia"):
            assert "nvidia.com/gpu.product" in labels
    ascend = next(n for n in nodes if n["metadata"]["labels"][p.ACCELERATOR_LABEL] == "huawei-ascend-910b")
    assert "huawei.com/Ascend910" in ascend["status"]["capacity"]
    kwok = next(n for n in nodes if n["metadata"]["labels"][p.RUNNER_LABEL] == "kwok")
    assert kwok["metadata"]["annotations"][p.KWOK_ANNOTATION] == "fake"
    assert any(t["key"] == p.KWOK_TAINT_KEY for t in kwok["spec"]["taints"])
    speeds = {n["metadata"]["annotations"].get(ANNOTATION_EMULATED_SPEED) for n in procs}
    assert len(speeds) >= 2, "process pools emulate different speeds"


def test_unknown_field_is_refused_with_its_line():
    msg = refused("  - name: a\n    type: nvidia-a100\n    count: 1\n    colour: blue\n")
    assert "bad.yaml:8: pools[0].colour" in msg and "Extra inputs" in msg


def test_pool_without_type_is_refused_with_its_line():
    msg = refused("  - name: a\n    count: 1\n")
    assert "bad.yaml:5: pools[0].type: Field required" in msg


def test_negative_count_is_refused_with_its_line():
    msg = refused(
        "  - {name: a, type: nvidia-a100, count: 1}\n  - name: b\n    type: amd-mi300x\n    count: -3\n"
    )
    assert "bad.yaml:8: pools[1].count" in msg and "greater than or equal to 0" in msg


def test_unknown_type_needs_resource_name_and_duplicate_pools_are_refused():
    assert "resourceName" in refused("  - {name: a, type: acme-x1, count: 1}\n")
    assert (
        p.parse(HEAD + "  - {name: a, type: acme-x1, count: 1, resourceName: acme.com/npu}\n")
        .pools[0]
        .resource_name
    )
    msg = refused("  - {name: a, type: nvidia-a100, count: 1}\n  - {name: a, type: nvidia-h100, count: 1}\n")
    assert "bad.yaml:6: pools[1].name: duplicate pool name" in msg


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(p.ProfileError, match="not valid YAML"):
        p.parse("pools: [\n", "x.yaml")
    with pytest.raises(p.ProfileError, match=r"x\.yaml:1"):
        p.parse("- 1\n", "x.yaml")
