"""``python -m heterotrain_e2e.cluster up|down|status|build`` (what ``make cluster-up`` runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import controlplane, profile, toolchain

DEFAULT_DIR = toolchain.REPO / ".cluster"
DEFAULT_PROFILE = toolchain.REPO / "e2e" / "profiles" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="heterotrain-cluster", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument(
            "--dir",
            type=Path,
            default=Path(os.environ.get("HETEROTRAIN_CLUSTER_DIR", DEFAULT_DIR)),
            help="cluster state directory (default .cluster/)",
        )
        if name == "up":
            p.add_argument(
                "--profile",
                type=Path,
                default=Path(os.environ.get("HETEROTRAIN_CLUSTER_PROFILE", DEFAULT_PROFILE)),
            )
            p.add_argument(
                "--apiserver-port",
                type=int,
                default=int(os.environ.get("HETEROTRAIN_APISERVER_PORT", "0")),
                help="fixed port for kube-apiserver (default: a free one)",
            )
            p.add_argument(
                "--no-process-runner",
                action="store_true",
                help="register process nodes but do not start the process runner",
            )
            p.add_argument("--timeout", type=float, default=180.0)
    sub.add_parser("build", help="build (or find cached) control-plane binaries")
    vp = sub.add_parser("validate-profile", help="check a cluster profile and exit")
    vp.add_argument("profile", type=Path)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "build":
            tc = toolchain.ensure()
            for name, path in sorted(tc.bindir.items()):
                print(f"{name}\t{path}")
            return 0
        if args.cmd == "validate-profile":
            prof = profile.load(args.profile)
            print(f"{args.profile}: ok ({len(prof.pools)} pools, types: {', '.join(prof.types())})")
            return 0
        if args.cmd == "up":
            info = controlplane.up(
                args.dir,
                args.profile,
                apiserver_port=args.apiserver_port,
                process_runner=not args.no_process_runner,
                timeout=args.timeout,
            )
            rel = os.path.relpath(info.kubeconfig)
            if info.already_running:
                print(f"A cluster is already running in {info.dir} ({info.server}); not starting another.")
            else:
                print(f"Cluster ready in {info.seconds_to_ready:.1f}s at {info.server}")
            print(f"  export KUBECONFIG={info.kubeconfig}")
            print(
                f"  {os.path.relpath(info.dir / 'bin' / 'kubectl')} --kubeconfig {rel} "
                "get nodes -L heterotrain.io/accelerator"
            )
            return 0
        if args.cmd == "down":
            controlplane.down(args.dir)
            return 0
        if args.cmd == "status":
            if controlplane.is_running(args.dir):
                st = controlplane.read_state(args.dir) or {}
                print(f"running: {st.get('server')} (kubeconfig {args.dir / 'kubeconfig'})")
                return 0
            print("not running")
            return 3
    except (controlplane.ClusterError, profile.ProfileError, toolchain.ToolchainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2
