"""Process runner (fake kubelet for tests): $(VAR) expansion, quantities, path rewriting, kubeconfig."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from heterotrain_e2e.procnode.expansion import expand, mapping_for
from heterotrain_e2e.procnode.kubeconfig import read_api_server, service_account_kubeconfig
from heterotrain_e2e.procnode.paths import PathMap, PodDirs, safe_relative
from heterotrain_e2e.procnode.quantity import ceil_div, parse_quantity

# Cases from k8s.io/kubernetes/third_party/forked/golang/expansion/expand_test.go
CTX = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$(VAR_REF)", "$(VAR_A)"),  # no recursion
        ("$(VAR_EMPTY)", ""),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("$", "$"),
        ("foo$", "foo$"),
        ("$()", "$()"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("hello world", "hello world"),
        ("", ""),
    ],
)
def test_expand_matches_kubernetes(given: str, expected: str) -> None:
    assert expand(given, mapping_for(CTX)) == expected


def test_mapping_for_looks_contexts_up_in_order() -> None:
    m = mapping_for({"A": "1"}, {"A": "2", "B": "3"})
    assert (m("A"), m("B"), m("C")) == ("1", "3", "$(C)")


@pytest.mark.parametrize(
    ("q", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("1.5", Decimal("1.5")),
        ("32Gi", Decimal(32 * 2**30)),
        ("100Mi", Decimal(100 * 2**20)),
    ],
)
def test_parse_quantity(q: str, value: Decimal) -> None:
    assert parse_quantity(q) == value


@pytest.mark.parametrize("bad", ["", "abc", "1X", "1.2.3", "--1"])
def test_parse_quantity_refuses_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)


def test_ceil_div_as_the_downward_api() -> None:
    assert ceil_div(parse_quantity("500m"), parse_quantity("1")) == 1
    assert ceil_div(parse_quantity("500m"), parse_quantity("1m")) == 500
    assert ceil_div(parse_quantity("1Gi"), parse_quantity("1Mi")) == 1024


PM = PathMap.of(
    [
        ("/data", "/host/v/data"),
        ("/data/sub", "/host/v/sub"),
        ("/etc/cfg/", "/host/v/cfg"),
        ("/var/run/secrets/kubernetes.io/serviceaccount", "/host/sa"),
    ]
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/data", "/host/v/data"),
        ("/data/x.txt", "/host/v/data/x.txt"),
        ("--out=/data/x", "--out=/host/v/data/x"),
        ("open('/data/x').read()", "open('/host/v/data/x').read()"),
        ('open("/data")', 'open("/host/v/data")'),
        ("/a:/data:/b", "/a:/host/v/data:/b"),
        ("/data/sub/y", "/host/v/sub/y"),  # the nested mount wins
        ("/data/subway", "/host/v/data/subway"),
        ("/etc/cfg/app.yaml", "/host/v/cfg/app.yaml"),
        ("/database", "/database"),
        ("/data.txt", "/data.txt"),
        ("/mnt/data", "/mnt/data"),
        ("x/data", "x/data"),
        ("/data-2", "/data-2"),
        ("cp /data/a /data/b", "cp /host/v/data/a /host/v/data/b"),
        ("/var/run/secrets/kubernetes.io/serviceaccount/token", "/host/sa/token"),
        ("", ""),
    ],
)
def test_path_rewriting(given: str, expected: str) -> None:
    assert PM.rewrite(given) == expected


def test_rewriting_is_a_single_pass() -> None:
    pm = PathMap.of([("/tmp", "/state/pods/p/volumes/tmp"), ("/state", "/elsewhere")])
    assert pm.rewrite("/tmp/x") == "/state/pods/p/volumes/tmp/x"


def test_resolve_and_relative_mounts_are_ignored() -> None:
    pm = PathMap.of([("/data", "/h/d"), ("relative", "/h/r"), ("/", "/h/root")])
    assert pm.resolve("/data/a/b") == "/h/d/a/b"
    assert pm.resolve("/data") == "/h/d"
    assert pm.resolve("/other") is None
    assert pm.rewrite("relative /x") == "relative /x"


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../../b", ""])
def test_safe_relative_refuses_escapes(bad: str) -> None:
    with pytest.raises(ValueError):
        safe_relative(bad)


def test_pod_dirs_layout(tmp_path: Path) -> None:
    d = PodDirs(tmp_path, "ns", "p", "u-1")
    assert d.root == tmp_path / "pods" / "ns_p_u-1"
    assert d.log("main") == d.root / "main.log"
    assert d.rootfs("/workspace/run") == d.root / "rootfs" / "workspace" / "run"


def test_kubeconfig_round_trip(tmp_path: Path) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"
    kc = tmp_path / "kubeconfig"
    kc.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://127.0.0.1:6443",
                            "certificate-authority-data": base64.b64encode(ca).decode(),
                        },
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "admin"}}],
                "current-context": "x",
                "users": [{"name": "admin", "user": {"token": "t"}}],
            }
        )
    )
    api = read_api_server(kc)
    assert (api.server, api.host, api.port, api.ca_pem) == ("https://127.0.0.1:6443", "127.0.0.1", 6443, ca)
    out = yaml.safe_load(
        service_account_kubeconfig(api, tmp_path / "sa" / "token", "ns1", "system:serviceaccount:ns1:d")
    )
    assert out["users"][0]["user"] == {"tokenFile": str(tmp_path / "sa" / "token")}
    assert out["contexts"][0]["context"]["namespace"] == "ns1"
    assert base64.b64decode(out["clusters"][0]["cluster"]["certificate-authority-data"]) == ca


def test_kubeconfig_with_ca_file(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"CA")
    kc = tmp_path / "kubeconfig"
    kc.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://localhost", "certificate-authority": "ca.crt"},
                    }
                ],
            }
        )
    )
    api = read_api_server(kc)
    assert (api.port, api.ca_pem) == (443, b"CA")
