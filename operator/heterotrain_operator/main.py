"""``python -m heterotrain_operator run|dev|demo``.

run   the operator (kopf), against in-cluster config or $KUBECONFIG
dev   install the CRDs from crds/, then run in the foreground (``make dev-operator``)
demo  the README's first command: a local cluster unless $KUBECONFIG is set, the CRDs,
      the operator, and examples/quickstart.yaml, watched until its workers run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


def install_crds(crd_dir: Path = CRD_DIR, timeout: float = 60.0) -> None:
    from .kube import Kube, load_client

    kube = Kube(load_client(), "heterotrain-operator")
    docs = [doc for f in sorted(crd_dir.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) if doc]
    kube.apply_crds(iter(docs))
    deadline = time.monotonic() + timeout
    for doc in docs:
        name = doc["metadata"]["name"]
        while True:
            crd = kube._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = {x["type"]: x["status"] for x in (crd.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.2)
    print(f"installed {len(docs)} CRD(s) from {crd_dir}", file=sys.stderr)


def run(namespace: str | None = None, liveness: str | None = None) -> None:
    import kopf

    from . import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=os.environ.get("HETEROTRAIN_VERBOSE") == "1")
    kopf.run(
        standalone=True,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        liveness_endpoint=liveness,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="heterotrain-operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--namespace", default=os.environ.get("HETEROTRAIN_NAMESPACE_SCOPE") or None)
    p_run.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    sub.add_parser("dev")
    p_demo = sub.add_parser("demo")
    p_demo.add_argument("--cluster-dir", type=Path, default=REPO / ".cluster")
    p_demo.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "run":
        run(args.namespace, args.liveness)
    elif args.cmd == "dev":
        install_crds()
        run()
    elif args.cmd == "demo":
        from .demo import demo

        return demo(args.cluster_dir, args.timeout)
    return 0
