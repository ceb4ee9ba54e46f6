"""``python -m heterotrain_operator run|dev``.

run   the operator (kopf), against in-cluster config or $KUBECONFIG
dev   install the CRD (generated in-process from the API types), then run in the foreground
      (``make dev-operator``)

``make demo`` (a local cluster, the operator and the quickstart job) is test infrastructure:
``python -m heterotrain_e2e.demo``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings


def install_crd(timeout: float = 60.0) -> None:
    """Apply the CRD generated from the pydantic API types and wait until the API server serves it."""
    from heterotrain_api import crdgen

    from .kube import Kube, load_client

    kube = Kube(load_client(), "heterotrain-operator")
    doc = crdgen.crd()
    kube.apply_crds(iter([doc]))
    kube.wait_crd_established(doc["metadata"]["name"], timeout)
    print(f"installed CRD {doc['metadata']['name']}", file=sys.stderr)


def run(namespace: str | None = None, liveness: str | None = None) -> None:
    import kopf

    from . import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=Settings.from_env().verbose)
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
    p_run.add_argument("--namespace", default=Settings.from_env().namespace)
    p_run.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    sub.add_parser("dev")
    args = ap.parse_args(argv)
    if args.cmd == "run":  # run and dev log through kopf's own configuration (one handler, not two)
        run(args.namespace, args.liveness)
    elif args.cmd == "dev":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        install_crd()
        logging.getLogger().handlers.clear()  # kopf.configure installs its own
        run()
    return 0
