"""The launcher injected into every worker: ``python -m heterotrain_runtime launch -- CMD...``.

It learns the membership (Kubernetes ``status.membership`` or a local file),
waits until its pod is a member, and runs ``CMD`` once per accelerator of the
pod (the member's ``slots``), torchrun-style: each process gets RANK, WORLD_SIZE
(every process of every pod), LOCAL_RANK (the device it binds), LOCAL_WORLD_SIZE,
GROUP_RANK (the pod's rank), MASTER_ADDR and MASTER_PORT, plus HeteroTrain's
(epoch, its weight, its share of the batch...), so an unmodified torchrun script
works.  Then it supervises the processes:

* a process that fails (exit code != 0) is restarted in place, with the same
  local rank, up to ``HETEROTRAIN_MAX_RESTARTS`` failures of the pod's processes
  together; the other processes run on.  A process that uses the SDK is
  restarted at once, even while its pod is out of the world: the launcher sets
  the pod's ``heterotrain.io/ProcessesReady`` condition False, the operator
  re-forms the world without the pod (the survivors do not wait for a cold
  start), and the launcher sets it True once the restarted process is ready to
  join; the operator then takes the pod back.  Past that, the launcher stops
  the others and exits with the failed process's code: the pod fails and the
  operator replaces it.  A process
  that ran out of memory (``EXIT_OUT_OF_MEMORY`` from the SDK, or OOM-killed by
  the kernel: the container's memory cgroup counted it) is not restarted in
  place: the pod fails at once, and the operator lowers the type's micro-batch
  cap.  A restart waits out the restart backoff, is served by a warm
  interpreter (torch already imported) when the command is a python one and
  ``HETEROTRAIN_WARM_RESTART=1``, and the launcher beats for the process until
  it beats itself (see :mod:`heterotrain_runtime.restarts`);
* a new membership epoch restarts the processes with the new world, unless they
  use the SDK: the SDK writes the handshake file named by
  ``HETEROTRAIN_SDK_HANDSHAKE_FILE`` (one per process) and re-forms its process
  groups itself at a step boundary; the launcher then only mirrors the
  membership to the file the SDK reads;
* SIGTERM/SIGINT are forwarded to every process (the SDK checkpoints and exits);
  the launcher exits with the first non-zero code of its processes, else 0.

The number of processes is fixed when the pod first becomes a member (the
operator derives a member's slots from the accelerators the pod requested), or
by ``--nproc-per-worker`` with ``--start-before-member``.  A pod that starts
before it is a member (a new worker of a job that runs the SDK) sets its
ProcessesReady condition False at once and True when every process has written
its handshake: the operator takes it into the world then, and the job trains on
without it until then.

Only the standard library is imported here (no torch): the launcher starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import heterotrain_contract as hc
from heterotrain_contract import Membership
from heterotrain_runtime import envvars
from heterotrain_runtime.membership import FileSource, MembershipSource, source_from_env
from heterotrain_runtime.oom import oom_kills
from heterotrain_runtime.restarts import Beacon, ProcessesCondition, RestartPolicy, Standby

log = logging.getLogger("heterotrain.launcher")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the SDK also watches its parent
        pass


class Wakeup:
    """Wakes the launcher's loop; a signal handler may give it (a byte into a pipe). A
    ``threading.Event`` may not: its ``set`` takes a lock, and a second SIGCHLD that arrives while the
    handler of the first holds it deadlocks the launcher (two processes that exit together)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def set(self) -> None:
        if self._w < 0:  # closed: the launcher is done
            return
        with contextlib.suppress(OSError):  # a full pipe wakes the loop as well
            os.write(self._w, b"\0")

    def wait(self, timeout: float) -> None:
        """Until woken or ``timeout`` seconds; a wake-up given meanwhile is used up."""
        ready, _, _ = select.select([self._r], [], [], timeout)
        while ready:
            try:
                ready = [self._r] if os.read(self._r, 4096) else []
            except BlockingIOError:
                ready = []

    def close(self) -> None:
        fds, self._r, self._w = (self._r, self._w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def exit_code(returncode: int) -> int:
    """Shell-style exit code of a child: 128+N when it was killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def handshake_path(workdir: str, local_rank: int) -> str:
    """The SDK handshake file of the process with ``local_rank`` (one per process of the pod)."""
    return os.path.join(workdir, f"sdk-handshake-{local_rank}.json")


def pool_of(membership: Membership, pod: str, local_rank: int = 0) -> tuple[int, int]:
    """``(index, count)`` of a process among the processes of its accelerator type."""
    me = membership.process(pod, local_rank)
    assert me is not None
    same = [p.rank for p in membership.processes if p.type == me.type]
    return same.index(me.rank), len(same)


def batch_split(membership: Membership, global_batch: int, policy: str) -> list[int]:
    """Every process's share of the global batch, in global rank order (weight per process)."""
    weights = [1.0 if policy.lower() == "equal" else p.weight for p in membership.processes]
    return hc.split_global_batch(global_batch, weights)


def child_env(
    base: Mapping[str, str],
    membership: Membership,
    pod: str,
    restarts: int,
    membership_file: str,
    handshake_file: str,
    local_rank: int = 0,
) -> dict[str, str]:
    """The environment of the user process ``local_rank`` of ``pod`` in ``membership`` (torchrun's names)."""
    me = membership.process(pod, local_rank)
    if me is None:
        raise ValueError(f"{pod} has no process {local_rank} in epoch {membership.epoch}")
    env = dict(base)
    env.update(
        {
            envvars.ENV_RANK: str(me.rank),
            envvars.ENV_WORLD_SIZE: str(membership.world_size),
            envvars.ENV_LOCAL_RANK: str(me.local_rank),
            envvars.ENV_LOCAL_WORLD_SIZE: str(me.local_world_size),
            envvars.ENV_GROUP_RANK: str(me.group_rank),
            envvars.ENV_GROUP_WORLD_SIZE: str(membership.pod_count),
            envvars.ENV_ROLE_RANK: str(me.rank),
            envvars.ENV_ROLE_WORLD_SIZE: str(membership.world_size),
            envvars.ENV_MASTER_ADDR: membership.master_addr,
            envvars.ENV_MASTER_PORT: str(membership.master_port),
            envvars.ENV_EPOCH: str(membership.epoch),
            envvars.ENV_WEIGHT: repr(me.weight),
            envvars.ENV_RESTART_COUNT: str(restarts),
            hc.ENV_MEMBERSHIP_SOURCE: hc.MEMBERSHIP_SOURCE_FILE_PREFIX + membership_file,
            envvars.ENV_SDK_HANDSHAKE_FILE: handshake_file,
        }
    )
    env.update(_per_device(base, me.local_rank))
    idx, count = pool_of(membership, pod, local_rank)
    env[envvars.ENV_POOL] = f"{idx}/{count}"
    gb = base.get(hc.ENV_GLOBAL_BATCH_SIZE)
    if gb:
        split = batch_split(membership, int(gb), base.get(hc.ENV_REBALANCE_POLICY, "Throughput"))
        env[envvars.ENV_LOCAL_BATCH_SIZE] = str(split[me.rank])
        env[envvars.ENV_BATCH_SPLIT] = ",".join(map(str, split))
    return env


def early_env(
    base: Mapping[str, str],
    local_rank: int,
    nproc: int,
    restarts: int,
    membership_file: str,
    handshake_file: str,
) -> dict[str, str]:
    """The environment of a process started before its pod is a member (no rank yet: the SDK waits)."""
    env = dict(base)
    env.update(
        {
            envvars.ENV_LOCAL_RANK: str(local_rank),
            envvars.ENV_LOCAL_WORLD_SIZE: str(nproc),
            envvars.ENV_RESTART_COUNT: str(restarts),
            hc.ENV_MEMBERSHIP_SOURCE: hc.MEMBERSHIP_SOURCE_FILE_PREFIX + membership_file,
            envvars.ENV_SDK_HANDSHAKE_FILE: handshake_file,
        }
    )
    env.update(_per_device(base, local_rank))
    return env


def _per_device(base: Mapping[str, str], local_rank: int) -> dict[str, str]:
    """What each process of a pod needs of its own: its metrics port (the pod's + its local rank)."""
    port = base.get(hc.ENV_METRICS_PORT)
    if port and port.isdigit() and int(port) > 0:
        return {hc.ENV_METRICS_PORT: str(int(port) + local_rank)}
    return {}


@dataclass
class Child:
    """One training process of the pod (one per accelerator), and where it stands."""

    local_rank: int
    handshake_file: str
    proc: subprocess.Popen[bytes] | None = None
    epoch: int = -1  # the membership epoch it was started in (-1: started before a membership)
    waiting: bool = False  # to be (re)started once the pod is a member
    returncode: int | None = None  # set once it ended for good (not to be restarted)
    restart_at: float = 0.0  # a waiting restart starts no earlier (monotonic; the restart backoff)
    restarting_since: float | None = None  # failed then, not beating by itself yet (monotonic)
    rejoins: bool = False  # an SDK process restarting: the world goes on without the pod until it is back
    started_at: float | None = None  # when the running process was started (monotonic)
    # killed for not being ready within the startup timeout (see Launcher._end_stuck_starts)
    stuck: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None and self.proc.poll() is None


class Launcher:
    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        source: MembershipSource | None = None,
        poll_interval: float | None = None,
        stop_timeout: float = 30.0,
        workdir: str | None = None,
        start_before_member: bool = False,
        nproc: int = 1,
        condition: ProcessesCondition | None = None,
    ) -> None:
        if not command:
            raise ValueError("nothing to launch")
        if not 1 <= nproc <= hc.MAX_SLOTS:
            raise ValueError(f"nproc must be 1..{hc.MAX_SLOTS}, got {nproc}")
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.pod = self.env.get(hc.ENV_POD_NAME, "")
        if not self.pod:
            raise ValueError(f"{hc.ENV_POD_NAME} is not set")
        self.source = source if source is not None else source_from_env(self.env)
        # A file is cheap to poll; the API server is asked once a second per worker.
        default_poll = "0.2" if isinstance(self.source, FileSource) else "1.0"
        self.poll = (
            poll_interval
            if poll_interval is not None
            else float(self.env.get(envvars.ENV_MEMBERSHIP_POLL_SECONDS, default_poll))
        )
        self.max_restarts = int(self.env.get(hc.ENV_MAX_RESTARTS, envvars.DEFAULT_MAX_RESTARTS))
        self.startup_timeout = float(
            self.env.get(hc.ENV_STARTUP_TIMEOUT) or hc.DEFAULT_STARTUP_TIMEOUT_SECONDS
        )
        self.stop_timeout = stop_timeout
        if workdir:
            os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"heterotrain-{self.pod}-")
        self._own_workdir = not workdir  # made here: removed when the launcher ends
        # Start the user processes before this pod is a member (SDK scripts only: the SDK waits for
        # the membership itself, and its handshake files tell a supervisor that it is ready to join).
        # How many: ``nproc`` then; otherwise the member's slots in the first membership it is in.
        self.start_before_member = start_before_member
        self.nproc = nproc
        if isinstance(self.source, FileSource):
            self.membership_file = self.source.path  # the children read the same file
            self._mirror = False
        else:
            self.membership_file = os.path.join(self.workdir, "membership.json")
            self._mirror = True
        self.children: list[Child] = []
        self.membership: Membership | None = None
        self.restarts = 0  # failure restarts of any of the pod's processes
        self.last_exit: int | None = None  # exit code of the pod's process that failed last
        self.policy = RestartPolicy(self.env)
        self.standby = Standby(self.command, self.env, _die_with_parent)
        self.beacon = Beacon(
            self.pod, self.env.get(hc.ENV_NODE_NAME, ""), self.env.get(hc.ENV_ACCELERATOR, "")
        )
        self.condition = condition or ProcessesCondition.from_env(self.pod, self.env)
        self._finished = False  # a process completed: the job is done, nothing is restarted any more
        self._joining = False  # started before it was a member: says when its processes are ready to join
        self._oom_kills = oom_kills()  # the container's OOM kills so far (None: not readable here)
        self._stopping: int | None = None  # the signal we were asked to stop with
        self._wake = Wakeup()
        from heterotrain_runtime.metrics import RuntimeMetrics

        self.metrics = RuntimeMetrics(envvars.ENV_LAUNCHER_METRICS_PORT)

    @property
    def child(self) -> subprocess.Popen[bytes] | None:
        """The first process (local rank 0)."""
        return self.children[0].proc if self.children else None

    # -- membership ----------------------------------------------------------
    def _read(self) -> Membership | None:
        try:
            m = self.source.read()
        except Exception as e:  # API hiccups: keep the last membership
            log.warning("cannot read membership from %s: %s", self.source.describe(), e)
            return self.membership
        if m is not None and (self.membership is None or m.epoch != self.membership.epoch):
            if self.membership is not None and m.epoch < self.membership.epoch:
                return self.membership  # stale read; epochs only move forward
            if self._mirror:
                hc.write_membership_file(self.membership_file, m)
            self.metrics.membership_epoch.set(m.epoch)
        if m is not None and (self.membership is None or m.epoch >= self.membership.epoch):
            self.membership = m
        return self.membership

    def _wait_member(self) -> Membership | None:
        """Block until this pod is in the membership (None if asked to stop)."""
        announced = False
        while self._stopping is None:
            m = self._read()
            if m is not None and m.member(self.pod) is not None:
                return m
            if not announced:
                log.info("%s waiting to become a member (%s)", self.pod, self.source.describe())
                announced = True
            self._wake.wait(self.poll)
        return None

    # -- the user processes --------------------------------------------------
    def _start(self, c: Child, m: Membership | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(c.handshake_file)
        me = m.process(self.pod, c.local_rank) if m is not None else None
        c.waiting = False
        if m is None or me is None:
            # Early start: no rank yet; the SDK reads the membership file itself.
            env = early_env(
                self.env,
                c.local_rank,
                len(self.children),
                self.restarts,
                self.membership_file,
                c.handshake_file,
            )
            log.info("%s[%d]: starting before membership (restart %d)", self.pod, c.local_rank, self.restarts)
            c.epoch = -1
        else:
            env = child_env(
                self.env, m, self.pod, self.restarts, self.membership_file, c.handshake_file, c.local_rank
            )
            log.info(
                "%s[%d]: starting rank %d/%d of epoch %d (restart %d): %s",
                self.pod,
                c.local_rank,
                me.rank,
                m.world_size,
                m.epoch,
                self.restarts,
                " ".join(self.command),
            )
            c.epoch = m.epoch
        if self.last_exit is not None:
            env[envvars.ENV_LAST_EXIT_CODE] = str(self.last_exit)
        warm = self.standby.take(env) if c.restarting_since is not None else None
        c.proc = warm or subprocess.Popen(self.command, env=env, preexec_fn=_die_with_parent)
        c.started_at, c.stuck = time.monotonic(), False

    def _start_when_member(self, c: Child) -> None:
        """Start ``c`` now if it may run (a member, or early starts allowed), else once the pod is a member."""
        m = self._read()
        member = m is not None and m.process(self.pod, c.local_rank) is not None
        if self.start_before_member or member or c.rejoins:  # an SDK process waits for the membership itself
            self._start(c, m)
        else:
            c.proc, c.waiting = None, True

    def sdk_handles_epochs(self, c: Child | None = None) -> bool:
        if self.start_before_member:
            return True
        path = (c or self.children[0]).handshake_file
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (FileNotFoundError, ValueError):
            return False
        return bool(info.get("handlesEpochs"))

    def _stop(self, children: Sequence[Child], sig: int = signal.SIGTERM) -> None:
        """Signal every running one of ``children``, wait for them (SIGKILL after ``stop_timeout``)."""
        live = [c for c in children if c.running]
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(sig)
        for c in live:
            assert c.proc is not None
            try:
                c.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = signum
        for c in self.children:
            if c.running:
                assert c.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signum)
        self._wake.set()

    # -- main loop -----------------------------------------------------------
    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: self._wake.set())  # a process ended: look at once
        try:
            return self._run()
        finally:
            self.standby.close()
            self.beacon.close()
            self.condition.close()
            self._wake.close()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self) -> int:
        if self.start_before_member:
            m = self._read()
            nproc = self.nproc
        else:
            m = self._wait_member()
            if m is None:
                return 128 + (self._stopping or signal.SIGTERM)
            member = m.member(self.pod)
            assert member is not None
            nproc = member.slots
        self.children = [Child(i, handshake_path(self.workdir, i)) for i in range(nproc)]
        if self.start_before_member and (m is None or m.member(self.pod) is None):
            # Not a member yet: the operator takes the pod in once every process is ready to join (the
            # others train on meanwhile, instead of waiting for this cold start in a rendezvous).
            self._joining = True
            self.condition.set(False, f"{nproc} processes starting", hc.REASON_PROCESSES_STARTING)
        for c in self.children:
            self._start(c, m)
        return self._supervise()

    def _supervise(self) -> int:
        """Restart failed processes, follow epochs, forward signals; the pod's exit code at the end."""
        while True:
            for c in self.children:
                rc = c.proc.poll() if c.proc is not None and c.returncode is None else None
                if rc is not None:
                    code = self._on_exit(c, rc)
                    if code is not None:
                        return code
            if all(c.returncode is not None for c in self.children):
                return self._exit_code()
            if self._stopping is not None:
                # Forwarded already; wait for the processes to checkpoint and leave.
                for c in self.children:
                    if c.proc is not None and c.returncode is None:
                        c.returncode = c.proc.wait()
                        log.info("%s[%d]: user process exited with %d", self.pod, c.local_rank, c.returncode)
                    elif c.returncode is None:
                        c.returncode = -self._stopping  # never started: as if the signal ended it
                return self._exit_code()
            for c in self.children:
                if c.waiting and time.monotonic() >= c.restart_at:
                    self._start_when_member(c)
            self._follow_epoch()
            self._end_stuck_starts()
            self._care_for_restarts()
            self._wake.wait(min(self.poll, 1.0))

    def _care_for_restarts(self) -> None:
        """Beat for starting and restarting processes until they beat themselves (a slow start is not a
        hang: rank 0 hears "starting"); keep a warm interpreter ready once every process trains."""
        m = self.membership
        if self._joining and all(os.path.exists(c.handshake_file) for c in self.children):
            self._joining = False
            self.condition.set(True, f"{len(self.children)} processes ready to join")
        for c in self.children:
            if c.restarting_since is None:
                if (
                    c.running
                    and c.started_at is not None
                    and m is not None
                    and not os.path.exists(c.handshake_file)
                ):
                    self.beacon.beat(m, c.local_rank, c.started_at, self.restarts, self.last_exit)
                continue
            if os.path.exists(c.handshake_file):
                c.restarting_since = None  # its SDK beats from now on
                if c.rejoins:
                    c.rejoins = False
                    if not any(x.rejoins for x in self.children) and not self._joining:
                        message = hc.restart_message(self.restarts, self.last_exit, c.local_rank)
                        self.condition.set(True, f"{message}: ready to join")
            elif m is not None:
                self.beacon.beat(m, c.local_rank, c.restarting_since, self.restarts, self.last_exit)
        if (
            all(os.path.exists(c.handshake_file) for c in self.children if c.running)
            and self.standby.prepare()
        ):
            self._oom_kills = (
                oom_kills()
            )  # the warm interpreter's death (an OOM kill takes it first) is no process's

    def _end_stuck_starts(self) -> None:
        """Kill an SDK process that is not ready (no handshake) ``startup_timeout`` seconds after it started.

        Until then a slow start is beaten for (rank 0 hears "starting", not silence); past it the process
        is stuck before training (an import, a dataset or a device that never comes up) and holds its pod's
        slot without ever joining.  Its end is a failure like any other: restarted in place after the
        backoff, or the pod's end once no restarts are left (the operator replaces it then)."""
        if not self.start_before_member:
            return  # a plain script writes no handshake: nothing tells its slow start from a stuck one
        now = time.monotonic()
        for c in self.children:
            if (
                c.running
                and not c.stuck
                and c.started_at is not None
                and now - c.started_at > self.startup_timeout
                and not os.path.exists(c.handshake_file)
            ):
                assert c.proc is not None
                log.error(
                    "%s[%d]: not ready to train %gs after it started (startup timeout): killing it",
                    self.pod,
                    c.local_rank,
                    self.startup_timeout,
                )
                c.stuck = True
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()

    def _on_exit(self, c: Child, rc: int) -> int | None:
        """A process ended: done, restarted in place, or the pod's end (its exit code)."""
        if self._stopping is not None or rc == 0 or self._finished:
            log.info("%s[%d]: user process exited with %d", self.pod, c.local_rank, rc)
            c.returncode = rc
            self._finished = self._finished or rc == 0
            return None
        oom = self._out_of_memory(rc) and not c.stuck
        if oom or self.restarts >= self.max_restarts:
            why = (
                "out of memory: the pod fails so that its type's micro-batch cap is lowered"
                if oom
                else "no restarts left"
            )
            log.error("%s[%d]: user process failed (%d), %s", self.pod, c.local_rank, rc, why)
            c.returncode = rc
            self._stop([x for x in self.children if x is not c])
            return exit_code(rc)
        self.restarts += 1
        self.last_exit = exit_code(rc)
        self.metrics.restarts.labels(reason="startup_timeout" if c.stuck else "failure").inc()
        delay = self.policy.failed()
        log.warning(
            "%s[%d]: user process failed (%d); restart %d/%d in place%s",
            self.pod,
            c.local_rank,
            rc,
            self.restarts,
            self.max_restarts,
            f" in {delay:g}s (backoff)" if delay else "",
        )
        c.restarting_since = time.monotonic()
        # An SDK process (it wrote its handshake) re-forms by itself: the operator leaves the pod out of
        # the world until the restarted process is ready, so the others go on at once.
        c.rejoins = self.sdk_handles_epochs(c)
        if c.rejoins:
            self.condition.set(False, hc.restart_message(self.restarts, self.last_exit, c.local_rank))
        c.proc, c.waiting, c.restart_at = None, True, time.monotonic() + delay
        if not delay:
            self._start_when_member(c)
        return None

    def _out_of_memory(self, rc: int) -> bool:
        """The process ran out of memory (the framework said so, or the kernel OOM-killed it): a restart
        in place would run out again at the same micro-batch."""
        if rc == hc.EXIT_OUT_OF_MEMORY:
            return True
        if rc != -signal.SIGKILL:
            return False
        before, self._oom_kills = self._oom_kills, oom_kills()
        return before is not None and self._oom_kills is not None and self._oom_kills > before

    def _follow_epoch(self) -> None:
        """A new epoch restarts the processes that do not re-form by themselves (plain scripts)."""
        m = self._read()
        if m is None:
            return
        stale = [  # (a restarted SDK process that has not written its handshake yet follows epochs too)
            c
            for c in self.children
            if c.running and c.epoch != m.epoch and not c.rejoins and not self.sdk_handles_epochs(c)
        ]
        if not stale:
            return
        log.info("%s: new epoch %d: restarting %d user processes", self.pod, m.epoch, len(stale))
        self._stop(stale)
        if self._stopping is not None:
            return
        for c in stale:
            self.metrics.restarts.labels(reason="epoch").inc()
            self._start_when_member(c)

    def _exit_code(self) -> int:
        """The pod's exit code: the first process's that failed, else 0."""
        codes = [exit_code(c.returncode) for c in self.children if c.returncode is not None]
        return next((x for x in codes if x != 0), 0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="heterotrain launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--poll-interval", type=float, default=None, help="membership poll period (s)")
    p.add_argument(
        "--stop-timeout", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL on restart"
    )
    p.add_argument("--workdir", default=None, help="where the handshake (and mirrored membership) files live")
    p.add_argument(
        "--start-before-member",
        action="store_true",
        default=hc.truthy(os.environ.get(hc.ENV_START_BEFORE_MEMBER)),
        help="start the user process at once (SDK scripts only); it waits for its membership itself",
    )
    p.add_argument(
        "--nproc-per-worker",
        type=int,
        default=int(os.environ.get(hc.ENV_NPROC_PER_WORKER) or 1),
        help="processes to start before a membership names them (with --start-before-member); "
        "otherwise the member's slots decide",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = p.parse_args(argv)
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        p.error("missing command after --")
    logging.basicConfig(
        level=os.environ.get(envvars.ENV_LOG_LEVEL, "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    launcher = Launcher(
        cmd,
        poll_interval=args.poll_interval,
        stop_timeout=args.stop_timeout,
        workdir=args.workdir,
        start_before_member=args.start_before_member,
        nproc=args.nproc_per_worker,
    )
    return launcher.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
