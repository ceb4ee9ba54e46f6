"""The pod state machine of the process runner (pure: no I/O, time passed in).

A :class:`PodState` is what the runner knows about one pod's processes.
:func:`plan` compares it with the latest pod object and returns the actions
to take (set the sandbox up, start a container, signal one, delete the pod,
clean up) and when to look again; the I/O layer executes them and reports
back through :func:`on_started`, :func:`on_exited`, :func:`on_start_error`
and :func:`on_config_error`; :func:`settle` then computes the pod phase.

Kubernetes semantics followed (from the kubelet):

* init containers run one at a time, in order, each to completion; a failing
  one fails the pod under ``restartPolicy: Never`` and is retried with
  backoff otherwise.  An init container with ``restartPolicy: Always`` is a
  sidecar: it counts as done once started, is always restarted, and is
  stopped (SIGTERM, then SIGKILL after the grace period) once the regular
  containers have finished;
* containers restart per ``restartPolicy`` (Always / OnFailure / Never) with
  exponential backoff: the first restart is immediate, then ``base``,
  ``2*base``, ... capped at ``max`` (kubelet: 10 s and 300 s); the backoff
  resets after a container has run for ``2*max`` without failing;
* a process killed by signal N reports exit code 128+N;
* deletion (``deletionTimestamp``) sends SIGTERM to every running container,
  SIGKILL after ``deletionGracePeriodSeconds`` (at least 2 s, as the kubelet's
  runtime), then, once nothing runs, puts the pod in a terminal phase and
  deletes it with grace 0;
* ``activeDeadlineSeconds`` stops the pod and fails it with reason
  ``DeadlineExceeded``;
* a pod in a terminal phase (Succeeded/Failed) never runs again.
"""

from __future__ import annotations

import calendar
import signal
import time
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

WAITING = "waiting"
RUNNING = "running"
TERMINATED = "terminated"

PENDING = "Pending"
RUNNING_PHASE = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)

STOP_DELETED = "Deleted"
STOP_DEADLINE = "DeadlineExceeded"
STOP_COMPLETED = "Completed"  # regular containers done, sidecars to stop


@dataclass
class Config:
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    min_grace: float = 2.0  # the kubelet's runtime never kills with less
    config_retry: float = 2.0  # retry a container whose configMap/secret is missing
    sandbox_retry: float = 2.0  # retry a sandbox whose volumes cannot be set up


@dataclass
class Termination:
    exit_code: int
    reason: str
    started_at: float | None
    finished_at: float
    container_id: str = ""
    signal: int | None = None
    message: str = ""


@dataclass
class Container:
    name: str
    image: str
    init: bool = False
    sidecar: bool = False  # an init container with restartPolicy: Always
    state: str = WAITING
    reason: str = "ContainerCreating"
    message: str = ""
    pid: int | None = None
    started_at: float | None = None
    current: Termination | None = None  # set when state == TERMINATED
    last: Termination | None = None  # the previous run (lastState)
    restart_count: int = 0
    has_run: bool = False
    restart_at: float | None = None  # earliest (re)start while WAITING
    backoff_step: int = 0
    term_sent: bool = False
    kill_sent: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state == TERMINATED and self.current is not None and self.current.exit_code == 0

    @property
    def container_id(self) -> str:
        if self.pid is not None:
            return f"process://{self.pid}"
        t = self.current or self.last
        return t.container_id if t else ""


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    restart_policy: str
    init: list[Container]
    containers: list[Container]
    sandbox_ready: bool = False
    sandbox_error: str = ""
    sandbox_retry_at: float = 0.0
    pod_ip: str | None = None
    start_time: float | None = None
    phase: str = PENDING
    reason: str = ""
    message: str = ""
    terminal: bool = False
    frozen: bool = False  # already terminal in the API when first seen: never touched
    stopping_since: float | None = None
    stop_deadline: float | None = None
    stop_reason: str = ""
    deleted: bool = False  # the API object is gone
    delete_requested: bool = False
    finished: bool = False  # cleaned up: the worker may go
    warnings: list[str] = field(default_factory=list)

    def all_containers(self) -> list[Container]:
        return [*self.init, *self.containers]

    def container(self, name: str) -> Container:
        for c in self.all_containers():
            if c.name == name:
                return c
        raise KeyError(name)

    def running(self) -> list[Container]:
        return [c for c in self.all_containers() if c.state == RUNNING]


# --- actions ----------------------------------------------------------------


@dataclass(frozen=True)
class SetupSandbox:
    """Allocate the pod IP, create the pod's directories and volumes."""


@dataclass(frozen=True)
class StartContainer:
    name: str


@dataclass(frozen=True)
class SignalContainer:
    name: str
    sig: int


@dataclass(frozen=True)
class DeletePod:
    """Delete the API object with grace 0 and a UID precondition (after a final status update)."""


@dataclass(frozen=True)
class Cleanup:
    """Release the pod IP and volumes; the pod is gone and nothing runs."""


Action = SetupSandbox | StartContainer | SignalContainer | DeletePod | Cleanup


# --- helpers ----------------------------------------------------------------


def parse_time(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return float(calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def new_pod_state(pod: JSON) -> PodState:
    spec = pod["spec"]
    meta = pod["metadata"]
    init = [
        Container(
            c["name"],
            c.get("image", ""),
            init=True,
            sidecar=c.get("restartPolicy") == "Always",
            reason="PodInitializing",
        )
        for c in spec.get("initContainers") or []
    ]
    reason = "PodInitializing" if init else "ContainerCreating"
    containers = [
        Container(c["name"], c.get("image", ""), reason=reason) for c in spec.get("containers") or []
    ]
    return PodState(
        uid=meta["uid"],
        namespace=meta["namespace"],
        name=meta["name"],
        restart_policy=spec.get("restartPolicy") or "Always",
        init=init,
        containers=containers,
    )


def backoff_delay(c: Container, cfg: Config) -> float:
    if c.backoff_step <= 0:
        return 0.0
    return float(min(cfg.backoff_base * 2 ** (c.backoff_step - 1), cfg.backoff_max))


def _will_restart(st: PodState, c: Container, exit_code: int) -> bool:
    if st.stopping_since is not None or st.terminal:
        return False
    if c.sidecar:
        return True
    if c.init:
        return st.restart_policy != "Never" and exit_code != 0
    if st.restart_policy == "Always":
        return True
    if st.restart_policy == "OnFailure":
        return exit_code != 0
    return False


def _grace(pod: JSON, cfg: Config, deleting: bool) -> float:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    g = meta.get("deletionGracePeriodSeconds") if deleting else None
    if g is None:
        g = spec.get("terminationGracePeriodSeconds")
    if g is None:
        g = 30
    return max(float(g), cfg.min_grace)


def begin_stop(st: PodState, now: float, grace: float, reason: str) -> None:
    """Start stopping the pod's processes (idempotent; a shorter grace shortens the deadline)."""
    if st.stopping_since is None:
        st.stopping_since = now
        st.stop_deadline = now + grace
        st.stop_reason = reason
        return
    if reason == STOP_DELETED and st.stop_reason != STOP_DELETED:
        st.stop_reason = reason
    assert st.stop_deadline is not None
    st.stop_deadline = min(st.stop_deadline, st.stopping_since + grace)


# --- events from the I/O layer ---------------------------------------------


def on_started(st: PodState, name: str, pid: int, now: float) -> None:
    c = st.container(name)
    if c.has_run:
        c.restart_count += 1
    c.has_run = True
    c.state = RUNNING
    c.pid = pid
    c.started_at = now
    c.reason = c.message = ""
    c.restart_at = None
    c.term_sent = c.kill_sent = False
    if st.start_time is None:
        st.start_time = now


def _record_exit(st: PodState, c: Container, t: Termination, now: float, cfg: Config) -> None:
    c.pid = None
    if t.started_at is not None and now - t.started_at > 2 * cfg.backoff_max:
        c.backoff_step = 0  # ran long enough: the backoff starts over
    if _will_restart(st, c, t.exit_code):
        delay = backoff_delay(c, cfg)
        c.backoff_step += 1
        c.last = t
        c.current = None
        c.state = WAITING
        c.restart_at = now + delay
        if delay > 0:
            c.reason = "CrashLoopBackOff"
            c.message = (
                f"back-off {delay:g}s restarting failed container={c.name} "
                f"pod={st.name}_{st.namespace}({st.uid})"
            )
        else:
            c.reason, c.message = "ContainerCreating", ""
    else:
        c.current = t  # lastState keeps the run before this one
        c.state = TERMINATED
        c.restart_at = None
        c.reason = c.message = ""


def on_exited(
    st: PodState,
    name: str,
    returncode: int,
    now: float,
    cfg: Config,
    message: str = "",
    oom_killed: bool = False,
) -> None:
    """A container's main process ended (``returncode`` as Popen: negative = killed by that signal).

    ``oom_killed``: the memory cgroup OOM-killed a process of the container; a
    failed container then reports ``OOMKilled``, as the kubelet does.
    """
    c = st.container(name)
    if returncode < 0:
        sig: int | None = -returncode
        code = 128 + -returncode
    else:
        sig, code = None, returncode
    t = Termination(
        exit_code=code,
        reason="Completed" if code == 0 else "OOMKilled" if oom_killed else "Error",
        started_at=c.started_at,
        finished_at=now,
        container_id=c.container_id,
        signal=sig,
        message=message,
    )
    _record_exit(st, c, t, now, cfg)


def on_start_error(st: PodState, name: str, now: float, cfg: Config, message: str) -> None:
    """The process could not be started (no such executable, ...): exit code 128, reason StartError."""
    c = st.container(name)
    if c.has_run:
        c.restart_count += 1
    c.has_run = True
    t = Termination(exit_code=128, reason="StartError", started_at=None, finished_at=now, message=message)
    c.state = WAITING
    _record_exit(st, c, t, now, cfg)


def on_config_error(st: PodState, name: str, now: float, cfg: Config, reason: str, message: str) -> None:
    """The container cannot be configured yet (missing configMap/secret): wait and retry."""
    c = st.container(name)
    c.state = WAITING
    c.reason = reason
    c.message = message
    c.restart_at = now + cfg.config_retry


def adopt(st: PodState, pod: JSON, now: float, cfg: Config) -> None:
    """Take over a pod a previous runner instance ran (its processes are gone)."""
    status = pod.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        st.frozen = st.terminal = True
        st.phase = status["phase"]
        return
    st.pod_ip = status.get("podIP") or None
    st.start_time = parse_time(status.get("startTime"))
    by_name = {
        cs.get("name"): cs
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    }
    for c in st.all_containers():
        cs = by_name.get(c.name)
        if not cs:
            continue
        c.restart_count = int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            c.last = _termination_from(last)
            c.has_run = True
        if "running" in state:
            c.has_run = True
            c.started_at = parse_time(state["running"].get("startedAt"))
            c.state = RUNNING  # for _record_exit: it ran and is gone now
            t = Termination(
                exit_code=137,
                reason="ContainerStatusUnknown",
                started_at=c.started_at,
                finished_at=now,
                container_id=cs.get("containerID", ""),
                message="The container could not be located when the process runner restarted",
            )
            _record_exit(st, c, t, now, cfg)
        elif "terminated" in state:
            c.has_run = True
            t = _termination_from(state["terminated"])
            c.state = RUNNING
            _record_exit(st, c, t, now, cfg)


def _termination_from(d: JSON) -> Termination:
    return Termination(
        exit_code=int(d.get("exitCode", 0)),
        reason=str(d.get("reason", "")),
        started_at=parse_time(d.get("startedAt")),
        finished_at=parse_time(d.get("finishedAt")) or 0.0,
        container_id=str(d.get("containerID", "")),
        signal=d.get("signal"),
        message=str(d.get("message", "")),
    )


# --- the decision -----------------------------------------------------------


def is_deleting(st: PodState, pod: JSON) -> bool:
    return st.deleted or bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def plan(st: PodState, pod: JSON, now: float, cfg: Config) -> tuple[list[Action], float | None]:
    """What to do now for this pod, and when to look again (None: only on the next event)."""
    actions: list[Action] = []
    wakes: list[float] = []
    deleting = is_deleting(st, pod)

    if st.finished:
        return [], None
    if deleting:
        begin_stop(st, now, _grace(pod, cfg, deleting=True), STOP_DELETED)
    elif not st.terminal and st.start_time is not None:
        ads = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if ads is not None:
            if now >= st.start_time + float(ads):
                begin_stop(st, now, _grace(pod, cfg, deleting=False), STOP_DEADLINE)
            else:
                wakes.append(st.start_time + float(ads))

    if st.stopping_since is not None:
        assert st.stop_deadline is not None
        running = st.running()
        for c in running:
            if not c.term_sent:
                actions.append(SignalContainer(c.name, signal.SIGTERM))
            if now >= st.stop_deadline and not c.kill_sent:
                actions.append(SignalContainer(c.name, signal.SIGKILL))
        if running:
            if now < st.stop_deadline:
                wakes.append(st.stop_deadline)
            return actions, min(wakes) if wakes else None
        # Nothing runs any more.
        if not st.terminal:
            st.terminal = True
            if st.stop_reason == STOP_DEADLINE:
                st.phase = FAILED
                st.reason = "DeadlineExceeded"
                st.message = "Pod was active on the node longer than the specified deadline"
            else:
                st.phase = _final_phase(st)
        if deleting:
            if st.deleted:
                actions.append(Cleanup())
                st.finished = True
            elif not st.delete_requested:
                actions.append(DeletePod())
        return actions, None

    if st.terminal:
        return [], None

    if not st.sandbox_ready:
        if now >= st.sandbox_retry_at:
            actions.append(SetupSandbox())
        else:
            wakes.append(st.sandbox_retry_at)
        return actions, min(wakes) if wakes else None

    init_done = True
    for c in st.init:
        if c.sidecar and (c.state == RUNNING or (c.state == WAITING and c.has_run)):
            if c.state == WAITING:
                _due(c, now, actions, wakes)
            continue
        if c.succeeded:
            continue
        init_done = False
        if c.state == WAITING:
            _due(c, now, actions, wakes)
        break
    if init_done:
        for c in st.containers:
            if c.state == WAITING:
                _due(c, now, actions, wakes)
    return actions, min(wakes) if wakes else None


def _due(c: Container, now: float, actions: list[Action], wakes: list[float]) -> None:
    if c.restart_at is None or now >= c.restart_at:
        actions.append(StartContainer(c.name))
    else:
        wakes.append(c.restart_at)


def _final_phase(st: PodState) -> str:
    """The phase of a pod whose processes have all stopped for good."""
    if st.containers and all(c.succeeded for c in st.containers):
        return SUCCEEDED
    return FAILED


def compute_phase(st: PodState) -> str:
    """The kubelet's getPhase for a pod that is not (yet) terminal."""
    for c in st.init:
        if c.sidecar:
            if c.has_run:
                continue
            return PENDING
        if c.succeeded:
            continue
        if c.state == TERMINATED:
            return FAILED
        return PENDING
    running = waiting = stopped = succeeded = 0
    for c in st.containers:
        if c.state == RUNNING:
            running += 1
        elif c.state == TERMINATED:
            stopped += 1
            if c.succeeded:
                succeeded += 1
        elif c.last is not None:
            stopped += 1  # waiting to restart
        else:
            waiting += 1
    if waiting:
        return PENDING
    if running:
        return RUNNING_PHASE
    if not stopped:
        return PENDING
    if st.restart_policy == "Always":
        return RUNNING_PHASE
    if stopped == succeeded and all(c.state == TERMINATED for c in st.containers):
        return SUCCEEDED
    if st.restart_policy == "Never":
        return FAILED
    return RUNNING_PHASE


def settle(st: PodState, pod: JSON, now: float, cfg: Config) -> None:
    """Update the phase after events; latch a terminal phase once nothing runs (stopping sidecars first)."""
    if st.terminal or st.stopping_since is not None:
        return
    phase = compute_phase(st)
    if phase in TERMINAL_PHASES:
        if st.running():  # sidecars still run: stop them first
            begin_stop(st, now, _grace(pod, cfg, deleting=False), STOP_COMPLETED)
            st.phase = RUNNING_PHASE
            return
        st.terminal = True
    st.phase = phase
