"""What the launcher does around an in-place restart (standard library only).

* :class:`RestartPolicy` — when: at once after the first failure of the failure window, then after the
  contract's exponential backoff (``HETEROTRAIN_RESTART_BACKOFF_SECONDS``, ``..._LIMIT_SECONDS``,
  ``HETEROTRAIN_FAILURE_WINDOW_SECONDS``, set by the operator from ``spec.faultTolerance``);
* :class:`Standby` — how fast: a warm interpreter that has imported torch and the SDK already waits for
  the next restart and becomes the restarted process (a cold ``import torch`` took 4.5-7 s on the loaded
  development machine, longer than the rest of a restart together); ``HETEROTRAIN_WARM_RESTART=0`` turns
  it off (it holds the memory of an imported torch);
* :class:`Beacon` — what the world sees meanwhile: the launcher beats for the restarting process (phase
  "starting", the restart count, the failed process's exit code) until the process beats itself, so that
  rank 0 neither takes a slow start for a hang nor waits to report the restart;
* :class:`ProcessesCondition` — what the operator sees: the pod's ``heterotrain.io/ProcessesReady``
  condition, False while a process restarts (the operator re-forms the world without the pod at once,
  instead of the survivors waiting out a cold start), True once it is ready to join again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import heterotrain_contract as hc
from heterotrain_contract import Membership
from heterotrain_runtime import envvars
from heterotrain_runtime.membership import KubernetesSource, status_reporter
from heterotrain_runtime.trainer.liveness import STARTING, Beat, rank0_address

log = logging.getLogger("heterotrain.launcher")


class RestartPolicy:
    """The failures of the pod's processes within the window, and the delay before the next restart."""

    def __init__(self, env: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.base = _seconds(env, hc.ENV_RESTART_BACKOFF, hc.DEFAULT_RESTART_BACKOFF_SECONDS)
        self.limit = _seconds(env, hc.ENV_RESTART_BACKOFF_LIMIT, hc.DEFAULT_RESTART_BACKOFF_LIMIT_SECONDS)
        self.window = _seconds(env, hc.ENV_FAILURE_WINDOW, hc.DEFAULT_FAILURE_WINDOW_SECONDS)
        self.clock = clock
        self.failures: list[float] = []

    def failed(self) -> float:
        """Record a failure now; the seconds to wait before the restart."""
        now = self.clock()
        self.failures = [t for t in self.failures if t > now - self.window] + [now]
        return hc.restart_backoff(len(self.failures), self.base, self.limit)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: must be >= 0")
    return value


def warm_command(command: Sequence[str]) -> bool:
    """Whether a warm interpreter can become ``command``: ``python -m MODULE ...`` or ``python SCRIPT.py ...``."""
    if len(command) < 2 or not os.path.basename(command[0]).startswith("python"):
        return False
    return (command[1] == "-m" and len(command) > 2) or command[1].endswith(".py")


class Standby:
    """One warm interpreter at a time (``python -m heterotrain_runtime.standby``), started on demand."""

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str], preexec: Callable[[], None] | None = None
    ) -> None:
        self.command = list(command)
        self.enabled = warm_command(command) and hc.truthy(env.get(envvars.ENV_WARM_RESTART))
        self.env = dict(env)
        self.preexec = preexec
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> bool:
        """Start a warm interpreter unless one waits already.  True when the one that waited died (the
        kernel's first choice in an out-of-memory kill: see .standby): warm restarts stop for this pod."""
        if not self.enabled or (self.proc is not None and self.proc.poll() is None):
            return False
        if self.proc is not None:  # it died while it waited
            log.warning("warm interpreter ended (%s): no more warm restarts here", self.proc.returncode)
            self.proc, self.enabled = None, False
            return True
        self.proc = subprocess.Popen(
            [self.command[0], "-m", "heterotrain_runtime.standby"],
            env=self.env,
            stdin=subprocess.PIPE,
            preexec_fn=self.preexec,
        )
        return False

    def take(self, env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """The warm interpreter, now running the command with ``env`` (None: none is ready)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return None
        try:
            proc.stdin.write(json.dumps({"argv": self.command, "env": dict(env)}).encode() + b"\n")
            proc.stdin.close()
        except OSError as e:  # it died meanwhile: start the process cold
            log.warning("warm interpreter unusable: %s", e)
            with contextlib.suppress(OSError):
                proc.kill()
            return None
        return proc

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()


class Beacon:
    """Beats for the pod's restarting processes until they beat themselves."""

    def __init__(self, pod: str, node: str, type_: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.pod, self.node, self.type, self.clock = pod, node, type_, clock
        self._sock: socket.socket | None = None

    def beat(
        self, m: Membership, local_rank: int, since: float, restarts: int, exit_code: int | None
    ) -> None:
        me = m.process(self.pod, local_rank)
        if me is None or not m.world:
            return
        b = Beat(
            name=me.name, pod=self.pod, node=self.node, type=self.type, epoch=m.epoch, rank=me.rank,
            phase=STARTING, since=round(self.clock() - since, 3), step=0, rate=0.0, sps=0.0, batch=0,
            global_sps=0.0, restarts=restarts, exit_code=exit_code,
        )  # fmt: skip
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        with contextlib.suppress(OSError):
            self._sock.sendto(b.encode(), rank0_address(m))
        with contextlib.suppress(OSError):
            while self._sock.recv(4096):  # rank 0's acknowledgements: not needed here
                pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class ProcessesCondition:
    """Sets the pod's ProcessesReady condition from a thread of its own (the launcher never waits on the
    API server); the newest value wins. A failed patch is retried with a growing pause (up to
    ``MAX_PAUSE``) until it lands or a newer value replaces it: the operator keeps a pod out of the world
    while its condition is False (or, for a pod that started before it was a member, not yet True), so a
    lost True would keep it out for ever."""

    MAX_PAUSE = 5.0

    def __init__(self, pod: str, api: KubernetesSource | None) -> None:
        self.pod, self.api = pod, api
        self._todo: queue.Queue[tuple[bool, str, str | None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, pod: str, env: Mapping[str, str]) -> ProcessesCondition:
        """Reports in a pod of a HeteroTrainJob (the in-cluster API); does nothing elsewhere."""
        return cls(pod, status_reporter(env))

    def set(self, ready: bool, message: str, reason: str | None = None) -> None:
        if self.api is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="processes-condition", daemon=True)
            self._thread.start()
        self._todo.put((ready, message, reason))

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        value: tuple[bool, str, str | None] | None = None  # the newest value, until it lands
        attempt, closing = 0, False
        while True:
            items: list[tuple[bool, str, str | None] | None] = []
            if value is None and not closing:
                items.append(self._todo.get())  # nothing to do: wait for a value
            elif value is not None and attempt and not closing:
                with contextlib.suppress(queue.Empty):  # the pause before a retry, cut by a newer value
                    items.append(self._todo.get(timeout=self._pause(attempt)))
            elif value is not None and attempt:
                time.sleep(self._pause(attempt))
            while not self._todo.empty():
                items.append(self._todo.get_nowait())
            closing = closing or None in items
            newer = [i for i in items if i is not None]
            if newer:
                value, attempt = newer[-1], 0
            if value is not None:
                if self._send(*value, warn=attempt == 2):
                    value, attempt = None, 0
                else:
                    attempt += 1
            if closing and (value is None or attempt >= 3):  # leaving: a few tries, then give up
                return

    def _pause(self, attempt: int) -> float:
        return float(min(self.MAX_PAUSE, 0.2 * 2 ** (attempt - 1)))

    def _send(self, ready: bool, message: str, reason: str | None, warn: bool) -> bool:
        assert self.api is not None
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.api.patch_pod_status(self.pod, hc.condition_patch(ready, message, now, reason))
            return True
        except Exception as e:  # the API server, RBAC, the network: retried, logged once
            if warn:
                log.warning("%s: cannot set %s (retrying): %s", self.pod, hc.CONDITION_PROCESSES_READY, e)
            return False
