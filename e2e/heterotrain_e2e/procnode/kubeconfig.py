"""The API server as the runner's kubeconfig names it, and the kubeconfig written for a pod's service account."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


@dataclass(frozen=True)
class ApiServer:
    server: str
    host: str
    port: int
    ca_pem: bytes | None
    insecure: bool = False


def read_api_server(kubeconfig: Path, context: str | None = None) -> ApiServer:
    cfg: dict[str, Any] = yaml.safe_load(kubeconfig.read_text()) or {}
    ctx_name = context or cfg.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in cfg.get("contexts") or []}
    clusters = {c["name"]: c.get("cluster") or {} for c in cfg.get("clusters") or []}
    if ctx_name in contexts:
        cluster = clusters.get(contexts[ctx_name].get("cluster"), {})
    elif len(clusters) == 1:
        cluster = next(iter(clusters.values()))
    else:
        raise ValueError(f"{kubeconfig}: cannot tell which cluster to use (context {ctx_name!r})")
    server = str(cluster["server"])
    u = urlsplit(server)
    port = u.port or (443 if u.scheme == "https" else 80)
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        p = Path(cluster["certificate-authority"])
        if not p.is_absolute():
            p = kubeconfig.parent / p
        ca = p.read_bytes()
    return ApiServer(
        server=server,
        host=u.hostname or "127.0.0.1",
        port=port,
        ca_pem=ca,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def service_account_kubeconfig(api: ApiServer, token_file: Path, namespace: str, user: str) -> str:
    """A kubeconfig that authenticates with the pod's service-account token file (re-read by clients)."""
    cluster: dict[str, Any] = {"server": api.server}
    if api.ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(api.ca_pem).decode()
    if api.insecure:
        cluster["insecure-skip-tls-verify"] = True
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"tokenFile": str(token_file)}}],
        "contexts": [
            {"name": "pod", "context": {"cluster": "cluster", "user": user, "namespace": namespace}}
        ],
        "current-context": "pod",
        "preferences": {},
    }
    return str(yaml.safe_dump(cfg, sort_keys=False))
