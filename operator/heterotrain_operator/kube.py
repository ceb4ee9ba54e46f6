"""The one module of the operator that talks to the Kubernetes API.

Everything the operator writes goes through server-side apply with one field
manager (objects and the job's status alike), so a reconcile that runs twice
changes nothing the second time.  Objects come back as plain JSON dicts.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from heterotrain_runtime import contract as c

log = logging.getLogger(__name__)

_PATHS = {
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "PersistentVolumeClaim"): "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
    ): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    (f"{c.GROUP}/{c.VERSION}", c.KIND): f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{{ns}}/{c.PLURAL}",
}
JOBS_PATH = f"/apis/{c.GROUP}/{c.VERSION}/{c.PLURAL}"


class Conflict(Exception):
    pass


def load_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
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
        resp = self.api.call_api(method_, url, header_params=headers, body=body_, _request_timeout=60)
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason, body=data.decode(errors="replace"))
        return json.loads(data) if data else None

    def _list(self, path: str, query: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cont = None
        while True:
            q = list(query or []) + [("limit", "500")] + ([("continue", cont)] if cont else [])
            page = self._call("GET", path, query=q)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items

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
        self, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        q = []
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        return self._list("/api/v1/pods", q)

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

    def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self._call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
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
        meta = job["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
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
            "source": {"component": self.field_manager},
            "reportingComponent": f"{c.GROUP}/operator",
            "reportingInstance": self.field_manager,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except ApiException as e:  # an Event that cannot be posted must not stop the reconcile
            log.warning(
                "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e.reason
            )

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
