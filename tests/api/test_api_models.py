"""The HeteroTrainJob pydantic models: defaults, aliases, strictness, round-trips, status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from heterotrain_api import (
    AcceleratorSpec,
    CheckpointSpec,
    Condition,
    HeteroTrainJob,
    HeteroTrainJobSpec,
    HeteroTrainJobStatus,
    InvalidJobError,
    MembershipStatus,
    format_mix,
    parse_job,
    parse_spec,
)
from heterotrain_api.v1alpha1 import CONDITION_TYPES, MSG_WORKERS_MIN_MAX

MINIMAL: dict[str, Any] = {
    "apiVersion": "heterotrain.io/v1alpha1",
    "kind": "HeteroTrainJob",
    "metadata": {"name": "demo", "namespace": "ml"},
    "spec": {
        "image": "img:1",
        "command": ["python", "train.py"],
        "workers": {"min": 1, "max": 4},
        "accelerators": [{"type": "nvidia-a100"}],
        "globalBatchSize": 64,
    },
}


def minimal(**spec_overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(spec_overrides)
    return doc


def test_defaults_match_the_documented_api() -> None:
    spec = parse_job(MINIMAL).spec
    assert spec.args == [] and spec.env == [] and spec.tolerations == [] and spec.node_selector == {}
    assert spec.resources is None and spec.image_pull_policy is None
    assert spec.accelerators[0].per_worker == 1
    acc = spec.accelerators[0]
    assert (acc.resource_name, acc.relative_throughput, acc.max_workers, acc.backend) == (None,) * 4
    assert spec.checkpoint.path == "/checkpoints"
    assert spec.checkpoint.keep == 3
    assert spec.checkpoint.async_ is True
    assert spec.checkpoint.volume is None
    assert spec.checkpoint.interval_steps is None and spec.checkpoint.interval_seconds is None
    assert spec.fault_tolerance.max_restarts == 10
    assert spec.fault_tolerance.heartbeat_timeout_seconds == 15
    assert spec.fault_tolerance.on_worker_failure == "Replace"
    assert spec.rebalance.policy == "Throughput"
    assert spec.rebalance.min_interval_seconds == 30
    assert spec.placement == "Pack"
    assert spec.priority == 0
    assert spec.suspend is False
    assert spec.ttl_seconds_after_finished is None


def test_nested_defaults_apply_when_parent_given_partially() -> None:
    spec = parse_job(minimal(checkpoint={"intervalSteps": 100}, faultTolerance={"maxRestarts": 2})).spec
    assert spec.checkpoint.interval_steps == 100
    assert spec.checkpoint.path == "/checkpoints" and spec.checkpoint.keep == 3
    assert spec.fault_tolerance.max_restarts == 2
    assert spec.fault_tolerance.heartbeat_timeout_seconds == 15


def test_to_dict_uses_camel_case_and_the_async_alias() -> None:
    out = parse_job(minimal(checkpoint={"async": False})).to_dict()
    spec = out["spec"]
    assert spec["globalBatchSize"] == 64
    assert spec["checkpoint"]["async"] is False
    assert "async_" not in spec["checkpoint"]
    assert spec["faultTolerance"]["heartbeatTimeoutSeconds"] == 15
    assert "status" not in out  # unset optional fields are left out
    assert out["metadata"] == {"name": "demo", "namespace": "ml"}


def test_round_trip_is_stable() -> None:
    job = parse_job(
        minimal(env=[{"name": "A", "value": "1"}], resources={"requests": {"cpu": 4, "memory": "8Gi"}})
    )
    again = parse_job(job.to_dict())
    assert again == job
    assert again.to_dict() == job.to_dict()


def test_populate_by_python_name() -> None:
    spec = HeteroTrainJobSpec(
        image="img",
        command=["python"],
        workers={"min": 1, "max": 2},  # type: ignore[arg-type]
        accelerators=[AcceleratorSpec(type="nvidia-h100", per_worker=8)],
        global_batch_size=16,
        checkpoint=CheckpointSpec(async_=False, interval_seconds=60),
    )
    assert spec.to_dict()["accelerators"] == [{"type": "nvidia-h100", "perWorker": 8}]
    assert spec.to_dict()["checkpoint"]["async"] is False


def test_metadata_keeps_unknown_fields() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert parse_job(doc).to_dict()["metadata"]["managedFields"] == [{"manager": "kubectl"}]


def test_spec_is_strict_like_the_api_server() -> None:
    with pytest.raises(InvalidJobError) as e:
        parse_spec({**MINIMAL["spec"], "globalBatchSize": "64"})
    assert e.value.errors == ["spec.globalBatchSize: Input should be a valid integer"]
    # ints are fine where numbers are expected
    spec = parse_spec(
        {**MINIMAL["spec"], "accelerators": [{"type": "x", "resourceName": "a.b/c", "relativeThroughput": 2}]}
    )
    assert spec.accelerators[0].relative_throughput == 2.0


def test_parse_spec_errors_name_the_field_path() -> None:
    with pytest.raises(InvalidJobError) as e:
        parse_spec({**MINIMAL["spec"], "workers": {"min": 3, "max": 2}})
    assert e.value.errors == [f"spec.workers: {MSG_WORKERS_MIN_MAX}"]
    assert e.value.reason == "InvalidSpec"


def test_duplicate_types_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"spec.accelerators\[2\].type: Duplicate value 'b'"):
        HeteroTrainJobSpec.model_validate(
            {**MINIMAL["spec"], "accelerators": [{"type": "b"}, {"type": "a"}, {"type": "b"}]}
        )


def test_max_workers_sum_only_checked_when_all_set() -> None:
    base = {**MINIMAL["spec"], "workers": {"min": 5, "max": 8}}
    parse_spec({**base, "accelerators": [{"type": "a", "maxWorkers": 1}, {"type": "b"}]})
    parse_spec({**base, "accelerators": [{"type": "a", "maxWorkers": 2}, {"type": "b", "maxWorkers": 3}]})
    with pytest.raises(InvalidJobError, match="maxWorkers must add up"):
        parse_spec({**base, "accelerators": [{"type": "a", "maxWorkers": 2}, {"type": "b", "maxWorkers": 2}]})


def test_env_value_and_value_from() -> None:
    ref = {"secretKeyRef": {"name": "s", "key": "k"}}
    parse_spec(
        {
            **MINIMAL["spec"],
            "env": [{"name": "A", "valueFrom": ref}, {"name": "B", "value": "", "valueFrom": ref}],
        }
    )
    with pytest.raises(InvalidJobError, match="mutually exclusive"):
        parse_spec({**MINIMAL["spec"], "env": [{"name": "A", "value": "x", "valueFrom": ref}]})


@pytest.mark.parametrize("quantity", [1, "500m", "16Gi", "1e3", "0.5", "+1k"])
def test_quantities_accepted(quantity: object) -> None:
    parse_spec({**MINIMAL["spec"], "resources": {"limits": {"cpu": quantity}}})


@pytest.mark.parametrize("quantity", ["lots", "1 Gi", "", True, 1.5, "16GB"])
def test_quantities_refused(quantity: object) -> None:
    with pytest.raises(InvalidJobError, match=r"spec.resources.limits.cpu: must be an integer or a quantity"):
        parse_spec({**MINIMAL["spec"], "resources": {"limits": {"cpu": quantity}}})


def test_job_name_length() -> None:
    parse_job({**MINIMAL, "metadata": {"name": "a" * 50}})
    with pytest.raises(InvalidJobError, match=r"metadata\.name must be at most 50"):
        parse_job({**MINIMAL, "metadata": {"name": "a" * 51}})
    parse_job({**MINIMAL, "metadata": {"generateName": "run-"}})


def test_wrong_api_version_or_kind() -> None:
    with pytest.raises(InvalidJobError, match="apiVersion"):
        parse_job({**MINIMAL, "apiVersion": "heterotrain.io/v1"})
    with pytest.raises(InvalidJobError, match="kind"):
        parse_job({**MINIMAL, "kind": "Job"})


# --- status ---------------------------------------------------------------------


def full_status() -> dict[str, Any]:
    return {
        "observedGeneration": 3,
        "phase": "Running",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "WorldFormed",
                "message": "5 workers",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": 3,
            },
            {
                "type": "Stalled",
                "status": "False",
                "reason": "AsExpected",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
            },
        ],
        "workers": {
            "desired": 5,
            "ready": 5,
            "byType": {"nvidia-a100": {"desired": 3, "ready": 3}, "nvidia-h100": {"desired": 2, "ready": 2}},
        },
        "mix": "nvidia-a100:3,nvidia-h100:2",
        "membership": {
            "epoch": 7,
            "masterPort": 29400,
            "world": [
                {
                    "pod": "demo-worker-0",
                    "rank": 0,
                    "type": "nvidia-h100",
                    "address": "10.0.0.1",
                    "weight": 3.17,
                    "slots": 1,
                },
                {
                    "pod": "demo-worker-1",
                    "rank": 1,
                    "type": "nvidia-a100",
                    "address": "10.0.0.2",
                    "weight": 8.0,
                    "slots": 8,
                },
            ],
        },
        "placement": [
            {"pod": "demo-worker-0", "node": "gpu-h100-1", "type": "nvidia-h100"},
            {"pod": "demo-worker-1", "type": "nvidia-a100"},
        ],
        "waitingReason": "InsufficientAccelerators",
        "waitingMessage": "1 more nvidia-a100 wanted",
        "restarts": 2,
        "lastFailure": {
            "pod": "demo-worker-3",
            "reason": "OOMKilled",
            "exitCode": 137,
            "message": "oom",
            "time": "2025-01-02T03:00:00Z",
        },
        "lastCheckpoint": {"step": 1200, "time": "2025-01-02T03:04:00Z", "path": "/checkpoints/step-1200"},
        "startTime": "2025-01-02T02:00:00Z",
        "completionTime": "2025-01-02T04:00:00Z",
    }


def test_status_round_trip() -> None:
    data = full_status()
    status = HeteroTrainJobStatus.model_validate(data)
    assert status.to_dict() == {
        **data,
        "conditions": [data["conditions"][0], {**data["conditions"][1], "message": ""}],
    }
    ready = status.condition("Ready")
    assert ready is not None and ready.status == "True"
    assert status.condition("Failed") is None


def test_whole_job_with_status() -> None:
    job = parse_job({**MINIMAL, "status": full_status()})
    assert job.status is not None and job.status.workers is not None
    assert job.status.workers.by_type["nvidia-h100"].ready == 2


def test_times_serialize_as_rfc3339_utc_seconds() -> None:
    t = datetime(2025, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    c = Condition(type="Ready", status="True", reason="Ok", last_transition_time=t)
    assert c.to_dict()["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    naive = Condition(type="Ready", status="True", reason="Ok", last_transition_time=datetime(2025, 1, 2))
    assert naive.to_dict()["lastTransitionTime"] == "2025-01-02T00:00:00Z"
    assert Condition.model_validate(c.to_dict()).last_transition_time == t.replace(microsecond=0).astimezone(
        UTC
    )


def test_condition_reason_must_be_camel_case_word() -> None:
    with pytest.raises(ValidationError):
        Condition(type="Ready", status="True", reason="not ok", last_transition_time=datetime.now(UTC))
    with pytest.raises(ValidationError):
        Condition(type="Ready", status="Maybe", reason="Ok", last_transition_time=datetime.now(UTC))  # type: ignore[arg-type]


def test_condition_types_are_the_documented_ones() -> None:
    assert set(CONDITION_TYPES) == {
        "Ready",
        "Reconciling",
        "Stalled",
        "Admitted",
        "Running",
        "Recovering",
        "Succeeded",
        "Failed",
        "Suspended",
        "AcceleratorsMissing",
    }


def test_membership_matches_the_contract() -> None:
    from heterotrain_contract import Member, Membership

    m = Membership(
        epoch=4,
        master_port=29500,
        world=(
            Member("j-worker-0", 0, "nvidia-a100", "10.0.0.1", 1.0),
            Member("j-worker-1", 1, "amd-mi300x", "10.0.0.2", 33.52, slots=8, max_micro_batch=12),
        ),
    )
    status = MembershipStatus.from_contract(m.to_dict())
    assert status.to_dict() == m.to_dict()
    assert Membership.from_dict(status.to_dict()) == m
    # and the CRD schema of status.membership has exactly the contract's keys
    from heterotrain_api.crdgen import openapi_schema

    schema = openapi_schema()["properties"]["status"]["properties"]["membership"]
    assert set(schema["properties"]) == set(m.to_dict())
    assert set(schema["properties"]["world"]["items"]["properties"]) == set(m.to_dict()["world"][1])


def test_format_mix() -> None:
    assert format_mix({"nvidia-h100": 2, "nvidia-a100": 3, "amd-mi300x": 0}) == "nvidia-a100:3,nvidia-h100:2"
    assert format_mix({}) == ""


def test_model_is_importable_without_kopf_or_kubernetes() -> None:
    import subprocess
    import sys

    code = (
        "import sys, heterotrain_api, heterotrain_api.crdgen;"
        "bad = [m for m in ('kopf', 'kubernetes', 'heterotrain_operator', 'heterotrain_runtime') if m in sys.modules];"
        "assert not bad, bad"
    )
    env_path = [p for p in sys.path if p]
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(env_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_heterotrainjob_defaults_api_version_and_kind() -> None:
    job = HeteroTrainJob(spec=parse_spec(MINIMAL["spec"]))
    assert job.to_dict()["apiVersion"] == "heterotrain.io/v1alpha1"
    assert job.to_dict()["kind"] == "HeteroTrainJob"
