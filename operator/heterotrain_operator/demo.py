"""``make demo``: the quickstart job on the local cluster (or on $KUBECONFIG's), watched as it changes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .main import REPO, install_crds

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def _line(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    w = st.get("workers") or {}
    mem = st.get("membership") or {}
    parts = [
        f"phase={st.get('phase', '-')}",
        f"workers={w.get('ready', 0)}/{w.get('desired', 0)}",
        f"mix={st.get('mix') or '-'}",
        f"epoch={mem.get('epoch', 0)}",
        f"restarts={st.get('restarts', 0)}",
    ]
    if st.get("waitingReason"):
        parts.append(f"waiting={st['waitingReason']}: {st.get('waitingMessage', '')}")
    ck = st.get("lastCheckpoint") or {}
    if ck:
        parts.append(f"checkpoint=step {ck.get('step')}")
    return "  ".join(parts)


def demo(cluster_dir: Path, timeout: float, manifest: Path = QUICKSTART) -> int:
    if not os.environ.get("KUBECONFIG"):
        from heterotrain_e2e.cluster import controlplane

        print(f"No KUBECONFIG: starting the local cluster in {cluster_dir} ...", flush=True)
        info = controlplane.up(cluster_dir, REPO / "e2e" / "profiles" / "default.yaml")
        os.environ["KUBECONFIG"] = str(info.kubeconfig)
        print(
            f"Cluster {'already running' if info.already_running else 'ready'}: KUBECONFIG={info.kubeconfig}"
        )
    install_crds()

    from .kube import Kube, load_client

    kube = Kube(load_client(), "heterotrain-demo")
    log_dir = cluster_dir / "logs" if cluster_dir.exists() else Path("/tmp")
    log_dir.mkdir(parents=True, exist_ok=True)
    op_log = log_dir / "operator.log"
    print(f"Starting the operator (log: {op_log}) ...", flush=True)
    with open(op_log, "ab") as logf:
        op = subprocess.Popen(
            [sys.executable, "-m", "heterotrain_operator", "run"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        for d in docs:
            d.setdefault("metadata", {}).setdefault("namespace", "default")
            kube.apply(d)
        job_doc = next(d for d in docs if d["kind"] == "HeteroTrainJob")
        ns, name = job_doc["metadata"]["namespace"], job_doc["metadata"]["name"]
        print(f"Applied {manifest.relative_to(REPO)}: HeteroTrainJob {ns}/{name}\n", flush=True)
        deadline = time.monotonic() + timeout
        last = ""
        shown_world = False
        while time.monotonic() < deadline:
            if op.poll() is not None:
                print(f"the operator exited with code {op.returncode}; see {op_log}", file=sys.stderr)
                return 1
            job = kube.get("heterotrain.io/v1alpha1", "HeteroTrainJob", ns, name)
            if job is not None:
                line = _line(job)
                if line != last:
                    print(f"{time.strftime('%H:%M:%S')}  {name}: {line}", flush=True)
                    last = line
                st = job.get("status") or {}
                if st.get("phase") == "Running" and not shown_world:
                    shown_world = True
                    print(
                        "  world:",
                        ", ".join(
                            f"rank {m['rank']} {m['type']} (weight {m['weight']:g})"
                            for m in (st.get("membership") or {}).get("world") or []
                        ),
                    )
                if st.get("phase") in ("Succeeded", "Failed"):
                    print(f"\nkubectl get htj {name}   # with KUBECONFIG={os.environ['KUBECONFIG']}")
                    print(f"kubectl logs {name}-worker-0   # the batch split follows the pools' speeds")
                    return 0 if st["phase"] == "Succeeded" else 1
            time.sleep(1.0)
        print(f"timed out after {timeout:.0f}s; operator log: {op_log}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(op.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            op.wait(timeout=10)
