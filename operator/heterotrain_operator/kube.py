"""The one module of the operator that talks to the Kubernetes API.

Everything the operator writes goes through server-side apply with one field
manager (objects and the job's status alike), so a reconcile that runs twice
changes nothing the second time.  Objects come back as plain JSON dicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import heterotrain_contract as c

log = logging.getLogger(__name__)

_PATHS = {
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "PersistentVolumeClaim"): "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
    ): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    (f"{c.GROUP}/{c.VERSION}", c.KIND): f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{{ns}}/{c.PLURAL}",
}
JOBS_PATH = f"/apis/{c.GROUP}/{c.VERSION}/{c.PLURAL}"
LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def namespace_terminating(e: BaseException) -> bool:
    """The API server refused to create something in a namespace that is being deleted (a race with the
    deletion of the namespace: its jobs are going too, nothing to repair)."""
    return isinstance(e, ApiException) and e.status == 403 and "NamespaceTerminating" in str(e.body or "")


def event_name(meta: Mapping[str, Any], type_: str, reason: str) -> str:
    """One Event object per (job, type, reason): repeats bump its count instead of adding objects."""
    digest = hashlib.sha256(f"{meta['uid']}/{type_}/{reason}".encode()).hexdigest()[:16]
    return f"{meta['name']}.{digest}"


def new_event(
    meta: Mapping[str, Any], type_: str, reason: str, message: str, now: str, component: str
) -> dict[str, Any]:
    """The first occurrence of an Event on a job (core/v1, what kubectl describe shows)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta, type_, reason), "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": c.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason[:128],
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": component},
        "reportingComponent": f"{c.GROUP}/operator",
        "reportingInstance": component,
    }


def repeated_event(old: Mapping[str, Any], message: str, now: str) -> dict[str, Any]:
    """The merge patch of a repeat: count + 1, the latest message and time (firstTimestamp kept)."""
    return {"count": int(old.get("count") or 1) + 1, "lastTimestamp": now, "message": message[:1024]}


class Conflict(Exception):
    """An optimistic write lost: the object changed (or was created) since it was read."""


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


def load_client() -> client.ApiClient:
    loader: Any = config  # the client's config loaders carry no type hints
    try:
        loader.load_incluster_config()
    except config.ConfigException:
        # $KUBECONFIG as it is now: the client reads its default only once, when it is imported.
        loader.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self.api = api
        self.field_manager = field_manager
        self.calls = 0

    # --- raw -----------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        self.calls += 1
        method_, url, headers, body_, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp: Any = self.api.call_api(method_, url, header_params=headers, body=body_, _request_timeout=60)
        data: bytes = resp.read()
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason, body=data.decode(errors="replace"))
        return json.loads(data) if data else None

    def _list(self, path: str, query: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        return self.list_with_version(path, query)[0]

    def list_with_version(
        self, path: str, query: list[tuple[str, str]] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object at ``path`` (in pages of 500) and the resourceVersion the listing is consistent at."""
        items: list[dict[str, Any]] = []
        cont = None
        while True:
            q = list(query or []) + [("limit", "500")] + ([("continue", cont)] if cont else [])
            page = self._call("GET", path, query=q)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def watch(
        self,
        path: str,
        resource_version: str,
        on_event: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        query: list[tuple[str, str]] | None = None,
        timeout_seconds: int = 240,
    ) -> str:
        """Stream the changes at ``path`` after ``resource_version`` (with bookmarks) until the server ends
        the watch; returns the last resourceVersion seen.  Raises :class:`Gone` when it is too old."""
        q = [
            *(query or []),
            ("watch", "1"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        self.calls += 1
        method, url, headers, _, _ = self.api.param_serialize(
            "GET",
            path,
            query_params=q,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(
            method, url, header_params=headers, _request_timeout=(10, timeout_seconds + 30)
        )
        raw = resp.response
        try:
            if resp.status == 410:
                raise Gone(path)
            if not 200 <= resp.status < 300:
                raise ApiException(
                    status=resp.status, reason=resp.reason, body=raw.data.decode(errors="replace")
                )
            rv = resource_version
            for line in raw:
                if stop.is_set():
                    break
                if not line.strip():
                    continue
                ev = json.loads(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(path)
                    raise ApiException(status=obj.get("code") or 500, reason=str(obj.get("message")))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if ev.get("type") != "BOOKMARK":
                    on_event(str(ev.get("type")), obj)
            return rv
        finally:
            raw.release_conn()

    # --- reads ---------------------------------------------------------------------------
    def list_jobs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        path = (
            JOBS_PATH
            if namespace is None
            else _PATHS[(f"{c.GROUP}/{c.VERSION}", c.KIND)].format(ns=namespace)
        )
        return self._list(path)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._list("/api/v1/nodes")

    def list_pods(
        self,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        """Pods of every namespace, or of ``namespace`` only (what a namespace-scoped operator may read)."""
        q = []
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        return self._list("/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods", q)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", _PATHS[(api_version, kind)].format(ns=namespace) + f"/{name}"))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # --- writes (server-side apply) ------------------------------------------------------
    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=meta["namespace"]) + f"/{meta['name']}"
        return dict(
            self._call(
                "PATCH",
                path,
                query=[("fieldManager", self.field_manager), ("force", "true")],
                body=json.dumps(obj),
                content_type="application/apply-patch+yaml",
            )
        )

    def apply_job_status(
        self, namespace: str, name: str, uid: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": c.KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "status": status,
        }
        path = _PATHS[(f"{c.GROUP}/{c.VERSION}", c.KIND)].format(ns=namespace) + f"/{name}/status"
        return dict(
            self._call(
                "PATCH",
                path,
                query=[("fieldManager", self.field_manager), ("force", "true")],
                body=json.dumps(body),
                content_type="application/apply-patch+yaml",
            )
        )

    def delete_pod(
        self, namespace: str, name: str, uid: str, grace_seconds: int | None = None
    ) -> dict[str, Any] | None:
        """Delete a pod (only that uid); returns what the API server answered (the pod, now terminating,
        or a Status once it is gone), or None when it was gone already."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            return dict(self._call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body) or {})
        except ApiException as e:
            if e.status in (404, 409):
                return None
            raise

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid},
            "propagationPolicy": "Background",
        }
        try:
            self._call(
                "DELETE",
                _PATHS[(f"{c.GROUP}/{c.VERSION}", c.KIND)].format(ns=namespace) + f"/{name}",
                body=body,
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def event(self, job: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event on the job: one object per (job, type, reason), its count bumped on repeats."""
        meta = job["metadata"]
        ns = meta["namespace"]
        name = event_name(meta, type_, reason)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            try:
                body = new_event(meta, type_, reason, message, now, self.field_manager)
                self._call("POST", f"/api/v1/namespaces/{ns}/events", body=body)
            except ApiException as e:
                if e.status != 409:
                    raise
                old = self._call("GET", f"/api/v1/namespaces/{ns}/events/{name}")
                self._call(
                    "PATCH",
                    f"/api/v1/namespaces/{ns}/events/{name}",
                    body=repeated_event(old, message, now),  # a dict: the client encodes JSON bodies
                    content_type="application/merge-patch+json",
                )
        except ApiException as e:  # an Event that cannot be posted must not stop the reconcile
            log.warning("could not post event %s on %s/%s: %s", reason, ns, meta["name"], e.reason)

    # --- leases (leader election) ----------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", f"{LEASES_PATH.format(ns=namespace)}/{name}"))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": spec,
        }
        try:
            return dict(self._call("POST", LEASES_PATH.format(ns=namespace), body=body))
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"lease {namespace}/{name} was created by another candidate") from None
            raise

    def update_lease(
        self, namespace: str, name: str, resource_version: str, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace the Lease's spec if it is still at ``resource_version`` (else :class:`Conflict`)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
            "spec": spec,
        }
        try:
            return dict(self._call("PUT", f"{LEASES_PATH.format(ns=namespace)}/{name}", body=body))
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"lease {namespace}/{name} changed since it was read") from None
            raise

    def wait_crd_established(self, name: str, timeout: float) -> None:
        """Poll a CRD until its Established condition is True; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            crd = self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = {x["type"]: x["status"] for x in (crd.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.2)

    def apply_crds(self, docs: Iterator[Mapping[str, Any]]) -> None:
        for doc in docs:
            name = doc["metadata"]["name"]
            self._call(
                "PATCH",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                query=[("fieldManager", self.field_manager), ("force", "true")],
                body=json.dumps(doc),
                content_type="application/apply-patch+yaml",
            )
