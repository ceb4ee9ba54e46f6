"""``python -m heterotrain_e2e.procnode``: the process runner, a fake kubelet for tests.

Plays the kubelet for the Node objects matching ``--label-selector`` so that
pods bound to them run as local processes.  Runs until SIGTERM/SIGINT, then
stops every pod process it started (SIGTERM, SIGKILL after
``--shutdown-grace``) and exits, leaving nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from heterotrain_runtime.cgroups import DEFAULT_CPU_BUDGET_FRACTION, DEFAULT_CPU_PER_SPEED, CgroupUnavailable

from . import lifecycle
from .kube import KubeREST, make_api_client
from .kubeconfig import read_api_server
from .runner import Runner, RunnerConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m heterotrain_e2e.procnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--kubeconfig", required=True, type=Path, help="kubeconfig of the cluster (admin)")
    ap.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="where pid files, pod directories/logs, PVC directories and ipam.json live",
    )
    ap.add_argument(
        "--label-selector",
        default="heterotrain.io/runner=process",
        help="the nodes to play the kubelet for (default: %(default)s)",
    )
    ap.add_argument(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="NAME",
        help="serve only these nodes among the selected ones (repeatable)",
    )
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter whose bin dir goes first on the pods' PATH (default: this one)",
    )
    ap.add_argument(
        "--restart-backoff-base",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="container restart backoff: first delay, doubled each time (kubelet: 10)",
    )
    ap.add_argument(
        "--restart-backoff-max",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="container restart backoff cap (kubelet: 300)",
    )
    ap.add_argument(
        "--lease-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often node Leases are renewed (default: %(default)s)",
    )
    ap.add_argument("--lease-duration", type=int, default=40, metavar="SECONDS")
    ap.add_argument(
        "--node-status-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often node status (conditions, heartbeat) is posted (default: %(default)s)",
    )
    ap.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on exit, SIGKILL pod processes still running this long after SIGTERM",
    )
    ap.add_argument(
        "--pod-cidr",
        default="127.1.0.0/16",
        help="range pod IPs come from: loopback, or a part of 198.18.0.0/15 made local "
        "(the cluster harness does: Services then get endpoints)",
    )
    ap.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable of the runner's environment to every container (repeatable)",
    )
    ap.add_argument(
        "--no-cgroups",
        action="store_true",
        help="do not run pods in cgroups: limits.cpu/limits.memory and emulated speeds are NOT enforced",
    )
    ap.add_argument(
        "--cgroup-parent",
        default=None,
        help="where the pods' cgroups go (default: under the runner's own group; a leading / starts "
        "from the hierarchy's root)",
    )
    ap.add_argument(
        "--cpu-per-speed",
        type=float,
        default=DEFAULT_CPU_PER_SPEED,
        metavar="CORES",
        help="CPU quota of an emulated device of speed 1.0 (default %(default)s; scaled down so that "
        f"every served node's devices together fit in {DEFAULT_CPU_BUDGET_FRACTION:g} of this machine's cores)",
    )
    ap.add_argument("--log-level", default=os.environ.get("PROCNODE_LOG_LEVEL", "INFO"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s procnode %(threadName)s: %(message)s"
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    log = logging.getLogger("heterotrain_e2e.procnode")

    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = RunnerConfig(
        state_dir=state_dir,
        label_selector=args.label_selector,
        python=args.python,
        node_names=list(args.nodes),
        lease_interval=args.lease_interval,
        lease_duration=args.lease_duration,
        node_status_interval=args.node_status_interval,
        shutdown_grace=args.shutdown_grace,
        pod_cidr=args.pod_cidr,
        extra_env={k: os.environ[k] for k in args.pass_env if k in os.environ},
        lifecycle=lifecycle.Config(
            backoff_base=args.restart_backoff_base, backoff_max=args.restart_backoff_max
        ),
        cgroups=not args.no_cgroups,
        cgroup_parent=args.cgroup_parent,
        cpu_per_speed=args.cpu_per_speed,
    )
    api = read_api_server(args.kubeconfig)
    rest = KubeREST(make_api_client(str(args.kubeconfig)))
    runner = Runner(cfg, rest, api)
    try:
        runner.open_cgroups()
    except CgroupUnavailable as e:
        log.error("cannot run pods in cgroups: %s", e)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        runner.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid_file = state_dir / "runner.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    log.info(
        "process runner (fake kubelet for tests) serving nodes %r against %s; state in %s",
        args.label_selector,
        api.server,
        state_dir,
    )
    try:
        runner.run()
    finally:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        log.info("stopped")
    return 0
