"""Where a worker learns the membership of its job (stdlib only).

Two sources, chosen by ``HETEROTRAIN_MEMBERSHIP_SOURCE``:

* ``kubernetes`` — GET the worker's own ``HeteroTrainJob`` and read
  ``status.membership``.  In a pod this uses plain HTTPS with the service
  account token and CA (no client library needed in the user's image); out of a
  cluster it falls back to the ``kubernetes`` client and ``$KUBECONFIG``.
* ``file:<path>`` — a JSON file written atomically by the local supervisor (or
  mirrored by the launcher for its child).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import heterotrain_contract as hc
from heterotrain_contract import Membership
from heterotrain_runtime import envvars

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class MembershipSource(Protocol):
    def read(self) -> Membership | None: ...

    def describe(self) -> str: ...


class FileSource:
    """A membership file; re-parsed only when the file was replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._last: Membership | None = None

    def read(self) -> Membership | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key, self._last = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._last = hc.read_membership_file(self.path)
            self._key = key
        return self._last

    def describe(self) -> str:
        return f"file:{self.path}"


def membership_from_job(job: Mapping[str, Any]) -> Membership | None:
    status = job.get("status") or {}
    record = status.get("membership") if isinstance(status, Mapping) else None
    if not record:
        return None
    return Membership.from_dict(record)


class KubernetesSource:
    """GET ``heterotrainjobs/<name>`` in ``<namespace>`` and parse ``status.membership``."""

    def __init__(
        self,
        namespace: str,
        name: str,
        api_base: str | None = None,
        token_path: str | None = None,
        ca_path: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.namespace, self.name = namespace, name
        # Where the service-account token lives: the standard path in a pod, or where a
        # node without mount namespaces (the e2e process runner) put it.
        sa_dir = os.environ.get(envvars.ENV_SERVICEACCOUNT_DIR) or SA_DIR
        token_path = token_path or f"{sa_dir}/token"
        ca_path = ca_path or f"{sa_dir}/ca.crt"
        self.token_path, self.ca_path, self.timeout = token_path, ca_path, timeout
        if api_base is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if host:
                if ":" in host and not host.startswith("["):
                    host = f"[{host}]"  # IPv6
                api_base = f"https://{host}:{port}"
        self.api_base = api_base
        self._client: Any = None

    @property
    def path(self) -> str:
        return f"/apis/{hc.GROUP}/{hc.VERSION}/namespaces/{self.namespace}/{hc.PLURAL}/{self.name}"

    def describe(self) -> str:
        return f"kubernetes:{self.namespace}/{self.name}"

    def read(self) -> Membership | None:
        return membership_from_job(self.get_job())

    def get_job(self) -> Mapping[str, Any]:
        if self.api_base is not None:
            return self._get_https()
        return self._get_with_client()

    def _get_https(self) -> Mapping[str, Any]:
        data: Mapping[str, Any] = json.loads(self.request("GET", self.path))
        return data

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> bytes:
        """One call to the API server with the pod's service-account token (re-read: projected tokens
        rotate) and CA; the response's body."""
        assert self.api_base is not None, "needs the in-cluster API (KUBERNETES_SERVICE_HOST)"
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_base + path, data=data, method=method, headers=headers)
        if os.path.exists(self.token_path):
            with open(self.token_path, encoding="utf-8") as f:
                req.add_header("Authorization", f"Bearer {f.read().strip()}")
        ctx = None
        if self.api_base.startswith("https://"):
            ctx = ssl.create_default_context(cafile=self.ca_path if os.path.exists(self.ca_path) else None)
        with urllib.request.urlopen(req, timeout=self.timeout, context=ctx) as resp:
            out: bytes = resp.read()
        return out

    def apply_status(self, status: Mapping[str, Any], field_manager: str = "heterotrain-runtime") -> None:
        """Server-side apply fields of the job's status under the runtime's own field manager.

        The operator owns the rest of the status; fields applied here (``lastCheckpoint``)
        are the runtime's, so neither side overwrites the other.
        """
        body = {
            "apiVersion": f"{hc.GROUP}/{hc.VERSION}",
            "kind": hc.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "status": dict(status),
        }
        path = f"{self.path}/status?fieldManager={field_manager}&force=true"
        self.request("PATCH", path, body, "application/apply-patch+yaml")

    def patch_pod_status(self, pod: str, patch: Mapping[str, Any]) -> None:
        """A strategic-merge patch of a pod's status in the job's namespace (the launcher's condition)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}/status"
        self.request("PATCH", path, dict(patch), "application/strategic-merge-patch+json")

    def _get_with_client(self) -> Mapping[str, Any]:
        if self._client is None:
            try:
                from kubernetes import client, config  # lazy: not needed in a pod
            except ImportError as e:  # pragma: no cover - depends on the image
                raise RuntimeError(
                    "not in a cluster (no KUBERNETES_SERVICE_HOST) and the kubernetes client is missing"
                ) from e
            load: Any = config.load_kube_config
            load()
            self._client = client.CustomObjectsApi()
        job: Mapping[str, Any] = self._client.get_namespaced_custom_object(
            hc.GROUP, hc.VERSION, self.namespace, hc.PLURAL, self.name
        )
        return job


def status_reporter(env: Mapping[str, str] | None = None) -> KubernetesSource | None:
    """A handle to report into the job's status, when running in a pod of a HeteroTrainJob."""
    env = os.environ if env is None else env
    ns, name = env.get(hc.ENV_NAMESPACE), env.get(hc.ENV_JOB_NAME)
    if not ns or not name or not env.get("KUBERNETES_SERVICE_HOST"):
        return None
    return KubernetesSource(ns, name)


def source_from_env(env: Mapping[str, str] | None = None) -> MembershipSource:
    env = os.environ if env is None else env
    spec = env.get(hc.ENV_MEMBERSHIP_SOURCE, hc.MEMBERSHIP_SOURCE_KUBERNETES)
    if spec.startswith(hc.MEMBERSHIP_SOURCE_FILE_PREFIX):
        return FileSource(spec[len(hc.MEMBERSHIP_SOURCE_FILE_PREFIX) :])
    if spec == hc.MEMBERSHIP_SOURCE_KUBERNETES:
        ns = env.get(hc.ENV_NAMESPACE)
        name = env.get(hc.ENV_JOB_NAME)
        if not ns or not name:
            raise ValueError(f"{hc.ENV_NAMESPACE} and {hc.ENV_JOB_NAME} must be set")
        return KubernetesSource(ns, name)
    raise ValueError(f"unknown membership source {spec!r}")


# --- pure helpers -----------------------------------------------------------


@dataclass(frozen=True)
class MembershipDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    rerank: tuple[str, ...]  # pods present in both whose rank changed
    epoch_changed: bool

    @property
    def same_world(self) -> bool:
        return not (self.added or self.removed or self.rerank)


def diff_membership(old: Membership | None, new: Membership) -> MembershipDiff:
    old_ranks = {m.pod: m.rank for m in old.world} if old else {}
    new_ranks = {m.pod: m.rank for m in new.world}
    return MembershipDiff(
        added=tuple(sorted(set(new_ranks) - set(old_ranks))),
        removed=tuple(sorted(set(old_ranks) - set(new_ranks))),
        rerank=tuple(sorted(p for p in new_ranks if p in old_ranks and old_ranks[p] != new_ranks[p])),
        epoch_changed=old is None or old.epoch != new.epoch,
    )


def pools(membership: Membership) -> dict[str, list[int]]:
    """Global ranks of every accelerator type's processes, in rank order (dict ordered by lowest rank)."""
    out: dict[str, list[int]] = {}
    for p in membership.processes:
        out.setdefault(p.type, []).append(p.rank)
    return out
