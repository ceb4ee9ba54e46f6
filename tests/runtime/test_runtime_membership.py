"""Membership sources (file, Kubernetes over plain HTTP) and pure helpers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import heterotrain_contract as hc
from heterotrain_contract import Member, Membership
from heterotrain_runtime.membership import (
    FileSource,
    KubernetesSource,
    diff_membership,
    membership_from_job,
    pools,
    source_from_env,
)


def _m(epoch: int, pods: list[tuple[str, str]], port: int = 29400) -> Membership:
    return Membership(
        epoch=epoch,
        world=tuple(Member(p, r, t, f"10.0.0.{r + 1}", 1.0) for r, (p, t) in enumerate(pods)),
        master_port=port,
    )


def test_diff_and_pools() -> None:
    a = _m(1, [("p0", "nvidia-a100"), ("p1", "nvidia-a100"), ("p2", "huawei-ascend-910b")])
    b = _m(2, [("p0", "nvidia-a100"), ("p2", "huawei-ascend-910b"), ("p3", "amd-mi300x")])
    d = diff_membership(a, b)
    assert d.added == ("p3",) and d.removed == ("p1",) and d.rerank == ("p2",) and d.epoch_changed
    assert not d.same_world
    assert diff_membership(None, a).added == ("p0", "p1", "p2")
    assert diff_membership(a, a).same_world and not diff_membership(a, a).epoch_changed
    assert pools(a) == {"nvidia-a100": [0, 1], "huawei-ascend-910b": [2]}


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    src = FileSource(str(path))
    assert src.read() is None
    hc.write_membership_file(str(path), _m(1, [("p0", "cpu")]))
    assert src.read() == _m(1, [("p0", "cpu")])
    hc.write_membership_file(str(path), _m(2, [("p0", "cpu"), ("p1", "cpu")]))
    m = src.read()
    assert m is not None and m.epoch == 2 and m.world_size == 2
    src2 = source_from_env({hc.ENV_MEMBERSHIP_SOURCE: f"file:{path}"})
    assert isinstance(src2, FileSource) and src2.read() == m
    with pytest.raises(ValueError):
        source_from_env({hc.ENV_MEMBERSHIP_SOURCE: "bogus"})
    with pytest.raises(ValueError):
        source_from_env({hc.ENV_MEMBERSHIP_SOURCE: "kubernetes"})  # no namespace/name


def test_kubernetes_source_over_http(tmp_path: Path) -> None:
    m = _m(3, [("job-w-0", "nvidia-a100"), ("job-w-1", "huawei-ascend-910b")])
    seen: dict[str, Any] = {}
    state = {"status": {"membership": m.to_dict()}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            body = json.dumps({"kind": hc.KIND, **state}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        src = KubernetesSource(
            "team-a", "job", api_base=f"http://127.0.0.1:{server.server_port}", token_path=str(token)
        )
        assert src.read() == m
        assert seen["path"] == "/apis/heterotrain.io/v1alpha1/namespaces/team-a/heterotrainjobs/job"
        assert seen["auth"] == "Bearer s3cret"
        state["status"] = {}
        assert src.read() is None  # no membership published yet
    finally:
        server.shutdown()


def test_membership_from_job_rejects_bad_records() -> None:
    assert membership_from_job({}) is None
    with pytest.raises(ValueError):
        membership_from_job({"status": {"membership": {"epoch": 1, "world": [{"pod": "x"}]}}})
