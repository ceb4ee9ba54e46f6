"""Process runner (fake kubelet for tests): env resolution and volume planning, without a cluster."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from heterotrain_e2e.procnode.envresolve import (
    ConfigError,
    field_ref_value,
    format_map,
    resolve_env,
    resource_field_value,
    service_env,
)
from heterotrain_e2e.procnode.paths import PodDirs
from heterotrain_e2e.procnode.volumes import (
    SERVICEACCOUNT_MOUNT_PATH,
    VolumeError,
    container_mounts,
    materialize,
    plan_volumes,
    serviceaccount_dir,
)

JSON = dict[str, Any]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class FakeLookup:
    def __init__(self, cms: dict[str, JSON] | None = None, secrets: dict[str, JSON] | None = None) -> None:
        self.cms = cms or {}
        self.secrets = secrets or {}

    def config_map(self, namespace: str, name: str) -> JSON | None:
        return self.cms.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str) -> JSON | None:
        return self.secrets.get(f"{namespace}/{name}")


LOOKUP = FakeLookup(
    cms={
        "ns/cfg": {
            "data": {"mode": "fast", "path": "/data/in", "bad=key": "x"},
            "binaryData": {"bin": b64("B")},
        }
    },
    secrets={"ns/sec": {"data": {"password": b64("hunter2"), "user": b64("me")}}},
)


def make_pod(**container: Any) -> JSON:
    c = {"name": "main", "image": "python:3.11", **container}
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "x", "b": "2"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa1", "containers": [c]},
        "status": {
            "podIP": "127.1.0.7",
            "podIPs": [{"ip": "127.1.0.7"}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
        },
    }


SVC = service_env("127.0.0.1", 6443)
ALLOC = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}


def env_of(pod: JSON, lookup: FakeLookup = LOOKUP) -> dict[str, str]:
    return resolve_env(pod, pod["spec"]["containers"][0], lookup, service_env=SVC, node_allocatable=ALLOC)


def test_field_refs() -> None:
    pod = make_pod()
    assert field_ref_value(pod, "metadata.name") == "p"
    assert field_ref_value(pod, "metadata.namespace") == "ns"
    assert field_ref_value(pod, "metadata.uid") == "u-1"
    assert field_ref_value(pod, "metadata.labels['app']") == "x"
    assert field_ref_value(pod, "metadata.labels['missing']") == ""
    assert field_ref_value(pod, "metadata.annotations['note']") == 'say "hi"'
    assert field_ref_value(pod, "spec.nodeName") == "node-a"
    assert field_ref_value(pod, "spec.serviceAccountName") == "sa1"
    assert field_ref_value(pod, "status.podIP") == "127.1.0.7"
    assert field_ref_value(pod, "status.podIPs") == "127.1.0.7"
    assert field_ref_value(pod, "status.hostIP") == "127.0.0.1"
    assert field_ref_value(pod, "status.hostIPs") == "127.0.0.1"
    with pytest.raises(ConfigError):
        field_ref_value(pod, "metadata.labels")  # only in downwardAPI volumes
    assert field_ref_value(pod, "metadata.labels", volume=True) == 'app="x"\nb="2"'
    assert format_map({"note": 'say "hi"\n'}) == 'note="say \\"hi\\"\\n"'


def test_env_order_expansion_and_sources() -> None:
    pod = make_pod(
        envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}, {"secretRef": {"name": "sec"}}],
        env=[
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(KUBERNETES_SERVICE_PORT)-$(LATER)-$$(A)"},
            {"name": "LATER", "value": "l"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "BIN", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "bin"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {
                "name": "OPT2",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey", "optional": True}},
            },
            {"name": "user", "value": "overridden"},
            {"name": "EMPTY"},
        ],
    )
    env = env_of(pod)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["CM_mode"] == "fast" and env["CM_bin"] == "B"
    assert "CM_bad=key" not in env
    assert env["password"] == "hunter2"
    assert env["user"] == "overridden"
    assert env["B"] == "a-6443-$(LATER)-$(A)"  # only earlier variables expand
    assert (env["POD"], env["IP"], env["MODE"], env["BIN"], env["PW"]) == (
        "p",
        "127.1.0.7",
        "fast",
        "B",
        "hunter2",
    )
    assert "OPT" not in env and "OPT2" not in env
    assert env["EMPTY"] == ""
    keys = list(env)
    assert keys.index("KUBERNETES_SERVICE_HOST") < keys.index("CM_mode") < keys.index("A")


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"configMapKeyRef": {"name": "missing", "key": "k"}}, 'configmap "missing" not found'),
        ({"configMapKeyRef": {"name": "cfg", "key": "nokey"}}, "couldn't find key nokey in ConfigMap ns/cfg"),
        ({"secretKeyRef": {"name": "missing", "key": "k"}}, 'secret "missing" not found'),
        ({"secretKeyRef": {"name": "sec", "key": "nokey"}}, "couldn't find key nokey in Secret ns/sec"),
    ],
)
def test_missing_non_optional_refs_are_config_errors(var: JSON, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        env_of(make_pod(env=[{"name": "X", "valueFrom": var}]))


def test_env_from_missing() -> None:
    with pytest.raises(ConfigError, match='configmap "gone" not found'):
        env_of(make_pod(envFrom=[{"configMapRef": {"name": "gone"}}]))
    assert "X" not in env_of(make_pod(envFrom=[{"secretRef": {"name": "gone", "optional": True}}]))


def test_resource_field_refs() -> None:
    pod = make_pod(resources={"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "250m"}})
    assert resource_field_value(pod, "main", "limits.cpu", None, ALLOC) == "2"
    assert resource_field_value(pod, "main", "limits.cpu", "1m", ALLOC) == "1500"
    assert resource_field_value(pod, "main", "requests.cpu", "1m", ALLOC) == "250"
    assert resource_field_value(pod, "main", "limits.memory", "1Mi", ALLOC) == "1024"
    assert (
        resource_field_value(pod, "main", "requests.memory", "1Mi", ALLOC) == "1024"
    )  # defaults to the limit
    bare = make_pod()
    assert resource_field_value(bare, "main", "limits.cpu", None, ALLOC) == "8"  # node allocatable
    assert resource_field_value(bare, "main", "requests.cpu", None, ALLOC) == "0"
    env = env_of(
        make_pod(
            env=[
                {
                    "name": "M",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Gi"}},
                }
            ]
        )
    )
    assert env["M"] == "32"
    with pytest.raises(ConfigError):
        resource_field_value(bare, "main", "limits.gpu", None, ALLOC)


def volume_pod(volumes: list[JSON], mounts: list[JSON]) -> JSON:
    pod = make_pod(volumeMounts=mounts)
    pod["spec"]["volumes"] = volumes
    return pod


def test_volume_plan_all_kinds(tmp_path: Path) -> None:
    dirs = PodDirs(tmp_path, "ns", "p", "u-1")
    pod = volume_pod(
        [
            {"name": "scratch", "emptyDir": {}},
            {"name": "ckpt", "persistentVolumeClaim": {"claimName": "shared"}},
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "mode", "path": "conf/mode"}]}},
            {"name": "allcfg", "configMap": {"name": "cfg", "defaultMode": 0o600}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "opt", "secret": {"secretName": "nope", "optional": True}},
            {
                "name": "dw",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {
                            "path": "cpu",
                            "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"},
                        },
                    ]
                },
            },
            {
                "name": "kube-api-access-x",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            },
            {"name": "host", "hostPath": {"path": str(tmp_path / "hostdir"), "type": "DirectoryOrCreate"}},
            {"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}},
        ],
        [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "ckpt", "mountPath": "/ckpt", "subPath": "run1"},
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "kube-api-access-x", "mountPath": SERVICEACCOUNT_MOUNT_PATH},
            {"name": "scratch", "mountPath": "/per-pod", "subPathExpr": "$(POD)"},
        ],
    )
    plan = plan_volumes(pod, dirs, LOOKUP, node_allocatable=ALLOC, root_ca=b"RUNNER-CA")
    hp = plan.host_paths
    assert hp["scratch"] == dirs.volume("scratch")
    assert hp["ckpt"] == tmp_path / "pvc" / "ns" / "shared"
    assert hp["eph"] == tmp_path / "pvc" / "ns" / "p-eph"
    assert hp["host"] == tmp_path / "hostdir"
    files = {p: (data, mode) for p, data, mode in plan.files}
    assert files[dirs.volume("cfg") / "conf" / "mode"] == (b"fast", 0o644)
    assert files[dirs.volume("allcfg") / "bin"] == (b"B", 0o600)
    assert files[dirs.volume("sec") / "password"][0] == b"hunter2"
    assert files[dirs.volume("dw") / "labels"][0] == b'app="x"\nb="2"'
    assert files[dirs.volume("dw") / "cpu"][0] == b"8"
    sa = dirs.volume("kube-api-access-x")
    assert files[sa / "ca.crt"][0] == b"RUNNER-CA"  # kube-root-ca.crt missing: the runner's CA
    assert files[sa / "namespace"][0] == b"ns"
    assert plan.warnings and "kube-root-ca.crt" in plan.warnings[0]
    [tok] = plan.tokens
    assert (tok.path, tok.service_account, tok.audience, tok.expiration_seconds) == (
        sa / "token",
        "sa1",
        None,
        3607,
    )

    materialize(plan)
    assert (dirs.volume("cfg") / "conf" / "mode").read_text() == "fast"
    assert (dirs.volume("allcfg") / "bin").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "hostdir").is_dir()

    mounts = container_mounts(pod["spec"]["containers"][0], plan, {"POD": "p"})
    by_path = {m.mount_path: m for m in mounts}
    assert by_path["/ckpt"].host_path == tmp_path / "pvc" / "ns" / "shared" / "run1"
    assert by_path["/ckpt"].make_dir
    assert by_path["/per-pod"].host_path == dirs.volume("scratch") / "p"
    assert serviceaccount_dir(mounts) == sa


def test_volume_errors(tmp_path: Path) -> None:
    dirs = PodDirs(tmp_path, "ns", "p", "u-1")
    with pytest.raises(VolumeError, match='configmap "gone" not found'):
        plan_volumes(
            volume_pod([{"name": "c", "configMap": {"name": "gone"}}], []),
            dirs,
            LOOKUP,
            node_allocatable=ALLOC,
        )
    with pytest.raises(VolumeError, match="not supported"):
        plan_volumes(
            volume_pod([{"name": "n", "nfs": {"server": "x", "path": "/"}}], []),
            dirs,
            LOOKUP,
            node_allocatable=ALLOC,
        )
    with pytest.raises(VolumeError, match="key 'nokey' not found"):
        plan_volumes(
            volume_pod(
                [{"name": "c", "configMap": {"name": "cfg", "items": [{"key": "nokey", "path": "x"}]}}], []
            ),
            dirs,
            LOOKUP,
            node_allocatable=ALLOC,
        )
    plan = plan_volumes(volume_pod([{"name": "v", "emptyDir": {}}], []), dirs, LOOKUP, node_allocatable=ALLOC)
    with pytest.raises(VolumeError, match="names no volume"):
        container_mounts({"volumeMounts": [{"name": "other", "mountPath": "/x"}]}, plan, {})
    with pytest.raises(VolumeError):
        container_mounts(
            {"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../escape"}]}, plan, {}
        )
