"""Failures as they come: hung workers, lost nodes, processes restarted in place, bad nodes, backoff (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import heterotrain_contract as hc
from heterotrain_operator import faults as f
from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import worker_pod

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SLOTS = (("n1", "nvidia-a100"), ("n2", "nvidia-h100"), ("n3", "nvidia-a100"))


def admitted(*slots: tuple[str, str]) -> pl.JobPlan:
    return pl.JobPlan(
        key="ns/j", admitted=True, workers=tuple(pl.WorkerSlot(node=n, type=t) for n, t in slots)
    )


def running(job: Any, index: int, type_: str, node: str, settings: Any) -> dict[str, Any]:
    pod = worker_pod(job, index, type_, settings, node=node)
    pod["metadata"]["uid"] = f"pod-{index}"
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": "Running", "podIP": f"198.18.0.{index + 1}"}
    return pod


def steady(make_job: Any, settings: Any, **spec: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A job of three running workers and the status the operator gave it."""
    job = make_job(**spec)
    pods = [running(job, i, t, n, settings) for i, (n, t) in enumerate(SLOTS)]
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW)
    assert out.status["phase"] == "Running" and out.status["membership"]["epoch"] == 1
    return out.status, pods


def progress(
    epoch: int = 1, stale: dict[str, str] | None = None, restarts: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "time": "2026-01-01T11:59:59Z",
        "reporter": "j-worker-0",
        "epoch": epoch,
        "step": 120,
        "staleRanks": [
            {"rank": int(p[-1]), "pod": p, "reason": why, "seconds": 12.5} for p, why in (stale or {}).items()
        ],
        "processRestarts": [{"pod": p, "count": n, "exitCode": 137} for p, n in (restarts or {}).items()],
    }


def healthy(**over: f.NodeHealth) -> f.Facts:
    nodes = {n: f.NodeHealth(lease_age=3.0) for n in ("n1", "n2", "n3", "n4")}
    nodes.update(over)
    return f.Facts(nodes=nodes, progress_age=1.0)


def test_a_silent_worker_is_hung_replaced_at_once_and_the_world_recovers(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(stale={"j-worker-1": "Silent"})})
    replan = admitted(("n1", "nvidia-a100"), ("n4", "nvidia-h100"), ("n3", "nvidia-a100"))
    out = r.reconcile_job(job, pods, replan, settings, NOW, facts=healthy())
    assert out.delete == [("j-worker-1", "pod-1", "Hung")]
    assert "Hung" in f.FORCE_DELETE_REASONS  # deleted with grace 0: a stopped process cannot checkpoint
    (failure,) = out.status["failures"]
    assert failure == {**failure, "pod": "j-worker-1", "node": "n2", "reason": "Hung", "action": "Replaced"}
    assert out.status["restarts"] == 1 and out.status["podRestarts"] == 1
    assert out.status["lastFailure"] == failure
    assert [m["pod"] for m in out.status["membership"]["world"]] == ["j-worker-0", "j-worker-2"]
    assert out.status["phase"] == "Recovering"
    assert {p["metadata"]["name"] for p in out.apply} == {"j-worker-3"}  # the replacement, at once
    assert any(e[1] == "WorkerFailed" and "Hung" in e[2] for e in out.events)


def test_a_replacement_joins_the_world_once_its_processes_are_ready(settings, make_job):
    """A new worker of a job that runs the SDK starts its processes before it is a member: the others
    train on without it through its cold start and take it in once its launcher says it is ready."""
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(stale={"j-worker-1": "Silent"})})
    replan = admitted(("n1", "nvidia-a100"), ("n4", "nvidia-h100"), ("n3", "nvidia-a100"))
    out = r.reconcile_job(job, pods, replan, settings, NOW, facts=healthy())
    (created,) = [p for p in out.apply if p["spec"].get("nodeName") or "affinity" in p["spec"]]
    assert created["metadata"]["annotations"] == {hc.ANNOTATION_START_BEFORE_MEMBER: "true"}
    env = {e["name"]: e for e in created["spec"]["containers"][0]["env"]}
    assert env[hc.ENV_START_BEFORE_MEMBER]["valueFrom"]["fieldRef"]["fieldPath"] == (
        f"metadata.annotations['{hc.ANNOTATION_START_BEFORE_MEMBER}']"
    )
    assert env[hc.ENV_NPROC_PER_WORKER]["value"] == "1"
    new = {**created, "metadata": {**created["metadata"], "uid": "pod-3"}}
    new["spec"] = {**new["spec"], "nodeName": "n4"}
    new["status"] = {"phase": "Running", "podIP": "198.18.0.4"}
    world = [pods[0], pods[2]]
    job = make_job(status={k: v for k, v in out.status.items()})
    for cond in (None, (False, "1 processes starting", hc.REASON_PROCESSES_STARTING)):
        pod = new if cond is None else with_condition(new, *cond)
        waiting = r.reconcile_job(job, [*world, pod], replan, settings, NOW, facts=healthy())
        assert [m["pod"] for m in waiting.status["membership"]["world"]] == ["j-worker-0", "j-worker-2"]
        assert waiting.status["membership"]["epoch"] == out.status["membership"]["epoch"]
        assert waiting.apply == [] and waiting.delete == []
    ready = with_condition(new, True, "1 processes ready to join", None)
    joined = r.reconcile_job(job, [*world, ready], replan, settings, NOW, facts=healthy())
    assert sorted(m["pod"] for m in joined.status["membership"]["world"]) == [
        "j-worker-0",
        "j-worker-2",
        "j-worker-3",
    ]
    assert joined.status["phase"] == "Running" and joined.status["restarts"] == 1


def test_a_job_that_has_not_reported_progress_starts_its_workers_as_members(settings, make_job):
    """Before the SDK reported anything (a plain script never does), a worker starts its processes once it
    is a member and is taken into the world when it runs: no annotation."""
    job = make_job()
    pod = worker_pod(job, 0, "nvidia-a100", settings, node="n1")
    assert "annotations" not in pod["metadata"]
    assert hc.processes_ready(running(job, 0, "nvidia-a100", "n1", settings))


def with_condition(pod: dict[str, Any], ready: bool, message: str, reason: str | None) -> dict[str, Any]:
    cond = hc.condition_patch(ready, message, "2026-01-01T11:59:59Z", reason)["status"]["conditions"]
    return {**pod, "status": {**pod["status"], "conditions": cond}}


def test_a_stale_report_about_another_epoch_is_not_acted_on(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(epoch=0, stale={"j-worker-1": "Silent"})})
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [] and out.status["restarts"] == 0


def test_a_silent_worker_whose_node_stopped_renewing_its_lease_is_node_lost(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(stale={"j-worker-1": "Silent"})})
    # The Lease was not renewed since the worker went silent (12.5 s in the report, 1 s ago), and was due.
    facts = healthy(n2=f.NodeHealth(lease_age=13.5))
    renewed = healthy(n2=f.NodeHealth(lease_age=9.0))
    hung = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=renewed)
    assert hung.delete == [("j-worker-1", "pod-1", "Hung")], "renewed since: the node lives, the worker hangs"
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=facts)
    assert out.delete == [("j-worker-1", "pod-1", "NodeLost")]
    assert out.status["lastFailure"]["reason"] == "NodeLost" and out.status["lastFailure"]["node"] == "n2"
    (avoided,) = out.status["avoidedNodes"]
    assert avoided["node"] == "n2" and avoided["reason"] == "NodeLost"
    assert avoided["until"] == "2026-01-01T12:10:00Z"  # failureWindowSeconds: 600
    assert any(e[1] == "NodeAvoided" for e in out.events)


def test_workers_on_a_node_that_goes_not_ready_or_away_are_node_lost(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status=status)
    facts = healthy(n2=f.NodeHealth(ready=False))
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=facts)
    assert out.delete == [("j-worker-1", "pod-1", "NodeLost")]
    assert "not ready" in out.status["lastFailure"]["message"]
    gone = f.Facts(nodes={n: f.NodeHealth() for n in ("n1", "n2")})  # n3 was deleted
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=gone)
    assert out.delete == [("j-worker-2", "pod-2", "NodeLost")]
    # Without node facts (a caller that did not look), nothing is taken as lost.
    assert r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW).delete == []


def test_a_process_restarted_in_place_is_counted_once_and_nothing_is_deleted(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(restarts={"j-worker-2": 1})})
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [] and out.apply == []
    assert out.status["restarts"] == 1 and out.status["inPlaceRestarts"] == 1
    assert "podRestarts" not in out.status
    assert out.status["countedProcessRestarts"] == {"j-worker-2": 1}
    assert out.status["lastFailure"]["action"] == "RestartedInPlace"
    assert out.status["lastFailure"]["exitCode"] == 137
    assert out.status["membership"]["epoch"] == 1  # the world is the same
    assert any(e[1] == "WorkerRestarted" for e in out.events)
    # The same report again: counted already.
    again = make_job(status={**out.status, "progress": progress(restarts={"j-worker-2": 1})})
    out2 = r.reconcile_job(again, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out2.status["restarts"] == 1 and out2.events == []
    # Two more restarts: two more failures.
    more = make_job(status={**out.status, "progress": progress(restarts={"j-worker-2": 3})})
    out3 = r.reconcile_job(more, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out3.status["restarts"] == 3 and out3.status["inPlaceRestarts"] == 3


def restarting(pod: dict[str, Any], count: int, ready: bool) -> dict[str, Any]:
    """The pod as its launcher marks it: a process restarting in place (ready False), or back (True)."""
    message = hc.restart_message(count, 137, 0) + ("" if not ready else ": ready to join")
    cond = hc.condition_patch(ready, message, "2026-01-01T11:59:59Z")["status"]["conditions"]
    return {**pod, "status": {**pod["status"], "conditions": cond}}


def test_a_restarting_worker_leaves_the_world_at_once_is_counted_and_comes_back(settings, make_job):
    status, pods = steady(make_job, settings)
    # The launcher's condition says a process of worker 1 restarts: the others go on without it, before
    # any progress report (of this epoch or the next) says so; nothing is deleted or created.
    gone = [pods[0], restarting(pods[1], 1, ready=False), pods[2]]
    out = r.reconcile_job(make_job(status=status), gone, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [] and out.apply == []
    world = out.status["membership"]
    assert world["epoch"] == 2 and [m["pod"] for m in world["world"]] == ["j-worker-0", "j-worker-2"]
    assert out.status["phase"] == "Recovering"
    assert out.status["inPlaceRestarts"] == 1 and out.status["countedProcessRestarts"] == {"j-worker-1": 1}
    assert out.status["lastFailure"]["pod"] == "j-worker-1" and out.status["lastFailure"]["exitCode"] == 137
    # The old epoch's report of the same restart arrives late: not counted twice.
    late = make_job(status={**out.status, "progress": progress(epoch=1, restarts={"j-worker-1": 1})})
    out2 = r.reconcile_job(late, gone, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out2.status["restarts"] == 1 and out2.status["membership"]["epoch"] == 2
    # Ready to join again: back in the world, in one new epoch, Running.
    back = [pods[0], restarting(pods[1], 1, ready=True), pods[2]]
    out3 = r.reconcile_job(
        make_job(status=out2.status), back, admitted(*SLOTS), settings, NOW, facts=healthy()
    )
    world = out3.status["membership"]
    assert world["epoch"] == 3 and len(world["world"]) == 3 and out3.status["phase"] == "Running"
    assert out3.status["restarts"] == 1


def failed(pod: dict[str, Any], code: int = 1) -> dict[str, Any]:
    term = {"exitCode": code, "reason": "Error"}
    return {
        **pod,
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "worker", "state": {"terminated": term}}],
        },
    }


def test_a_node_with_repeated_failures_is_avoided(settings, make_job):
    status, pods = steady(make_job, settings, faultTolerance={"badNodeFailures": 2})
    earlier = {"pod": "j-worker-9", "node": "n3", "reason": "Error", "time": "2026-01-01T11:58:00Z"}
    job = make_job(status={**status, "failures": [earlier]}, faultTolerance={"badNodeFailures": 2})
    out = r.reconcile_job(job, [*pods[:2], failed(pods[2])], admitted(*SLOTS), settings, NOW, facts=healthy())
    (avoided,) = out.status["avoidedNodes"]
    assert avoided["node"] == "n3" and avoided["reason"] == "RepeatedFailures" and avoided["failures"] == 2
    assert len(out.status["failures"]) == 2
    # A failure long ago does not count.
    old = {**earlier, "time": "2026-01-01T11:40:00Z"}
    job = make_job(status={**status, "failures": [old]}, faultTolerance={"badNodeFailures": 2})
    out = r.reconcile_job(job, [*pods[:2], failed(pods[2])], admitted(*SLOTS), settings, NOW, facts=healthy())
    assert "avoidedNodes" not in out.status


def test_quick_failures_back_off_exponentially(settings, make_job):
    status, pods = steady(make_job, settings, faultTolerance={"restartBackoffSeconds": 4})
    recent = [
        {"pod": f"j-worker-{i}", "node": "n9", "reason": "Error", "time": "2026-01-01T11:59:58Z"}
        for i in (7, 8)
    ]
    job = make_job(status={**status, "failures": recent}, faultTolerance={"restartBackoffSeconds": 4})
    out = r.reconcile_job(job, [*pods[:2], failed(pods[2])], admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [("j-worker-2", "pod-2", "WorkerFailed")]
    assert out.apply == [], "the third failure in a row: the replacement waits (4 x 2 = 8 s)"
    assert out.status["waitingReason"] == "RestartBackoff"
    assert out.wake_at == NOW.timestamp() + 8
    later = make_job(status=out.status, faultTolerance={"restartBackoffSeconds": 4})
    gone = [*pods[:2]]
    out = r.reconcile_job(
        later, gone, admitted(*SLOTS), settings, NOW + timedelta(seconds=9), facts=healthy()
    )
    assert {p["metadata"]["name"] for p in out.apply} == {"j-worker-2"}


def test_when_reports_stop_for_long_the_reporter_is_taken_as_silent(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress()})
    quiet = f.Facts(nodes=healthy().nodes, progress_age=44.0)
    assert r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=quiet).delete == []
    silent = f.Facts(nodes=healthy().nodes, progress_age=46.0)  # > 3 x heartbeatTimeoutSeconds
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=silent)
    assert out.delete == [("j-worker-0", "pod-0", "Hung")]


def test_history_keeps_the_last_ten(settings, make_job):
    status, pods = steady(make_job, settings, faultTolerance={"maxRestarts": 100})
    history = [
        {"pod": f"j-worker-{i}", "reason": "Error", "time": "2026-01-01T10:00:00Z"} for i in range(10, 20)
    ]
    job = make_job(
        status={**status, "failures": history, "restarts": 10}, faultTolerance={"maxRestarts": 100}
    )
    out = r.reconcile_job(job, [*pods[:2], failed(pods[2])], admitted(*SLOTS), settings, NOW, facts=healthy())
    assert len(out.status["failures"]) == 10
    assert (
        out.status["failures"][0]["pod"] == "j-worker-11"
        and out.status["failures"][-1]["pod"] == "j-worker-2"
    )
    assert out.status["restarts"] == 11


def test_progress_watch_ages_only_while_reports_do_not_change():
    watch = f.ProgressWatch()
    st = {"progress": progress()}
    assert watch.age("u", st, 100.0) == 0.0
    assert watch.age("u", st, 130.0) == 30.0
    st2 = {"progress": {**progress(), "step": 121}}
    assert watch.age("u", st2, 131.0) == 0.0
    assert watch.age("u", {}, 140.0) is None
    assert f.lease_age({"spec": {"renewTime": "2026-01-01T12:00:00.000000Z"}}, NOW.timestamp() + 7) == 7.0
    assert f.lease_age(None, 0.0) is None
    assert f.lease_interval({"spec": {"leaseDurationSeconds": 40}}) == 10.0


def test_a_stale_report_about_an_earlier_pod_of_the_same_name_is_not_acted_on(settings, make_job):
    status, pods = steady(make_job, settings)
    job = make_job(status={**status, "progress": progress(stale={"j-worker-1": "Silent"})})
    # j-worker-1 is a new pod of that name: it started 5 s ago, the silence reported began 13.5 s ago.
    started = (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods[1]["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"running": {"startedAt": started}}}
    ]
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [] and out.status["restarts"] == 0
    long_ago = (NOW - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods[1]["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"running": {"startedAt": long_ago}}}
    ]
    out = r.reconcile_job(job, pods, admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [("j-worker-1", "pod-1", "Hung")]


def test_a_worker_left_out_of_the_last_world_is_stopped_once_the_others_completed(settings, make_job):
    """It was taken back into the world as the others trained their last step: its world never forms, and
    the job would wait for it for ever."""
    status, pods = steady(make_job, settings)
    done_at = NOW - timedelta(seconds=5)
    term = {"exitCode": 0, "reason": "Completed", "finishedAt": done_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    done = [
        {
            **p,
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [{"name": "worker", "state": {"terminated": term}}],
            },
        }
        for p in pods[:2]
    ]
    job = make_job(status=status)
    out = r.reconcile_job(job, [*done, pods[2]], admitted(*SLOTS), settings, NOW, facts=healthy())
    assert out.delete == [] and out.status["phase"] != "Succeeded"
    # the others end as they write the last checkpoint and leave: a grace period after the first one ended
    assert out.wake_at == done_at.timestamp() + settings.worker_grace_seconds
    slow = NOW + timedelta(seconds=settings.worker_grace_seconds - 10)  # a slow node is still finishing
    out = r.reconcile_job(job, [*done, pods[2]], admitted(*SLOTS), settings, slow, facts=healthy())
    assert out.delete == []
    later = NOW + timedelta(seconds=settings.worker_grace_seconds - 4)
    out = r.reconcile_job(job, [*done, pods[2]], admitted(*SLOTS), settings, later, facts=healthy())
    assert out.delete == [("j-worker-2", "pod-2", "Finished")]
    gone = {**pods[2], "metadata": {**pods[2]["metadata"], "deletionTimestamp": "2026-01-01T12:00:11Z"}}
    out = r.reconcile_job(job, [*done, gone], admitted(*SLOTS), settings, later, facts=healthy())
    assert out.status["phase"] == "Succeeded"
