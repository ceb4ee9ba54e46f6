"""Events are aggregated: one object per (job, type, reason), whose count grows on repeats."""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from heterotrain_operator.kube import event_name, namespace_terminating, new_event, repeated_event

META = {"name": "llm", "namespace": "team-a", "uid": "uid-1", "resourceVersion": "7"}


def test_event_name_is_deterministic_per_job_type_and_reason():
    n = event_name(META, "Normal", "MembershipChanged")
    assert n == event_name(META, "Normal", "MembershipChanged")
    assert n.startswith("llm.") and len(n) == len("llm.") + 16
    others = {
        event_name(META, "Warning", "MembershipChanged"),
        event_name(META, "Normal", "Resumed"),
        event_name({**META, "uid": "uid-2"}, "Normal", "MembershipChanged"),  # a recreated job
    }
    assert n not in others and len(others) == 3


def test_first_occurrence_and_repeats():
    ev = new_event(
        META, "Warning", "WorkerFailed", "worker llm-worker-0 failed", "2026-01-01T00:00:00Z", "op"
    )
    assert ev["metadata"] == {"name": event_name(META, "Warning", "WorkerFailed"), "namespace": "team-a"}
    assert ev["count"] == 1 and ev["firstTimestamp"] == ev["lastTimestamp"]
    assert ev["involvedObject"]["uid"] == "uid-1" and ev["involvedObject"]["kind"] == "HeteroTrainJob"
    patch = repeated_event(ev, "worker llm-worker-3 failed", "2026-01-01T00:05:00Z")
    assert patch == {
        "count": 2,
        "lastTimestamp": "2026-01-01T00:05:00Z",
        "message": "worker llm-worker-3 failed",
    }
    assert "firstTimestamp" not in patch
    assert repeated_event({**ev, "count": 41}, "x" * 5000, "t")["count"] == 42
    assert len(repeated_event(ev, "x" * 5000, "t")["message"]) == 1024


def test_a_refusal_in_a_namespace_being_deleted_is_told_apart() -> None:
    """Creating a worker in a namespace being deleted is refused (403, NamespaceTerminating): a race with
    the namespace's deletion, logged as such rather than as a failed reconcile with a traceback."""
    body = (
        '{"kind":"Status","status":"Failure","reason":"Forbidden","details":{"causes":[{"reason":'
        '"NamespaceTerminating","message":"namespace ex is being terminated"}]},"code":403}'
    )
    assert namespace_terminating(ApiException(status=403, reason="Forbidden", body=body))
    assert not namespace_terminating(
        ApiException(status=403, reason="Forbidden", body='{"reason":"Forbidden"}')
    )
    assert not namespace_terminating(ApiException(status=409, reason="Conflict", body=body))
    assert not namespace_terminating(RuntimeError("NamespaceTerminating"))
