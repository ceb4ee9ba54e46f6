"""Local mode: ``heterotrain run --local --pools nvidia-a100:2,huawei-ascend-910b:1 train.py``.

A supervisor plays the operator's part on one machine: it starts every worker
as a local process through the launcher, and maintains the membership file the
launchers read (ranks in pool order, address 127.0.0.1, a fresh free master
port every epoch, weights from the relative-throughput table of
:data:`heterotrain_contract.KNOWN_ACCELERATORS`, 1.0 for
other types).

Emulated devices (unless ``--no-emulate``): each training process (one per
emulated device) computes in a cgroup of its own whose CPU quota is its
device's speed times a per-unit quota (:mod:`heterotrain_runtime.cgroups`: 0.15 of a core at speed 1.0 by
default, ``--cpu-per-speed``, scaled down so that all devices together fit in
0.75 of the machine's cores), with one torch/OpenMP thread per process so that
the quota means what it says: a slower device really computes slower, the way
a kubelet enforces ``limits.cpu``.  The host's work (the launcher, torch's
communication threads) runs beside the devices' quotas, not in them
(:mod:`heterotrain_runtime.emulation`).  The training code is not told its speed.
Without usable cgroups (cgroup v1 cpu and memory controllers, root) local mode
stops with an error saying what is missing; ``--no-emulate`` runs every worker
at the machine's full speed instead.

When a worker dies the supervisor publishes a new epoch without it; with
``--replace`` it starts a new process for it and publishes another epoch with
it once the process is ready (its SDK wrote the handshake file).  Progress
(step, loss, samples/s per pool) is printed from rank 0's progress file.

Pool syntax: ``TYPE:COUNT[xPROCS][@SPEED]``: COUNT workers ("pods") of TYPE, each running PROCS
training processes (one per emulated device, default 1) under its launcher; SPEED (one device's)
overrides the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import heterotrain_contract as hc
from heterotrain_contract import Member, Membership
from heterotrain_runtime import cgroups, envvars
from heterotrain_runtime.cgroups import Cgroups, CgroupUnavailable
from heterotrain_runtime.emulation import DeviceGroups
from heterotrain_runtime.launcher import handshake_path

NO_EMULATION_HINT = "or run with --no-emulate: every worker at the machine's full speed"


@dataclass(frozen=True)
class PoolSpec:
    type: str
    count: int  # workers
    speed: float  # one device's
    processes: int = 1  # training processes (devices) per worker


def parse_pools(spec: str) -> list[PoolSpec]:
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        speed: float | None = None
        if "@" in part:
            part, s = part.rsplit("@", 1)
            speed = float(s)
        if ":" not in part:
            raise ValueError(f"pool {part!r}: expected TYPE:COUNT[xPROCS]")
        t, c = part.rsplit(":", 1)
        c, _, procs = c.partition("x")
        count, processes = int(c), int(procs or 1)
        if count < 1:
            raise ValueError(f"pool {t!r}: count must be >= 1")
        if not 1 <= processes <= hc.MAX_SLOTS:
            raise ValueError(f"pool {t!r}: processes per worker must be 1..{hc.MAX_SLOTS}")
        speed = speed if speed is not None else hc.relative_throughput(t)
        out.append(PoolSpec(t, count, speed, processes))
    if not out:
        raise ValueError("no pools")
    return out


def free_port(span: int = 1) -> int:
    """A free TCP port on 127.0.0.1 (``span`` consecutive ports free)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + span >= 65535:
            continue
        ok = True
        for p in range(port + 1, port + span):
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port")


@dataclass
class Worker:
    pod: str
    type: str
    speed: float  # one device's
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = ""
    generation: int = 0
    state: str = "new"  # new | starting | member | idle (alive, not a member) | done | dead
    returncode: int | None = None
    log_file: IO[bytes] | None = None
    relay: threading.Thread | None = None
    processes: int = 1  # training processes (emulated devices) under its launcher
    groups: DeviceGroups | None = None  # its host's group and a CPU quota per emulated device

    @property
    def handshake(self) -> str:
        """The handshake file of its first process."""
        return handshake_path(self.workdir, 0)

    def ready(self) -> bool:
        """Every process of the worker wrote its SDK handshake."""
        return all(os.path.exists(handshake_path(self.workdir, i)) for i in range(self.processes))


@dataclass
class LocalSupervisor:
    pools: list[PoolSpec]
    command: list[str]  # the training command, e.g. [python, train.py, args...]
    workdir: str = ""
    global_batch_size: int = 64
    steps: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_interval_steps: int = 0
    replace: bool = False
    max_replacements: int = 3
    emulate: bool = True  # a CPU quota per worker, proportional to its speed (cgroups)
    cpu_per_speed: float = cgroups.DEFAULT_CPU_PER_SPEED  # cores at speed 1.0, before fitting the machine
    cpu_budget_fraction: float = cgroups.DEFAULT_CPU_BUDGET_FRACTION
    cgroup_parent: str | None = None  # default: this process's own group
    max_restarts: int = 0
    heartbeat_timeout: float = 10.0
    rebalance_policy: str = "Throughput"
    rebalance_min_interval: float = 5.0
    sample_log_dir: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    output: str = "relay"  # relay | files | quiet
    log_every: int = 10
    completion_grace: float = 15.0
    initial_weights: str = "table"  # table: weight = relative throughput; equal: 1.0 (the SDK must learn)
    print_fn: Callable[[str], None] = print
    python: str = sys.executable

    def __post_init__(self) -> None:
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="heterotrain-local-")
        os.makedirs(self.workdir, exist_ok=True)
        self.membership_file = os.path.join(self.workdir, "membership.json")
        self.progress_file = os.path.join(self.workdir, "progress.jsonl")
        self.epoch = 0
        self.membership: Membership | None = None
        self.workers: list[Worker] = []
        for pool in self.pools:
            for i in range(pool.count):
                self.workers.append(
                    Worker(f"{pool.type}-{i}", pool.type, pool.speed, processes=pool.processes)
                )
        self.replacements = 0
        self._progress_pos = 0
        self.last_progress: dict[str, Any] | None = None
        self.events: list[tuple[float, str]] = []
        self._completed_at: float | None = None
        self.cgroups: Cgroups | None = None
        self.cores_per_speed: float | None = None  # set when the first worker starts (emulation only)

    # -- processes ---------------------------------------------------------------
    def _env(self, w: Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                hc.ENV_JOB_NAME: "local",
                hc.ENV_NAMESPACE: "local",
                hc.ENV_POD_NAME: w.pod,
                hc.ENV_ACCELERATOR: w.type,
                hc.ENV_BACKEND: "gloo",
                hc.ENV_MEMBERSHIP_SOURCE: hc.MEMBERSHIP_SOURCE_FILE_PREFIX + self.membership_file,
                hc.ENV_GLOBAL_BATCH_SIZE: str(self.global_batch_size),
                hc.ENV_MAX_RESTARTS: str(self.max_restarts),
                hc.ENV_HEARTBEAT_TIMEOUT: repr(self.heartbeat_timeout),
                hc.ENV_REBALANCE_POLICY: self.rebalance_policy,
                hc.ENV_REBALANCE_MIN_INTERVAL: repr(self.rebalance_min_interval),
                envvars.ENV_PROGRESS_FILE: self.progress_file,
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            }
        )
        if self.emulate:  # one compute thread: the CPU quota is the device's whole speed
            env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        if self.steps is not None:
            env[envvars.ENV_TOTAL_STEPS] = str(self.steps)
        if self.checkpoint_dir:
            env[hc.ENV_CHECKPOINT_DIR] = self.checkpoint_dir
            if self.checkpoint_interval_steps:
                env[hc.ENV_CHECKPOINT_INTERVAL_STEPS] = str(self.checkpoint_interval_steps)
        if self.sample_log_dir:
            env[envvars.ENV_SAMPLE_LOG_DIR] = self.sample_log_dir
        env.update(self.extra_env)
        return env

    def spawn(self, w: Worker) -> None:
        w.generation += 1
        w.workdir = os.path.join(self.workdir, "workers", f"{w.pod}.{w.generation}")
        shutil.rmtree(w.workdir, ignore_errors=True)
        os.makedirs(w.workdir)
        cmd = [
            self.python,
            "-m",
            hc.LAUNCH_MODULE,
            "launch",
            "--workdir",
            w.workdir,
            "--start-before-member",
            "--nproc-per-worker",
            str(w.processes),
            "--poll-interval",
            "0.1",
            "--",
            *self.command,
        ]
        stdout: Any
        if self.output == "relay":
            stdout = subprocess.PIPE
        elif self.output == "files":
            w.log_file = open(os.path.join(self.workdir, f"{w.pod}.{w.generation}.log"), "wb")  # noqa: SIM115
            stdout = w.log_file
        else:
            stdout = subprocess.DEVNULL
        w.groups = self._groups(w)
        w.proc = subprocess.Popen(
            cmd,
            env=self._env(w),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if w.groups is None else w.groups.host.preexec(),
        )
        if w.groups is not None:
            w.groups.launcher_pid = w.proc.pid
        w.state, w.returncode = "starting", None
        if self.output == "relay":
            w.relay = threading.Thread(target=self._relay, args=(w, w.proc), daemon=True)
            w.relay.start()
        per_device = "" if w.groups is None else f"{w.groups.device_cores[0]:.3g} cores"
        quota = per_device and (f", {per_device}" if w.processes == 1 else f", {w.processes} x {per_device}")
        self._event(f"started {w.pod} (generation {w.generation}{quota})")

    def _groups(self, w: Worker) -> DeviceGroups | None:
        """Fresh cgroups for the worker's new process (None without emulation)."""
        if not self.emulate:
            return None
        if self.cgroups is None:
            self.cgroups = Cgroups(
                "local",
                parent=self.cgroup_parent,
                hint=NO_EMULATION_HINT,
                cpu_shares=cgroups.CAPPED_OWNER_CPU_SHARES,  # every worker's group is capped
            )
            total = sum(x.speed * x.processes for x in self.workers)
            cores = self.cgroups.available_cores()
            self.cores_per_speed = cgroups.cpu_per_speed(
                total, cores, self.cpu_per_speed, self.cpu_budget_fraction
            )
            self._event(
                f"emulated devices: a CPU quota of {self.cores_per_speed:.3g} cores per unit of speed "
                f"({cores:g} cores here)"
            )
        assert self.cores_per_speed is not None
        if w.groups is not None:
            w.groups.remove()
        # one device's quota per training process under the worker's launcher
        device_cores = [w.speed * self.cores_per_speed] * w.processes
        return DeviceGroups.make(self.cgroups, f"{w.pod}.{w.generation}", device_cores)

    def _relay(self, w: Worker, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            if text.startswith("[heterotrain] step"):
                continue  # progress is printed by the supervisor
            self.print_fn(f"[{w.pod}] {text}")

    def user_pid(self, pod: str, local_rank: int = 0) -> int | None:
        """Pid of a worker's user process ``local_rank`` (from its SDK handshake), if it is up."""
        for w in self.workers:
            if w.pod == pod:
                try:
                    with open(handshake_path(w.workdir, local_rank), encoding="utf-8") as f:
                        return int(json.load(f)["pid"])
                except (FileNotFoundError, ValueError, KeyError):
                    return None
        return None

    def add_worker(self, pod: str, type_: str, speed: float | None = None, processes: int = 1) -> Worker:
        """A new worker process (not a member until published)."""
        w = Worker(
            pod, type_, speed if speed is not None else hc.relative_throughput(type_), processes=processes
        )
        self.workers.append(w)
        self.spawn(w)
        return w

    def kill(self, pod: str, sig: int = signal.SIGKILL) -> None:
        """Kill a worker (its launcher and its user process)."""
        for w in self.workers:
            if w.pod == pod and w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, sig)
                self._event(f"killed {pod} with signal {sig}")

    def _event(self, text: str) -> None:
        self.events.append((time.time(), text))
        if self.output != "quiet":
            self.print_fn(f"[supervisor] {text}")

    # -- membership --------------------------------------------------------------
    def publish(self, pods: Sequence[str] | None = None) -> None:
        """Publish a new epoch: every live member, or exactly ``pods`` (in that rank order).

        Workers left out of an explicit list stay alive but idle (their SDK
        waits to be a member again), like a scale-down that keeps the pods.
        """
        if pods is None:
            members = [w for w in self.workers if w.state == "member"]
        else:
            by_pod = {w.pod: w for w in self.workers}
            members = [by_pod[p] for p in pods]
            for w in self.workers:
                if w in members and w.state in ("starting", "idle"):
                    w.state = "member"
                elif w not in members and w.state == "member":
                    w.state = "idle"
        self.epoch += 1
        world = tuple(
            Member(
                pod=w.pod,
                rank=r,
                type=w.type,
                address="127.0.0.1",
                weight=(1.0 if self.initial_weights == "equal" else w.speed) * w.processes,
                slots=w.processes,
            )
            for r, w in enumerate(members)
        )
        self.membership = Membership(epoch=self.epoch, world=world, master_port=free_port())
        hc.write_membership_file(self.membership_file, self.membership)
        self._event(
            f"epoch {self.epoch}: " + (", ".join(f"{m.rank}:{m.pod}" for m in world) if world else "(empty)")
        )

    # -- main loop ---------------------------------------------------------------
    def start(self, ready_timeout: float = 120.0, pods: Sequence[str] | None = None) -> None:
        """Spawn every worker, wait until they are ready, publish epoch 1 (all, or ``pods``)."""
        for w in self.workers:
            self.spawn(w)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            self._reap()
            self._sweep()
            if all(w.state != "starting" or w.ready() for w in self.workers):
                break
            time.sleep(0.05)
        if pods is None:
            for w in self.workers:
                if w.state == "starting":
                    w.state = "member"
        self.publish(pods)

    def _reap(self) -> list[Worker]:
        ended = []
        for w in self.workers:
            if w.proc is not None and w.state in ("starting", "member", "idle") and w.proc.poll() is not None:
                w.returncode = w.proc.returncode
                was_member = w.state == "member"
                w.state = "done" if w.returncode == 0 and was_member else "dead"
                if w.log_file is not None:
                    w.log_file.close()
                if w.groups is not None:
                    w.groups.remove()  # what the launcher left running goes with it
                    w.groups = None
                self._event(f"{w.pod} exited with {w.returncode}")
                ended.append(w)
        return ended

    def _sweep(self) -> None:
        """Emulated devices: training processes into their devices' groups, communication threads out."""
        for w in self.workers:
            if w.groups is not None and w.state in ("starting", "member", "idle"):
                w.groups.sweep()

    def poll_once(self) -> int | None:
        """One supervision round; returns the job's exit code once it is over.

        The job is over when a member finished (exit 0), like a Kubernetes job
        whose first worker succeeds: the other members finish the same step, so
        they get ``completion_grace`` seconds to exit by themselves (workers
        that joined after the end would wait forever) and no new epoch is
        published any more.
        """
        ended = self._reap()
        self._sweep()
        if self._completed_at is None and any(w.state == "done" for w in ended):
            self._completed_at = time.monotonic()
            self._event("training complete")
        if self._completed_at is not None:
            self._print_progress()
            live = [w for w in self.workers if w.state in ("member", "starting", "idle")]
            if not live or time.monotonic() - self._completed_at > self.completion_grace:
                return 0
            return None
        changed = False
        for w in ended:
            if w.state == "dead" and w.pod in self._member_pods():
                changed = True
                if self.replace and self.replacements < self.max_replacements:
                    self.replacements += 1
                    self.spawn(w)
        if changed:
            self.publish()
        ready = [w for w in self.workers if w.state == "starting" and w.generation > 1 and w.ready()]
        if ready:
            for w in ready:
                w.state = "member"
            self.publish()
        self._print_progress()
        members = [w for w in self.workers if w.state == "member"]
        if not members and not any(w.state == "starting" for w in self.workers):
            return 1
        return None

    def _member_pods(self) -> set[str]:
        return {m.pod for m in self.membership.world} if self.membership else set()

    def progress(self) -> list[dict[str, Any]]:
        try:
            with open(self.progress_file, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip().endswith("}")]
        except FileNotFoundError:
            return []

    def _print_progress(self) -> None:
        try:
            with open(self.progress_file, encoding="utf-8") as f:
                f.seek(self._progress_pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind("\n")
        if end < 0:
            return
        self._progress_pos += len(chunk[: end + 1].encode("utf-8"))
        for line in chunk[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self.last_progress = rec
            if self.output != "quiet" and self.log_every and rec["step"] % self.log_every == 0:
                pools = "  ".join(f"{t} {sps:7.1f}/s" for t, sps in rec["pools"].items())
                self.print_fn(
                    f"step {rec['step']:5d}  loss {rec['loss']:.4f}  epoch {rec['epoch']}  "
                    f"world {rec['world']}  split {rec['split']}  {rec['samples_per_second']:7.1f} samples/s  "
                    f"[{pools}]"
                )

    def supervise_until(self, cond: Callable[[], bool], timeout: float, poll: float = 0.05) -> int | None:
        """Supervise until ``cond()`` holds (returns None) or the job ends (returns its exit code).

        Raises TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.poll_once()
            if rc is not None:
                return rc
            if cond():
                return None
            time.sleep(poll)
        raise TimeoutError(f"supervision timed out after {timeout:.0f}s; events {self.events}")

    def run(self, timeout: float | None = None, poll: float = 0.1) -> int:
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                rc = self.poll_once()
                if rc is not None:
                    return rc
                if deadline is not None and time.monotonic() > deadline:
                    self._event("timeout")
                    return 124
                time.sleep(poll)
        finally:
            self.shutdown()

    def shutdown(self, grace: float = 10.0) -> None:
        """SIGTERM every live worker, then SIGKILL after ``grace`` seconds."""
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        for w in live:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()
        for w in self.workers:
            if w.proc is not None:
                # the launcher's process group also holds its user process
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
            if w.log_file is not None and not w.log_file.closed:
                w.log_file.close()
            w.groups = None
        if self.cgroups is not None:
            self.cgroups.close()  # kills anything left in the workers' groups, removes them
            self.cgroups = None


def run_local(argv: Sequence[str] | None, args: Any) -> int:
    """Entry of ``heterotrain run --local`` (``args`` from :mod:`heterotrain_runtime.cli`)."""
    pools = parse_pools(args.pools)
    script_args = list(args.script_args or [])
    if script_args and script_args[0] == "--":
        script_args = script_args[1:]
    command = [sys.executable, args.script, *script_args]
    sup = LocalSupervisor(
        pools=pools,
        command=command,
        workdir=args.workdir or "",
        global_batch_size=args.global_batch_size,
        steps=args.steps,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_steps=args.checkpoint_interval,
        replace=args.replace,
        emulate=not args.no_emulate,
        cpu_per_speed=args.cpu_per_speed,
        cgroup_parent=args.cgroup_parent,
        max_restarts=args.max_restarts,
        heartbeat_timeout=args.heartbeat_timeout,
        rebalance_policy=args.rebalance_policy,
        rebalance_min_interval=args.rebalance_min_interval,
        log_every=args.log_every,
        initial_weights=args.initial_weights,
    )
    total = sum(p.count for p in pools)
    print(
        f"[supervisor] {total} workers: "
        + ", ".join(
            f"{p.type} x{p.count}"
            + (f" ({p.processes} processes each)" if p.processes > 1 else "")
            + f" (speed {p.speed:g})"
            for p in pools
        )
        + f"; global batch {args.global_batch_size}; workdir {sup.workdir}",
        flush=True,
    )

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        rc = sup.run(timeout=args.timeout)
    except CgroupUnavailable as e:
        print(
            f"heterotrain run --local: cannot emulate the devices' speeds: {e}", file=sys.stderr, flush=True
        )
        return 2
    except KeyboardInterrupt:
        print("[supervisor] interrupted; stopping workers", flush=True)
        sup.shutdown()
        return 130
    last = sup.last_progress
    if last is not None:
        print(
            f"[supervisor] finished at step {last['step']} with loss {last['loss']:.4f} (exit {rc})",
            flush=True,
        )
    return rc
