"""A container's environment as the kubelet computes it (pure: objects come through a lookup).

Order, as in the kubelet's ``makeEnvironmentVariables``: the service
variables (here only ``KUBERNETES_SERVICE_HOST``/``_PORT`` & co. of the real
API server: cluster IPs are not routable without kube-proxy), then ``envFrom``
(configMaps and secrets, with their prefix), then ``env`` in order, where a
``value`` has ``$(VAR)`` expanded against the variables defined so far plus
the service variables.  ``valueFrom`` covers ``fieldRef``, ``resourceFieldRef``,
``configMapKeyRef`` and ``secretKeyRef`` (``optional`` honoured).  Anything
missing that is not optional raises :class:`ConfigError`, which the runner
reports as the waiting reason ``CreateContainerConfigError`` and retries.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Protocol

from .expansion import expand, mapping_for
from .quantity import ceil_div, parse_quantity

JSON = dict[str, Any]


class ConfigError(Exception):
    """The container cannot be configured yet (a missing configMap, secret or key)."""


class ObjectLookup(Protocol):
    """Reads the objects a pod refers to; ``None`` means "not found" (other errors raise)."""

    def config_map(self, namespace: str, name: str) -> JSON | None: ...

    def secret(self, namespace: str, name: str) -> JSON | None: ...


_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.*)'\]$")


def field_ref_value(pod: JSON, field_path: str, *, volume: bool = False) -> str:
    """The value of a downward-API ``fieldRef`` (``volume``: also the whole labels/annotations maps)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    m = _SUBSCRIPT.match(field_path)
    if m:
        which = "labels" if m.group(1).endswith("labels") else "annotations"
        return str((meta.get(which) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    if field_path in ("status.podIPs", "status.hostIPs"):
        key = "podIPs" if field_path == "status.podIPs" else "hostIPs"
        return ",".join(str(x.get("ip", "")) for x in status.get(key) or [])
    if volume and field_path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(field_path.split(".")[1]) or {})
    raise ConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_map(m: Mapping[str, Any]) -> str:
    """Labels/annotations as a downwardAPI volume file: sorted ``key="value"`` lines."""
    return "\n".join(f"{k}={_go_quote(str(m[k]))}" for k in sorted(m))


def resource_field_value(
    pod: JSON, container_name: str, resource: str, divisor: str | None, node_allocatable: Mapping[str, Any]
) -> str:
    """A ``resourceFieldRef``: limits default to the node's allocatable, requests to 0 (as the kubelet)."""
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"].get("containers", [])]
    container = next((c for c in containers if c.get("name") == container_name), None)
    if container is None:
        raise ConfigError(f"resourceFieldRef names unknown container {container_name!r}")
    kind, _, res = resource.partition(".")
    if kind not in ("limits", "requests") or (
        res not in ("cpu", "memory", "ephemeral-storage") and not (res.startswith("hugepages-"))
    ):
        raise ConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(res)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(res)  # an unset request defaults to the limit
    if raw is None:
        raw = node_allocatable.get(res, "0") if kind == "limits" else "0"
    value = parse_quantity(raw)
    div = parse_quantity(divisor) if divisor not in (None, "", "0") else parse_quantity("1")
    return str(ceil_div(value, div))


def _decode_secret(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", "surrogateescape")


def _config_map_value(obj: JSON, key: str) -> str | None:
    if key in (obj.get("data") or {}):
        return str(obj["data"][key])
    if key in (obj.get("binaryData") or {}):
        return _decode_secret(obj["binaryData"][key])
    return None


def _valid_env_name(name: str) -> bool:
    # Relaxed validation (GA in 1.34): printable ASCII except '='.
    return bool(name) and "=" not in name and all(0x20 <= ord(c) < 0x7F for c in name)


def resolve_env(
    pod: JSON,
    container: JSON,
    lookup: ObjectLookup,
    *,
    service_env: Mapping[str, str],
    node_allocatable: Mapping[str, Any],
) -> dict[str, str]:
    """The container's environment: service variables, then envFrom, then env (insertion-ordered)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(service_env)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        if "configMapRef" in src:
            ref = src["configMapRef"]
            cm = lookup.config_map(ns, ref["name"])
            if cm is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'configmap "{ref["name"]}" not found')
            items = {k: str(v) for k, v in (cm.get("data") or {}).items()}
            items.update({k: _decode_secret(v) for k, v in (cm.get("binaryData") or {}).items()})
        elif "secretRef" in src:
            ref = src["secretRef"]
            sec = lookup.secret(ns, ref["name"])
            if sec is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'secret "{ref["name"]}" not found')
            items = {k: _decode_secret(v) for k, v in (sec.get("data") or {}).items()}
            items.update({k: str(v) for k, v in (sec.get("stringData") or {}).items()})
        else:
            continue
        for k, v in items.items():
            if _valid_env_name(prefix + k):
                env[prefix + k] = v

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var or var.get("value"):
            env[name] = expand(str(var.get("value") or ""), mapping_for(env, service_env))
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            env[name] = resource_field_value(
                pod,
                ref.get("containerName") or container["name"],
                ref["resource"],
                ref.get("divisor"),
                node_allocatable,
            )
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            cm = lookup.config_map(ns, ref["name"])
            value = None if cm is None else _config_map_value(cm, ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                if cm is None:
                    raise ConfigError(f'configmap "{ref["name"]}" not found')
                raise ConfigError(f"couldn't find key {ref['key']} in ConfigMap {ns}/{ref['name']}")
            env[name] = value
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            sec = lookup.secret(ns, ref["name"])
            data = None if sec is None else (sec.get("data") or {}).get(ref["key"])
            if data is None:
                if ref.get("optional"):
                    continue
                if sec is None:
                    raise ConfigError(f'secret "{ref["name"]}" not found')
                raise ConfigError(f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}")
            env[name] = _decode_secret(data)
        else:
            raise ConfigError(f"env var {name!r}: unsupported valueFrom {sorted(vf)}")
    return env


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables of the ``kubernetes`` service, pointing at the real API server."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }
