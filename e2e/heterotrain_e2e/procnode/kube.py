"""Plain-JSON access to the API server through a ``kubernetes.client.ApiClient``'s connection pool.

The process runner works on pods as the API server serves them (camelCase
dicts), so it talks REST with the kubernetes client's configuration, TLS
setup and urllib3 pool, but without the generated models: status bodies are
sent back exactly as built, and unknown fields survive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

JSON = dict[str, Any]
log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        try:
            self.message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            self.message = body[:300]
        super().__init__(f"{status} {reason}: {self.message}")


def q(s: str) -> str:
    return quote(s, safe="")


class KubeREST:
    def __init__(self, api_client: Any, user_agent: str = "heterotrain-procnode") -> None:
        self._api = api_client
        self._cfg = api_client.configuration
        self._pool: urllib3.PoolManager = api_client.rest_client.pool_manager
        self._host = str(self._cfg.host).rstrip("/")
        self._ua = user_agent

    @property
    def host(self) -> str:
        """The API server's URL."""
        return self._host

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self._ua}
        if content_type:
            h["Content-Type"] = content_type
        cfg = self._cfg
        if getattr(cfg, "refresh_api_key_hook", None) is not None:
            cfg.refresh_api_key_hook(cfg)
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                h[setting["key"]] = setting["value"]
        return h

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self._host + path
        if query:
            clean = {
                k: ("true" if v is True else "false" if v is False else v)
                for k, v in query.items()
                if v is not None
            }
            if clean:
                url += "?" + urlencode(clean)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        data = None if body is None else json.dumps(body).encode()
        resp = self._pool.request(
            method,
            self._url(path, query),
            body=data,
            headers=self._headers(content_type if data is not None else None),
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            preload_content=True,
            retries=False,
        )
        text = resp.data.decode("utf-8", "replace")
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, resp.reason or "", text)
        return dict(json.loads(text)) if text else {}

    def get(self, path: str, **query: Any) -> JSON:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str, **query: Any) -> JSON | None:
        try:
            return self.get(path, **query)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any, **query: Any) -> JSON:
        return self.request("POST", path, query=query, body=body)

    def put(self, path: str, body: Any, **query: Any) -> JSON:
        return self.request("PUT", path, query=query, body=body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH, **query: Any) -> JSON:
        return self.request("PATCH", path, query=query, body=body, content_type=content_type)

    def delete(self, path: str, body: Any = None, **query: Any) -> JSON:
        return self.request("DELETE", path, query=query, body=body)

    def watch(self, path: str, *, timeout_seconds: int = 300, **query: Any) -> Iterator[JSON]:
        """Stream watch events (``{"type", "object"}``) until the server ends the watch."""
        query = {**query, "watch": True, "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": True}
        resp = self._pool.request(
            "GET",
            self._url(path, query),
            headers=self._headers(),
            timeout=urllib3.Timeout(connect=10.0, read=timeout_seconds + 30),
            preload_content=False,
            retries=False,
        )
        try:
            if not 200 <= resp.status <= 299:
                raise ApiError(resp.status, resp.reason or "", resp.read().decode("utf-8", "replace"))
            buf = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield dict(json.loads(line))
            if buf.strip():
                yield dict(json.loads(buf))
        finally:
            resp.release_conn()


def pod_path(namespace: str, name: str = "", sub: str = "") -> str:
    p = f"/api/v1/namespaces/{q(namespace)}/pods"
    if name:
        p += f"/{q(name)}"
    if sub:
        p += f"/{sub}"
    return p


def make_api_client(kubeconfig: str, pool_size: int = 64) -> Any:
    """An ApiClient for a kubeconfig, with a connection pool large enough for watches and pod workers."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call,unused-ignore]
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)
