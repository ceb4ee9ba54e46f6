"""The chart's Argo CD health check (Lua), run by a real Lua interpreter (lupa) on recorded job statuses.

The same recordings go through the kstatus library in e2e/tests/test_kstatus.py; both must say what
tests/testdata/job-status/expected.yaml says for the job's phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from heterotrain_e2e.gitops import argocd_health

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "tests" / "testdata" / "job-status"
CASES = yaml.safe_load((TESTDATA / "expected.yaml").read_text())["cases"]


def health(obj: dict[str, Any]) -> dict[str, str]:
    return argocd_health(json.loads(json.dumps(obj)))


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_health_agrees_with_the_phase(case: dict[str, str]):
    obj = yaml.safe_load((TESTDATA / case["file"]).read_text())
    assert obj["status"]["phase"] == case["phase"]
    hs = health(obj)
    assert hs["status"] == case["argocd"], hs
    assert hs["message"]


def test_a_job_the_operator_has_not_seen_is_progressing():
    obj = yaml.safe_load((TESTDATA / "running.yaml").read_text())
    del obj["status"]
    assert health(obj)["status"] == "Progressing"


def test_the_message_says_why_a_job_is_degraded():
    obj = yaml.safe_load((TESTDATA / "pending-stalled.yaml").read_text())
    hs = health(obj)
    assert hs["status"] == "Degraded" and hs["message"].startswith(
        "NoMatchingNodes: spec.accelerators[0].type"
    )
