"""The CRD generator: structural output, descriptions, defaults, CEL, determinism, --check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from heterotrain_api import crdgen
from heterotrain_api.v1alpha1 import MSG_BATCH_GE_MAX, MSG_WORKERS_MIN_MAX

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_and_scope(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "heterotrainjobs.heterotrain.io"
    spec = crd["spec"]
    assert spec["group"] == "heterotrain.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "HeteroTrainJob",
        "listKind": "HeteroTrainJobList",
        "plural": "heterotrainjobs",
        "singular": "heterotrainjob",
        "shortNames": ["htj"],
        "categories": ["heterotrain"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == [
        "Phase", "Ready", "Desired", "Mix", "Restarts", "Checkpoint", "Step", "Samples/s", "Age"
    ]  # fmt: skip
    assert columns["Checkpoint"]["jsonPath"] == ".status.lastCheckpoint.step"
    assert columns["Step"]["jsonPath"] == ".status.progress.step"
    assert columns["Samples/s"]["jsonPath"] == ".status.progress.samplesPerSecond"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    # every status column points at a typed field of the schema
    for c in columns.values():
        if not c["jsonPath"].startswith(".status."):
            continue
        node = schema
        for part in c["jsonPath"].split(".")[1:]:
            node = node["properties"][part]
        assert node["type"] == c["type"], c


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    assert crdgen.structural_errors(schema) == []
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "$defs", "title:", "allOf", "oneOf", "nullable", "uniqueItems", "const:"):
        assert forbidden not in text, forbidden
    for path, node in walk(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if node.get("type") == "object" and path != ".metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


def test_structural_checker_catches_violations() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "b": {"type": "object"},
            "c": {"type": "array"},
            "d": {"type": "string", "title": "D"},
            "e": {
                "type": "array",
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
            },
        },
    }
    errors = "\n".join(crdgen.structural_errors(bad))
    for needle in (
        ".a: anyOf",
        ".a: no type",
        ".b: object without properties",
        ".c: array without items",
        ".d: keyword 'title'",
        ".e: list-map key 'k' must be required",
    ):
        assert needle in errors


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    """kubectl explain shows these: every named field, and every object in a list, is described."""
    missing = []
    for part in ("spec", "status"):
        for path, node in walk(schema["properties"][part], f".{part}"):
            element = path.endswith(("[]", "{}"))
            if (not element or node.get("type") == "object") and not node.get("description"):
                missing.append(path)
    assert missing == []


def test_defaults_are_in_the_schema(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["checkpoint"]["default"] == {}
    assert spec["faultTolerance"]["default"] == {}
    assert spec["rebalance"]["default"] == {}
    ck = spec["checkpoint"]["properties"]
    assert (ck["path"]["default"], ck["keep"]["default"], ck["async"]["default"]) == ("/checkpoints", 3, True)
    ft = spec["faultTolerance"]["properties"]
    assert (
        ft["maxRestarts"]["default"],
        ft["heartbeatTimeoutSeconds"]["default"],
        ft["onWorkerFailure"]["default"],
    ) == (10, 15, "Replace")
    rb = spec["rebalance"]["properties"]
    assert (rb["policy"]["default"], rb["minIntervalSeconds"]["default"]) == ("Throughput", 30)
    assert spec["accelerators"]["items"]["properties"]["perWorker"]["default"] == 1
    assert (spec["placement"]["default"], spec["priority"]["default"], spec["suspend"]["default"]) == (
        "Pack",
        0,
        False,
    )
    # nothing optional-without-default gets a null default, and status carries no defaults at all
    for path, node in walk(schema):
        if "default" in node:
            assert node["default"] is not None, path
            assert not path.startswith(".status"), path


def test_bounds_and_patterns(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    props = spec["properties"]
    assert sorted(spec["required"]) == ["accelerators", "command", "globalBatchSize", "image", "workers"]
    assert props["image"]["minLength"] == 1
    assert props["command"]["minItems"] == 1
    w = props["workers"]["properties"]
    assert (w["min"]["minimum"], w["min"]["maximum"], w["max"]["minimum"], w["max"]["maximum"]) == (
        1,
        10000,
        1,
        10000,
    )
    acc = props["accelerators"]
    assert (acc["minItems"], acc["maxItems"]) == (1, 16)
    assert acc["x-kubernetes-list-type"] == "map" and acc["x-kubernetes-list-map-keys"] == ["type"]
    item = acc["items"]["properties"]
    assert item["type"]["maxLength"] == 63 and item["type"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert item["resourceName"]["pattern"] == (
        "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
    )
    assert (
        item["relativeThroughput"]["minimum"] == 0 and item["relativeThroughput"]["exclusiveMinimum"] is True
    )
    assert item["backend"]["enum"] == ["nccl", "hccl", "rccl", "gloo"]
    assert props["checkpoint"]["properties"]["path"]["pattern"] == "^/"
    assert props["checkpoint"]["properties"]["volume"] == {
        "description": props["checkpoint"]["properties"]["volume"]["description"],
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert props["env"]["items"]["properties"]["valueFrom"]["x-kubernetes-preserve-unknown-fields"] is True
    quantity = props["resources"]["properties"]["requests"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and "type" not in quantity
    hb = props["faultTolerance"]["properties"]["heartbeatTimeoutSeconds"]
    assert (hb["minimum"], hb["maximum"]) == (5, 600)
    keep = props["checkpoint"]["properties"]["keep"]
    assert (keep["minimum"], keep["maximum"]) == (1, 100)
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == [
        "type"
    ]


def test_cel_rules(schema: dict[str, Any]) -> None:
    root = schema["x-kubernetes-validations"]
    assert root == [
        {
            "message": root[0]["message"],
            "reason": "FieldValueInvalid",
            "rule": "size(self.metadata.name) <= 50",
        }
    ]
    assert "metadata.name" in root[0]["message"]
    spec = schema["properties"]["spec"]
    rules = {r["rule"]: r for r in spec["x-kubernetes-validations"]}
    assert rules["self.globalBatchSize >= self.workers.max"]["message"] == MSG_BATCH_GE_MAX
    assert rules["self.globalBatchSize >= self.workers.max"]["fieldPath"] == ".globalBatchSize"
    (workers_rule,) = spec["properties"]["workers"]["x-kubernetes-validations"]
    assert workers_rule == {
        "fieldPath": ".min",
        "message": MSG_WORKERS_MIN_MAX,
        "reason": "FieldValueInvalid",
        "rule": "self.min <= self.max",
    }
    # every rule's message names a field path
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert "spec." in rule["message"] or "metadata." in rule["message"], (path, rule)
            assert rule["reason"] == "FieldValueInvalid"


def test_lists_and_strings_under_cel_rules_are_bounded(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    for name in ("accelerators", "command", "args", "env", "tolerations"):
        assert "maxItems" in spec[name], name


def test_output_is_deterministic() -> None:
    assert crdgen.render() == crdgen.render()
    text = crdgen.render()
    assert text.startswith("# Code generated")
    assert yaml.safe_load(text) == crdgen.crd()


def test_checked_in_files_are_up_to_date_and_identical() -> None:
    texts = [(REPO / t).read_text(encoding="utf-8") for t in crdgen.TARGETS]
    assert texts[0] == texts[1]
    assert texts[0] == crdgen.render(), "run `python -m heterotrain_api.crdgen`"
    assert crdgen.check(REPO) == []


def run_crdgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heterotrain_api.crdgen", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'runtime'}", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    result = run_crdgen("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "+++ crds/heterotrain.io_heterotrainjobs.yaml (generated)" in result.stdout

    result = run_crdgen("--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for rel in crdgen.TARGETS:
        assert (tmp_path / rel).read_text(encoding="utf-8") == crdgen.render()
    result = run_crdgen("--check", "--root", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr

    # a hand edit of either copy is detected, with a diff naming the file
    for rel in crdgen.TARGETS:
        work = tmp_path / "edit"
        shutil.copytree(tmp_path, work, ignore=shutil.ignore_patterns("edit"))
        target = work / rel
        target.write_text(
            target.read_text(encoding="utf-8").replace("maxItems: 16", "maxItems: 17"), encoding="utf-8"
        )
        result = run_crdgen("--check", "--root", str(work))
        assert result.returncode == 1
        assert str(rel) in result.stdout
        assert (
            "-                maxItems: 17" in result.stdout
            and "+                maxItems: 16" in result.stdout
        )
        assert "out of date" in result.stderr
        shutil.rmtree(work)


def test_cli_against_the_repository() -> None:
    result = run_crdgen("--check")
    assert result.returncode == 0, result.stdout + result.stderr
