"""The invalid corpus (tests/api/invalid) and the examples, against the pydantic models.

The same files are checked against the real API server by
e2e/tests/test_api_server_validation.py; here every manifest must be refused
by heterotrain_api too, with an error line containing its ``# model:`` text.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from api_corpus import INVALID_DIR, InvalidManifest, corpus, examples

from heterotrain_api import InvalidJobError, parse_job, resolve_accelerators

CORPUS = corpus()


def test_corpus_size_and_format() -> None:
    assert len(CORPUS) >= 30
    assert len(list(INVALID_DIR.iterdir())) == len(CORPUS), "only *.yaml manifests in tests/api/invalid"
    for m in CORPUS:
        assert m.why, m.path
        assert m.expect, m.path
        assert m.model, m.path
        assert m.manifest["apiVersion"] == "heterotrain.io/v1alpha1", m.path
        assert m.manifest["kind"] == "HeteroTrainJob", m.path
        # the API server's message must name the field
        assert any(("spec." in e or "metadata." in e) for e in m.expect), m.path


def test_corpus_names_are_unique() -> None:
    names = [m.manifest["metadata"]["name"] for m in CORPUS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.id)
def test_model_refuses(m: InvalidManifest) -> None:
    with pytest.raises(InvalidJobError) as e:
        parse_job(m.manifest)
    assert m.model is not None
    assert any(m.model in line for line in e.value.errors), e.value.errors


@pytest.mark.parametrize("m", CORPUS, ids=lambda m: m.id)
def test_each_manifest_is_one_mutation_of_a_valid_job(m: InvalidManifest) -> None:
    """Undoing the single mutation (replacing spec with a valid one) makes the manifest valid,
    i.e. nothing outside the mutated field is broken."""
    valid = copy.deepcopy(m.manifest)
    valid["metadata"]["name"] = "valid"
    valid["spec"] = {
        "image": "registry.example.com/ml/train:1.0",
        "command": ["python", "train.py"],
        "workers": {"min": 1, "max": 4},
        "accelerators": [{"type": "nvidia-a100"}],
        "globalBatchSize": 64,
    }
    parse_job(valid)


@pytest.mark.parametrize("path", examples(), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    # An example may carry what the job needs beside it (e.g. a PersistentVolumeClaim).
    docs = [
        d
        for d in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if d and d.get("kind") == "HeteroTrainJob"
    ]
    assert docs
    for doc in docs:
        job = parse_job(doc)
        assert job.metadata.name
        resolve_accelerators(job.spec)  # every example names resourceName for unknown types


def test_there_are_examples() -> None:
    names = {p.name for p in examples()}
    assert "quickstart.yaml" in names
    assert len(names) >= 3
