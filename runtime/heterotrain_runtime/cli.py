"""``heterotrain`` command line (also ``python -m heterotrain_runtime``).

* ``heterotrain launch -- CMD...``: the in-pod launcher (see :mod:`heterotrain_runtime.launcher`).
* ``heterotrain run --local --pools TYPE:COUNT,... SCRIPT [options] [-- SCRIPT ARGS...]``:
  train on this machine with emulated pools (see :mod:`heterotrain_runtime.local`).
* ``heterotrain install DEST``: copy the runtime package into DEST (init containers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from heterotrain_runtime.cgroups import DEFAULT_CPU_BUDGET_FRACTION, DEFAULT_CPU_PER_SPEED


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a training script", description="Run a training script.")
    p.add_argument("--local", action="store_true", help="on this machine, one process per worker (required)")
    p.add_argument(
        "--pools",
        required=True,
        help="TYPE:COUNT[xPROCS][@SPEED],... e.g. nvidia-a100:2,huawei-ascend-910b:1x2 "
        "(PROCS training processes per worker, one per device)",
    )
    p.add_argument("script", help="the training script (uses the SDK, e.g. examples/train.py)")
    p.add_argument("--steps", type=int, default=None, help="training steps (HETEROTRAIN_TOTAL_STEPS)")
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-interval", type=int, default=0, help="checkpoint every N steps")
    p.add_argument("--replace", action="store_true", help="restart dead workers (Replace policy)")
    p.add_argument(
        "--no-emulate",
        action="store_true",
        help="do not emulate the accelerators' speeds (no cgroups: every worker at the machine's full speed)",
    )
    p.add_argument(
        "--cpu-per-speed",
        type=float,
        default=DEFAULT_CPU_PER_SPEED,
        metavar="CORES",
        help="CPU quota of an emulated device of speed 1.0 (default %(default)s cores; scaled down when the "
        f"workers together would exceed {DEFAULT_CPU_BUDGET_FRACTION:g} of the machine's cores)",
    )
    p.add_argument(
        "--cgroup-parent",
        default=None,
        help="where the workers' cgroups go (default: under this process's own group; "
        "a leading / starts from the hierarchy's root)",
    )
    p.add_argument("--max-restarts", type=int, default=0, help="launcher restarts of a failed process")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0)
    p.add_argument("--rebalance-policy", default="Throughput", choices=["Throughput", "Equal"])
    p.add_argument("--rebalance-min-interval", type=float, default=5.0)
    p.add_argument(
        "--initial-weights",
        default="table",
        choices=["table", "equal"],
        help="membership weights: the relative-throughput table, or equal (the SDK learns the speeds)",
    )
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workdir", default=None)
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        from heterotrain_runtime.launcher import main as launch_main

        return launch_main(argv[1:])
    if argv and argv[0] == "install":
        from heterotrain_runtime.install import main as install_main

        return install_main(argv[1:])
    parser = argparse.ArgumentParser(prog="heterotrain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("launch", help="run CMD as a worker of the job (launch -- CMD...)")
    sub.add_parser("install", help="copy the runtime package into a directory")
    _run_parser(sub)
    script_args: list[str] = []
    if "--" in argv:  # everything after "--" belongs to the training script
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.script_args = script_args
    if args.cmd == "run":
        if not args.local:
            parser.error("only --local is supported here; on Kubernetes create a HeteroTrainJob")
        from heterotrain_runtime.local import run_local

        return run_local(argv, args)
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
