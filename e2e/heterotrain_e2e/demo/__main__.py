"""The command: the demo's steps in order, and the teardown of what it started."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from heterotrain_e2e.cluster import controlplane, toolchain

from . import __doc__ as DOC
from . import chaos, job, run


def demo(opts: run.Options) -> int:
    t0 = time.monotonic()
    cluster, profile, started = run.bring_up(opts)
    new_release = False
    ns = ""
    waited = 0.0
    try:
        new_release = run.install_chart(cluster)
        if profile is not None:
            waited = run.wait_for_rendezvous_port(opts.timeout)
        ns, docs = run.apply_job(cluster, opts)
        r = run.Run(cluster, ns, "quickstart", time.time(), profile=profile)
        if profile is not None:
            pvc = cluster.state_dir / "procnode" / "pvc" / ns / job.claim_name(docs)
            r.progress = chaos.ProgressTail(pvc / job.PROGRESS_FILE)
        final = run.watch(r, opts)
        png = run.write_timeline(r, opts.cluster_dir / "demo" / ns)
        ck = final.get("lastCheckpoint") or {}
        run.say(
            f"{final.get('phase')}: checkpoint at step {ck.get('step')}, restarts {final.get('restarts', 0)}, "
            f"world {(final.get('membership') or {}).get('epoch')}"
        )
        print(f"\ntimeline: {png}", flush=True)
        return 0 if final.get("phase") == "Succeeded" else 1
    finally:
        if opts.keep:
            print(f"--keep: left running; KUBECONFIG={cluster.kubeconfig}, job namespace {ns}")
        elif started:
            controlplane.down(opts.cluster_dir, quiet=True)
            run.say("stopped the local cluster")
        else:
            if ns:
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            if new_release:
                run.chart.helm(cluster, "uninstall", run.RELEASE, "-n", run.RELEASE_NS, check=False)
            run.say("removed the demo's job and release (the cluster was not the demo's to stop)")
        port = f" ({waited:.0f}s of it waiting for the rendezvous port)" if waited else ""
        print(f"demo took {time.monotonic() - t0:.0f}s{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m heterotrain_e2e.demo", description=DOC, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--cluster-dir", type=Path, default=toolchain.REPO / ".cluster")
    ap.add_argument("--profile", type=Path, default=toolchain.REPO / "e2e" / "profiles" / "demo.yaml")
    ap.add_argument("--steps", type=int, default=80, help="training steps of the demo's job")
    ap.add_argument("--grow-type", default="nvidia-a100", help="the type of the node added midway")
    ap.add_argument("--keep", action="store_true", help="leave the cluster, release and job running")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds the job may take")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = run.Options(
        cluster_dir=args.cluster_dir.resolve(),
        profile=args.profile,
        steps=args.steps,
        grow_type=args.grow_type,
        keep=args.keep,
        timeout=args.timeout,
    )
    return demo(opts)


if __name__ == "__main__":
    sys.exit(main())
