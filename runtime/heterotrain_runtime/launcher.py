"""The launcher injected into every worker: ``python -m heterotrain_runtime launch -- CMD...``.

It learns the membership (Kubernetes ``status.membership`` or a local file),
waits until its pod is a member, and runs ``CMD`` with the torchrun-style
environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) plus HeteroTrain's (epoch, weight, local batch...), so an
unmodified torchrun script works.  Then it supervises the process:

* a failure (exit code != 0) restarts it, up to ``HETEROTRAIN_MAX_RESTARTS``;
  then the launcher exits with the process's exit code;
* a new membership epoch restarts it with the new world, unless the process
  uses the SDK: the SDK writes the handshake file named by
  ``HETEROTRAIN_SDK_HANDSHAKE_FILE`` and re-forms its process groups itself at
  a step boundary; the launcher then only mirrors the membership to the file
  the SDK reads;
* SIGTERM/SIGINT are forwarded (the SDK checkpoints and exits); the launcher
  exits with the process's code.

Only the standard library is imported here (no torch): the launcher starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence

from heterotrain_runtime import contract
from heterotrain_runtime.contract import Membership
from heterotrain_runtime.membership import FileSource, MembershipSource, source_from_env

log = logging.getLogger("heterotrain.launcher")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the SDK also watches its parent
        pass


def exit_code(returncode: int) -> int:
    """Shell-style exit code of a child: 128+N when it was killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def pool_of(membership: Membership, pod: str) -> tuple[int, int]:
    me = membership.member(pod)
    assert me is not None
    same = [m.rank for m in membership.world if m.type == me.type]
    return same.index(me.rank), len(same)


def batch_split(membership: Membership, global_batch: int, policy: str) -> list[int]:
    weights = [1.0 if policy.lower() == "equal" else m.weight for m in membership.world]
    return contract.split_global_batch(global_batch, weights)


def child_env(
    base: Mapping[str, str],
    membership: Membership,
    pod: str,
    restarts: int,
    membership_file: str,
    handshake_file: str,
) -> dict[str, str]:
    """The environment of the user process for ``pod`` in ``membership``."""
    me = membership.member(pod)
    if me is None:
        raise ValueError(f"{pod} is not a member of epoch {membership.epoch}")
    env = dict(base)
    env.update(
        {
            "RANK": str(me.rank),
            "WORLD_SIZE": str(membership.world_size),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(me.rank),
            "MASTER_ADDR": membership.master_addr,
            "MASTER_PORT": str(membership.master_port),
            contract.ENV_EPOCH: str(membership.epoch),
            contract.ENV_WEIGHT: repr(me.weight),
            contract.ENV_RESTART_COUNT: str(restarts),
            contract.ENV_MEMBERSHIP_SOURCE: contract.MEMBERSHIP_SOURCE_FILE_PREFIX + membership_file,
            contract.ENV_SDK_HANDSHAKE_FILE: handshake_file,
        }
    )
    idx, count = pool_of(membership, pod)
    env[contract.ENV_POOL] = f"{idx}/{count}"
    gb = base.get(contract.ENV_GLOBAL_BATCH_SIZE)
    if gb:
        split = batch_split(membership, int(gb), base.get(contract.ENV_REBALANCE_POLICY, "Throughput"))
        env[contract.ENV_LOCAL_BATCH_SIZE] = str(split[me.rank])
        env[contract.ENV_BATCH_SPLIT] = ",".join(map(str, split))
    return env


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
    ) -> None:
        if not command:
            raise ValueError("nothing to launch")
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.pod = self.env.get(contract.ENV_POD_NAME, "")
        if not self.pod:
            raise ValueError(f"{contract.ENV_POD_NAME} is not set")
        self.source = source if source is not None else source_from_env(self.env)
        # A file is cheap to poll; the API server is asked once a second per worker.
        default_poll = "0.2" if isinstance(self.source, FileSource) else "1.0"
        self.poll = (
            poll_interval
            if poll_interval is not None
            else float(self.env.get(contract.ENV_MEMBERSHIP_POLL_SECONDS, default_poll))
        )
        self.max_restarts = int(self.env.get(contract.ENV_MAX_RESTARTS, contract.DEFAULT_MAX_RESTARTS))
        self.stop_timeout = stop_timeout
        if workdir:
            os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"heterotrain-{self.pod}-")
        # Start the user process before this pod is a member (SDK scripts only: the
        # SDK waits for the membership itself, and its handshake file tells a
        # supervisor that the process is ready to join).
        self.start_before_member = start_before_member
        self.handshake_file = os.path.join(self.workdir, "sdk-handshake.json")
        if isinstance(self.source, FileSource):
            self.membership_file = self.source.path  # the child reads the same file
            self._mirror = False
        else:
            self.membership_file = os.path.join(self.workdir, "membership.json")
            self._mirror = True
        self.child: subprocess.Popen[bytes] | None = None
        self._child_epoch = -1
        self.membership: Membership | None = None
        self.restarts = 0
        self._stopping: int | None = None  # the signal we were asked to stop with
        self._wake = threading.Event()
        from heterotrain_runtime.metrics import ENV_LAUNCHER_METRICS_PORT, RuntimeMetrics

        self.metrics = RuntimeMetrics(ENV_LAUNCHER_METRICS_PORT)

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
                contract.write_membership_file(self.membership_file, m)
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
            self._wake.clear()
        return None

    # -- the user process ----------------------------------------------------
    def _start(self, m: Membership | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.handshake_file)
        if m is None or m.member(self.pod) is None:
            # Early start: no rank yet; the SDK reads the membership file itself.
            env = dict(self.env)
            env.update(
                {
                    contract.ENV_RESTART_COUNT: str(self.restarts),
                    contract.ENV_MEMBERSHIP_SOURCE: contract.MEMBERSHIP_SOURCE_FILE_PREFIX
                    + self.membership_file,
                    contract.ENV_SDK_HANDSHAKE_FILE: self.handshake_file,
                }
            )
            log.info("%s: starting before membership (restart %d)", self.pod, self.restarts)
            self._child_epoch = -1
        else:
            env = child_env(self.env, m, self.pod, self.restarts, self.membership_file, self.handshake_file)
            me = m.member(self.pod)
            assert me is not None
            log.info(
                "%s: starting rank %d/%d of epoch %d (restart %d): %s",
                self.pod,
                me.rank,
                m.world_size,
                m.epoch,
                self.restarts,
                " ".join(self.command),
            )
            self._child_epoch = m.epoch
        self.child = subprocess.Popen(self.command, env=env, preexec_fn=_die_with_parent)

    def sdk_handles_epochs(self) -> bool:
        if self.start_before_member:
            return True
        try:
            with open(self.handshake_file, encoding="utf-8") as f:
                info = json.load(f)
        except (FileNotFoundError, ValueError):
            return False
        return bool(info.get("handlesEpochs"))

    def _stop_child(self, sig: int = signal.SIGTERM) -> int:
        assert self.child is not None
        if self.child.poll() is None:
            self.child.send_signal(sig)
            try:
                self.child.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        rc = self.child.returncode
        assert rc is not None
        return rc

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = signum
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signum)
        self._wake.set()

    # -- main loop -----------------------------------------------------------
    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)
        if self.start_before_member:
            if self._mirror:
                self._read()
            self._start(self._read())
        else:
            m = self._wait_member()
            if m is None:
                return 128 + (self._stopping or signal.SIGTERM)
            self._start(m)
        while True:
            assert self.child is not None
            rc = self.child.poll()
            if rc is not None:
                if self._stopping is not None or rc == 0:
                    log.info("%s: user process exited with %d", self.pod, rc)
                    return exit_code(rc)
                if self.restarts >= self.max_restarts:
                    log.error("%s: user process failed (%d), no restarts left", self.pod, rc)
                    return exit_code(rc)
                self.restarts += 1
                self.metrics.restarts.labels(reason="failure").inc()
                log.warning(
                    "%s: user process failed (%d); restart %d/%d",
                    self.pod,
                    rc,
                    self.restarts,
                    self.max_restarts,
                )
                if self.start_before_member:
                    self._start(self._read())
                    continue
                nm = self._wait_member()
                if nm is None:
                    return exit_code(rc)
                self._start(nm)
                continue
            if self._stopping is not None:
                # Forwarded already; wait for the process to checkpoint and leave.
                self.child.wait()
                continue
            m2 = self._read()
            if m2 is not None and m2.epoch != self._child_epoch and not self.sdk_handles_epochs():
                log.info("%s: new epoch %d: restarting the user process", self.pod, m2.epoch)
                self._stop_child()
                if self._stopping is not None:
                    continue
                self.metrics.restarts.labels(reason="epoch").inc()
                nm = self._wait_member()
                if nm is None:
                    return 128 + (self._stopping or signal.SIGTERM)
                self._start(nm)
                continue
            self._wake.wait(self.poll)
            self._wake.clear()


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
        default=os.environ.get("HETEROTRAIN_START_BEFORE_MEMBER", "") in ("1", "true"),
        help="start the user process at once (SDK scripts only); it waits for its membership itself",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = p.parse_args(argv)
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        p.error("missing command after --")
    logging.basicConfig(
        level=os.environ.get("HETEROTRAIN_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    launcher = Launcher(
        cmd,
        poll_interval=args.poll_interval,
        stop_timeout=args.stop_timeout,
        workdir=args.workdir,
        start_before_member=args.start_before_member,
    )
    return launcher.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
