"""Pod volumes as host directories (pure planning; :func:`materialize` writes the plan).

=======================  =====================================================
volume                   host path
=======================  =====================================================
emptyDir                 ``<pod dir>/volumes/<name>`` (``medium: Memory`` too)
persistentVolumeClaim    ``<state-dir>/pvc/<namespace>/<claimName>``, shared by
                         every process node, like ReadWriteMany storage
ephemeral                the same, for the claim ``<pod>-<volume>``
configMap, secret,       files written once into ``<pod dir>/volumes/<name>``
downwardAPI, projected   (no live updates; ``items``, ``defaultMode``/``mode``
                         and ``optional`` honoured)
serviceAccountToken      (projected source) a token from the TokenRequest API
                         for the pod's service account, bound to the pod,
                         refreshed at 80 % of its lifetime
hostPath                 the host path itself
=======================  =====================================================

``subPath`` and ``subPathExpr`` select a path inside the volume (created if
missing).  Other volume types (csi, nfs, ...) are refused with
:class:`VolumeError` and the pod stays in ContainerCreating, as a kubelet that
cannot mount them would.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .envresolve import ConfigError, ObjectLookup, field_ref_value, resource_field_value
from .expansion import expand, mapping_for
from .paths import PodDirs, pvc_dir, safe_relative

JSON = dict[str, Any]
DEFAULT_MODE = 0o644
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
SERVICEACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TOKEN_SECONDS = 3600


class VolumeError(Exception):
    """A volume cannot be set up (yet): a missing object, or a type the runner does not support."""


@dataclass(frozen=True)
class TokenSpec:
    """A service-account token file to request (TokenRequest API) and keep fresh."""

    path: Path
    service_account: str
    audience: str | None
    expiration_seconds: int
    mode: int = DEFAULT_MODE


@dataclass
class VolumePlan:
    host_paths: dict[str, Path] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)
    files: list[tuple[Path, bytes, int]] = field(default_factory=list)
    touch: list[Path] = field(default_factory=list)
    tokens: list[TokenSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Mount:
    mount_path: str
    host_path: Path
    make_dir: bool  # a subPath that must exist as a directory


def _items(
    data: Mapping[str, bytes], items: list[JSON] | None, default_mode: int, optional: bool, what: str
) -> list[tuple[str, bytes, int]]:
    if not items:
        return [(safe_relative(k), v, default_mode) for k, v in sorted(data.items())]
    out = []
    for it in items:
        key = it["key"]
        if key not in data:
            if optional:
                continue
            raise VolumeError(f"configuration key {key!r} not found in {what}")
        out.append((safe_relative(it["path"]), data[key], int(it.get("mode", default_mode))))
    return out


def _config_map_files(
    ns: str, src: JSON, lookup: ObjectLookup, default_mode: int, root_ca: bytes | None, plan: VolumePlan
) -> list[tuple[str, bytes, int]]:
    name = src.get("name", "")
    cm = lookup.config_map(ns, name)
    if cm is None and name == ROOT_CA_CONFIGMAP and root_ca is not None:
        plan.warnings.append(
            f"configmap {ns}/{name} not found; using the API server's CA from the runner's kubeconfig"
        )
        cm = {"data": {"ca.crt": root_ca.decode()}}
    if cm is None:
        if src.get("optional"):
            return []
        raise VolumeError(f'configmap "{name}" not found')
    data: dict[str, bytes] = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return _items(data, src.get("items"), default_mode, bool(src.get("optional")), f"configmap {ns}/{name}")


def _secret_files(
    ns: str, name: str, src: JSON, lookup: ObjectLookup, default_mode: int
) -> list[tuple[str, bytes, int]]:
    sec = lookup.secret(ns, name)
    if sec is None:
        if src.get("optional"):
            return []
        raise VolumeError(f'secret "{name}" not found')
    data = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
    return _items(data, src.get("items"), default_mode, bool(src.get("optional")), f"secret {ns}/{name}")


def _downward_files(
    pod: JSON, items: list[JSON], default_mode: int, node_allocatable: Mapping[str, Any]
) -> list[tuple[str, bytes, int]]:
    out = []
    for it in items:
        try:
            if "fieldRef" in it:
                value = field_ref_value(pod, it["fieldRef"]["fieldPath"], volume=True)
            elif "resourceFieldRef" in it:
                ref = it["resourceFieldRef"]
                value = resource_field_value(
                    pod, ref.get("containerName", ""), ref["resource"], ref.get("divisor"), node_allocatable
                )
            else:
                continue
        except ConfigError as e:
            raise VolumeError(str(e)) from e
        out.append((safe_relative(it["path"]), value.encode(), int(it.get("mode", default_mode))))
    return out


def plan_volumes(
    pod: JSON,
    dirs: PodDirs,
    lookup: ObjectLookup,
    *,
    node_allocatable: Mapping[str, Any],
    root_ca: bytes | None = None,
) -> VolumePlan:
    """Decide the host path and the content of every volume of the pod (no I/O but the lookup)."""
    plan = VolumePlan()
    ns = pod["metadata"]["namespace"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        files: list[tuple[str, bytes, int]] = []
        if "emptyDir" in vol:
            host = dirs.volume(name)
        elif "persistentVolumeClaim" in vol:
            host = pvc_dir(dirs.state_dir, ns, vol["persistentVolumeClaim"]["claimName"])
        elif "ephemeral" in vol:
            host = pvc_dir(dirs.state_dir, ns, f"{pod['metadata']['name']}-{name}")
        elif "hostPath" in vol:
            hp = vol["hostPath"]
            host = Path(hp["path"])
            kind = hp.get("type") or ""
            if kind == "FileOrCreate":
                plan.touch.append(host)
            elif kind == "DirectoryOrCreate":
                plan.dirs.append(host)
            plan.host_paths[name] = host  # the host path itself: nothing else to create
            continue
        elif "configMap" in vol:
            host = dirs.volume(name)
            src = vol["configMap"]
            files = _config_map_files(
                ns, src, lookup, int(src.get("defaultMode", DEFAULT_MODE)), root_ca, plan
            )
        elif "secret" in vol:
            host = dirs.volume(name)
            src = vol["secret"]
            files = _secret_files(
                ns, src.get("secretName", ""), src, lookup, int(src.get("defaultMode", DEFAULT_MODE))
            )
        elif "downwardAPI" in vol:
            host = dirs.volume(name)
            src = vol["downwardAPI"]
            files = _downward_files(
                pod, src.get("items") or [], int(src.get("defaultMode", DEFAULT_MODE)), node_allocatable
            )
        elif "projected" in vol:
            host = dirs.volume(name)
            src = vol["projected"]
            mode = int(src.get("defaultMode", DEFAULT_MODE))
            for s in src.get("sources") or []:
                if "configMap" in s:
                    files += _config_map_files(ns, s["configMap"], lookup, mode, root_ca, plan)
                elif "secret" in s:
                    files += _secret_files(ns, s["secret"].get("name", ""), s["secret"], lookup, mode)
                elif "downwardAPI" in s:
                    files += _downward_files(pod, s["downwardAPI"].get("items") or [], mode, node_allocatable)
                elif "serviceAccountToken" in s:
                    t = s["serviceAccountToken"]
                    plan.tokens.append(
                        TokenSpec(
                            path=host / safe_relative(t["path"]),
                            service_account=sa,
                            audience=t.get("audience") or None,
                            expiration_seconds=int(t.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS),
                            mode=mode,
                        )
                    )
                else:
                    raise VolumeError(
                        f"volume {name!r}: projected source {sorted(s)} is not supported by the "
                        "process runner"
                    )
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name!r}: type {kinds} is not supported by the process runner")
        plan.host_paths[name] = host
        plan.dirs.append(host)
        plan.files += [(host / rel, data, mode) for rel, data, mode in files]
    return plan


def container_mounts(container: JSON, plan: VolumePlan, env: Mapping[str, str]) -> list[Mount]:
    """The container's volumeMounts resolved to host paths (``subPath``/``subPathExpr`` applied)."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        host = plan.host_paths.get(vm["name"])
        if host is None:
            raise VolumeError(f"volumeMount {vm['name']!r} names no volume of the pod")
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], mapping_for(env))
        make_dir = False
        if sub:
            try:
                host = host / safe_relative(sub)
            except ValueError as e:
                raise VolumeError(f"volumeMount {vm['name']!r}: {e}") from e
            make_dir = True
        mounts.append(Mount(vm["mountPath"], host, make_dir))
    return mounts


def serviceaccount_dir(mounts: list[Mount]) -> Path | None:
    """The host directory mounted at the service-account path, if any."""
    for m in mounts:
        if m.mount_path.rstrip("/") == SERVICEACCOUNT_MOUNT_PATH:
            return m.host_path
    return None


# --- I/O --------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (a reader never sees a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def materialize(plan: VolumePlan) -> None:
    """Create the directories and write the files of a plan (tokens are written by the caller)."""
    for d in plan.dirs:
        d.mkdir(parents=True, exist_ok=True)
    for p in plan.touch:
        p.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            p.touch(exist_ok=True)
    for path, data, mode in plan.files:
        write_file(path, data, mode)
