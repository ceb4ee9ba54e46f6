"""The process runner (a fake kubelet for tests) against the real local control plane.

Pods are created WITHOUT a nodeName: the real kube-scheduler binds them to a
process node (nodeSelector ``heterotrain.io/runner=process``), and the process
runner started by cluster-up runs them as local processes.  Every wait polls
with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from heterotrain_e2e import testing
from heterotrain_e2e.procnode.kube import KubeREST, pod_path, q

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
RUNNER_LABEL = "heterotrain.io/runner"
SPEED_ANNOTATION = "heterotrain.io/emulated-speed"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    return testing.wait_for(what, probe, timeout=timeout, interval=interval)


@pytest.fixture(scope="module")
def rest(cluster: Any) -> KubeREST:
    return KubeREST(cluster.api_client())


@pytest.fixture(scope="module")
def ns(cluster: Any, rest: KubeREST) -> Iterator[str]:
    name = f"procnode-e2e-{uuid.uuid4().hex[:6]}"
    rest.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(
        "the default service account",
        lambda: rest.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
    )
    yield name
    rest.delete(f"/api/v1/namespaces/{name}")


def pod_manifest(name: str, containers: list[JSON], **spec: Any) -> JSON:
    spec.setdefault("restartPolicy", "Never")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "procnode-e2e", "test": name},
            "annotations": {"procnode.test/note": "hello"},
        },
        "spec": {
            "nodeSelector": {RUNNER_LABEL: "process"},
            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 10,
            "containers": containers,
            **spec,
        },
    }


def py(name: str, code: str, **extra: Any) -> JSON:
    return {"name": name, "image": "python:3.11-slim", "command": ["python", "-u", "-c", code], **extra}


def create(rest: KubeREST, ns: str, manifest: JSON) -> JSON:
    return rest.post(pod_path(ns), manifest)


def get(rest: KubeREST, ns: str, name: str) -> JSON | None:
    return rest.get_or_none(pod_path(ns, name))


def wait_phase(rest: KubeREST, ns: str, name: str, phases: tuple[str, ...], timeout: float = 30.0) -> JSON:
    def probe() -> JSON | None:
        p = get(rest, ns, name)
        return p if p and (p.get("status") or {}).get("phase") in phases else None

    return dict(wait_for(f"pod {name} to be {'/'.join(phases)}", probe, timeout))


def log_path(cluster: Any, pod: JSON, container: str) -> Path:
    m = pod["metadata"]
    return (
        Path(cluster.state_dir)
        / "procnode"
        / "pods"
        / f"{m['namespace']}_{m['name']}_{m['uid']}"
        / f"{container}.log"
    )


def read_log(cluster: Any, pod: JSON, container: str) -> str:
    try:
        return log_path(cluster, pod, container).read_text()
    except FileNotFoundError:
        return ""


def container_status(pod: JSON, name: str, init: bool = False) -> JSON:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next(c for c in pod["status"][key] if c["name"] == name)


def pid_of(pod: JSON, container: str) -> int:
    cid = container_status(pod, container)["containerID"]
    assert cid.startswith("process://"), cid
    return int(cid.removeprefix("process://"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(rest: KubeREST, ns: str, name: str, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    wait_for(f"pod {name} to disappear", lambda: get(rest, ns, name) is None, timeout, interval=0.1)
    return time.monotonic() - t0


def test_scheduled_pod_runs_to_success(cluster: Any, rest: KubeREST, ns: str) -> None:
    create(rest, ns, pod_manifest("ok", [py("main", "import sys; print('hello from', sys.executable)")]))
    pod = wait_phase(rest, ns, "ok", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    node = rest.get(f"/api/v1/nodes/{q(pod['spec']['nodeName'])}")
    assert node["metadata"]["labels"][RUNNER_LABEL] == "process"  # bound by the real scheduler
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "True"
    term = container_status(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert term["containerID"].startswith("process://")
    out = read_log(cluster, pod, "main")
    assert out.startswith("hello from ") and "python" in out  # `python` resolved to the project's env
    # kubectl logs goes through the API server to the runner's kubelet endpoint.
    assert cluster.kubectl("logs", "-n", ns, "ok").stdout == out


def test_failing_command_fails_the_pod_with_its_exit_code(rest: KubeREST, ns: str) -> None:
    create(rest, ns, pod_manifest("fails", [py("main", "import sys; sys.exit(7)")]))
    pod = wait_phase(rest, ns, "fails", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    term = container_status(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (7, "Error")


ENV_PROBE = r"""
import json, os
from kubernetes import client, config
config.load_kube_config()
who = client.AuthenticationV1Api().create_self_subject_review(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
try:
    client.CoreV1Api().list_namespaced_secret(os.environ["MY_NAMESPACE"])
    secrets = "allowed"
except client.ApiException as e:
    secrets = e.status
env = {k: v for k, v in os.environ.items()}
with open("/out/env.json", "w") as f:
    json.dump(env, f)
print(json.dumps({"env": env, "user": who.status.user_info.username, "secrets": secrets,
                  "token": open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()[:10]}))
"""


@pytest.fixture(scope="module")
def env_pod(cluster: Any, rest: KubeREST, ns: str) -> tuple[JSON, JSON]:
    rest.post(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": "fast"}},
    )
    rest.post(
        f"/api/v1/namespaces/{ns}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"pw": "hunter2"}},
    )

    def field(path: str) -> JSON:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "MY_POD", **field("metadata.name")},
        {"name": "MY_NAMESPACE", **field("metadata.namespace")},
        {"name": "MY_UID", **field("metadata.uid")},
        {"name": "MY_LABEL", **field("metadata.labels['app']")},
        {"name": "MY_NOTE", **field("metadata.annotations['procnode.test/note']")},
        {"name": "MY_NODE", **field("spec.nodeName")},
        {"name": "MY_SA", **field("spec.serviceAccountName")},
        {"name": "MY_POD_IP", **field("status.podIP")},
        {"name": "MY_HOST_IP", **field("status.hostIP")},
        {"name": "MY_MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "MY_PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
        {"name": "MY_MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        {"name": "MY_EXPANDED", "value": "$(MY_POD)@$(MY_POD_IP)"},
        {"name": "MY_OUT", "value": "/out/env.json"},
    ]
    create(
        rest,
        ns,
        pod_manifest(
            "env",
            [py("main", ENV_PROBE, env=env, volumeMounts=[{"name": "out", "mountPath": "/out"}])],
            volumes=[{"name": "out", "emptyDir": {}}],
        ),
    )
    pod = wait_phase(rest, ns, "env", ("Succeeded", "Failed"), timeout=45)
    out = read_log(cluster, pod, "main")
    assert pod["status"]["phase"] == "Succeeded", out
    return pod, json.loads(out.strip().splitlines()[-1])


def test_env_reaches_the_process(cluster: Any, rest: KubeREST, env_pod: tuple[JSON, JSON]) -> None:
    pod, out = env_pod
    env = out["env"]
    meta = pod["metadata"]
    assert env["MY_POD"] == "env" == env["HOSTNAME"]
    assert env["MY_NAMESPACE"] == meta["namespace"]
    assert env["MY_UID"] == meta["uid"]
    assert env["MY_LABEL"] == "procnode-e2e"
    assert env["MY_NOTE"] == "hello"
    assert env["MY_NODE"] == pod["spec"]["nodeName"]
    assert env["MY_SA"] == "default"
    assert env["MY_POD_IP"] == pod["status"]["podIP"]
    assert ipaddress.ip_address(env["MY_POD_IP"]) in pod_network(cluster)
    assert env["MY_HOST_IP"] == "127.0.0.1" == pod["status"]["hostIP"]
    assert (env["MY_MODE"], env["MY_PW"]) == ("fast", "hunter2")
    assert "MY_MISSING" not in env
    assert env["MY_EXPANDED"] == f"env@{pod['status']['podIP']}"
    assert rest.host.endswith(f"//{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}")
    # the node's emulated speed is enforced through cgroups (see the tests below), never told to the process
    assert not any(k.startswith("HETEROTRAIN_EMULATED") for k in env)
    # The mount path was rewritten to the emptyDir's host directory, which holds the file.
    host_out = env["MY_OUT"]
    assert host_out != "/out/env.json" and host_out.endswith("/volumes/out/env.json")
    assert json.loads(Path(host_out).read_text())["MY_POD"] == "env"


def test_pod_authenticates_as_its_service_account(env_pod: tuple[JSON, JSON]) -> None:
    pod, out = env_pod
    ns = pod["metadata"]["namespace"]
    assert out["user"] == f"system:serviceaccount:{ns}:default"
    assert out["secrets"] == 403  # RBAC applies: the default service account may not list secrets
    sa_dir = Path(out["env"]["HETEROTRAIN_SERVICEACCOUNT_DIR"])
    assert (sa_dir / "namespace").read_text() == ns
    assert out["token"] == (sa_dir / "token").read_text()[:10]


def test_init_containers_run_first_in_order(rest: KubeREST, ns: str) -> None:
    append = "import time; open('/w/order', 'a').write('{} %f\\n' % time.time())"
    check = (
        "import sys; lines = open('/w/order').read().split(); "
        "sys.exit(0 if lines[0::2] == ['init-a', 'init-b'] else 1)"
    )
    create(
        rest,
        ns,
        pod_manifest(
            "inits",
            [py("main", check, volumeMounts=[{"name": "w", "mountPath": "/w"}])],
            initContainers=[
                py(n, append.format(n), volumeMounts=[{"name": "w", "mountPath": "/w"}])
                for n in ("init-a", "init-b")
            ],
            volumes=[{"name": "w", "emptyDir": {}}],
        ),
    )
    pod = wait_phase(rest, ns, "inits", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    a, b = (container_status(pod, n, init=True)["state"]["terminated"] for n in ("init-a", "init-b"))
    main = container_status(pod, "main")["state"]["terminated"]
    assert a["reason"] == b["reason"] == "Completed"
    assert a["finishedAt"] <= b["startedAt"] and b["finishedAt"] <= main["startedAt"]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Initialized"] == "True"


def test_failed_container_is_restarted_under_on_failure(rest: KubeREST, ns: str) -> None:
    code = (
        "import os, sys; p = '/w/runs'; n = len(open(p).read()) if os.path.exists(p) else 0; "
        "open(p, 'a').write('x'); sys.exit(0 if n else 3)"
    )
    create(
        rest,
        ns,
        pod_manifest(
            "retry",
            [py("main", code, volumeMounts=[{"name": "w", "mountPath": "/w"}])],
            restartPolicy="OnFailure",
            volumes=[{"name": "w", "emptyDir": {}}],
        ),
    )
    pod = wait_phase(rest, ns, "retry", ("Succeeded", "Failed"))
    cs = container_status(pod, "main")
    assert pod["status"]["phase"] == "Succeeded"
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 3


SLEEPER = r"""
import os, signal, socket, sys, time
def on_term(signum, frame):
    print("got SIGTERM", "ignoring it" if os.environ.get("IGNORE_TERM") else "exiting", flush=True)
    if not os.environ.get("IGNORE_TERM"):
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
s = socket.socket()
s.bind((os.environ["POD_IP"], 8080))  # every pod has its own address: same port, no clash
s.listen()
print("ready", os.environ["POD_IP"], flush=True)
time.sleep(600)
"""


def sleeper(name: str, ignore_term: bool = False, grace: int = 10) -> JSON:
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    if ignore_term:
        env.append({"name": "IGNORE_TERM", "value": "1"})
    return pod_manifest(name, [py("main", SLEEPER, env=env)], terminationGracePeriodSeconds=grace)


def pod_network(cluster: Any) -> ipaddress.IPv4Network:
    """The /22 of 198.18.0.0/15 the cluster harness made local for this cluster's pods."""
    state = json.loads((Path(cluster.state_dir) / "state.json").read_text())
    net = ipaddress.IPv4Network(state["podNetwork"]["cidr"])
    assert net.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))
    return net


def endpoint_addresses(rest: KubeREST, ns: str, service: str) -> set[str]:
    """Ready addresses of a Service, from its EndpointSlices (the endpointslice controller's)."""
    sel = f"kubernetes.io/service-name={service}"
    slices = rest.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", labelSelector=sel)
    return {
        a
        for sl in slices["items"]
        for ep in sl.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready")
        for a in ep["addresses"]
    }


def wait_ready_log(cluster: Any, rest: KubeREST, ns: str, name: str) -> JSON:
    pod = wait_phase(rest, ns, name, ("Running",))
    wait_for(f"{name} to listen", lambda: "ready" in read_log(cluster, pod, "main"))
    return pod


def test_two_pods_get_distinct_pod_ips_and_deletion_sends_sigterm(
    cluster: Any, rest: KubeREST, ns: str
) -> None:
    create(rest, ns, sleeper("sleep-a"))
    create(rest, ns, sleeper("sleep-b"))
    a = wait_ready_log(cluster, rest, ns, "sleep-a")
    b = wait_ready_log(cluster, rest, ns, "sleep-b")
    ip_a, ip_b = a["status"]["podIP"], b["status"]["podIP"]
    assert ip_a != ip_b
    net = pod_network(cluster)
    assert ipaddress.ip_address(ip_a) in net and ipaddress.ip_address(ip_b) in net
    assert {c["type"]: c["status"] for c in a["status"]["conditions"]}["Ready"] == "True"
    # Not loopback: a Service selecting the pods holds both addresses as endpoints, and they answer.
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sleepers"},
        "spec": {"selector": {"app": "procnode-e2e"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    rest.post(f"/api/v1/namespaces/{ns}/services", svc)
    eps = wait_for(
        "both pods as endpoints",
        lambda: (addrs := endpoint_addresses(rest, ns, "sleepers")) >= {ip_a, ip_b} and addrs,
        timeout=30,
    )
    assert not any(ipaddress.ip_address(x).is_loopback for x in eps)
    legacy = rest.get(f"/api/v1/namespaces/{ns}/endpoints/sleepers")  # what older consumers read
    assert {a["ip"] for sub in legacy.get("subsets") or [] for a in sub.get("addresses") or []} >= {
        ip_a,
        ip_b,
    }
    for ip in (ip_a, ip_b):
        socket.create_connection((ip, 8080), timeout=5).close()
    rest.delete(f"/api/v1/namespaces/{ns}/services/sleepers")
    pid = pid_of(a, "main")
    assert alive(pid)

    rest.delete(pod_path(ns, "sleep-a"))
    took = wait_gone(rest, ns, "sleep-a", timeout=20)
    assert took < 8, f"deleting a pod that exits on SIGTERM took {took:.1f}s"
    assert "got SIGTERM exiting" in read_log(cluster, a, "main")
    wait_for("the process to be gone", lambda: not alive(pid), timeout=5)
    rest.delete(pod_path(ns, "sleep-b"), {"gracePeriodSeconds": 1})
    wait_gone(rest, ns, "sleep-b")


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(
    cluster: Any, rest: KubeREST, ns: str
) -> None:
    grace = 3
    create(rest, ns, sleeper("stubborn", ignore_term=True, grace=grace))
    pod = wait_ready_log(cluster, rest, ns, "stubborn")
    pid = pid_of(pod, "main")
    rest.delete(pod_path(ns, "stubborn"))
    took = wait_gone(rest, ns, "stubborn", timeout=grace + 15)
    assert took >= grace - 0.5, f"gone after {took:.1f}s, before the {grace}s grace period"
    assert "got SIGTERM ignoring it" in read_log(cluster, pod, "main")
    wait_for("the process to be gone", lambda: not alive(pid), timeout=5)


def test_pod_on_a_foreign_node_is_ignored(cluster: Any, rest: KubeREST, ns: str) -> None:
    kwok_nodes = rest.get("/api/v1/nodes", labelSelector=f"{RUNNER_LABEL}=kwok")["items"]
    if not kwok_nodes:
        pytest.skip("the profile has no kwok node")
    node = kwok_nodes[0]["metadata"]["name"]
    m = pod_manifest(
        "foreign",
        [py("main", "print('must not run here')")],
        nodeName=node,
        tolerations=[{"operator": "Exists"}],
    )
    m["spec"].pop("nodeSelector")
    create(rest, ns, m)
    # kwok owns that node: whatever it reports, the process runner never ran a process for it.
    pod = wait_for(
        "kwok to report the pod", lambda: (get(rest, ns, "foreign") or {}).get("status", {}).get("phase")
    )
    assert pod
    p = get(rest, ns, "foreign")
    assert p is not None
    for cs in p["status"].get("containerStatuses") or []:
        assert not str(cs.get("containerID", "")).startswith("process://")
    assert not any("_foreign_" in d.name for d in (Path(cluster.state_dir) / "procnode" / "pods").iterdir())


def test_runner_pid_files_track_live_processes(cluster: Any, rest: KubeREST, ns: str) -> None:
    create(rest, ns, sleeper("tracked", grace=1))
    pod = wait_ready_log(cluster, rest, ns, "tracked")
    pid = pid_of(pod, "main")
    pid_file = Path(cluster.state_dir) / "procnode" / "pids" / str(pid)
    assert pid_file.read_text().split()[0] == str(pid)
    rest.delete(pod_path(ns, "tracked"))
    wait_gone(rest, ns, "tracked")
    wait_for("the pid file to be removed", lambda: not pid_file.exists(), timeout=5)
    assert not alive(pid)


# --- limits through cgroups -----------------------------------------------------------------


def runner_groups(cluster: Any) -> dict[str, Path]:
    """The process runner's owner groups (controller -> directory), as it recorded them."""
    record = Path(cluster.state_dir) / "procnode" / "cgroups.json"
    return {c: Path(d) for c, d in json.loads(record.read_text()).items()}


def test_a_container_past_its_memory_limit_is_oom_killed(cluster: Any, rest: KubeREST, ns: str) -> None:
    hog = "x = bytearray(512 << 20); print('survived', flush=True)"
    create(rest, ns, pod_manifest("hog", [py("main", hog, resources={"limits": {"memory": "64Mi"}})]))
    pod = wait_phase(rest, ns, "hog", ("Succeeded", "Failed"), timeout=60)
    assert pod["status"]["phase"] == "Failed"  # restartPolicy Never
    term = container_status(pod, "main")["state"]["terminated"]
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137), term
    assert "survived" not in read_log(cluster, pod, "main")
    groups = runner_groups(cluster)
    uid = pod["metadata"]["uid"]
    rest.delete(pod_path(ns, "hog"))
    wait_gone(rest, ns, "hog")
    wait_for(
        "the pod's cgroups to be removed",
        lambda: not any((d / f"pod-{uid}").exists() for d in groups.values()),
        timeout=10,
    )


QUOTA_PROBE = r"""
import json
own = {l.split(":")[1]: l.split(":")[2].strip() for l in open("/proc/self/cgroup")}
pod_dir = "/sys/fs/cgroup/cpu" + own["cpu"].rsplit("/", 1)[0]
quota, period = (int(open(f"{pod_dir}/cpu.cfs_{k}_us").read()) for k in ("quota", "period"))
print(json.dumps({"cores": quota / period, "group": own["cpu"]}), flush=True)
"""


def test_a_pod_on_an_emulated_node_gets_a_cpu_quota_per_requested_device(
    cluster: Any, rest: KubeREST, ns: str
) -> None:
    cores = {}
    for name, accel, gpus in (
        ("a100-1", "nvidia-a100", 1),
        ("a100-2", "nvidia-a100", 2),
        ("h100-1", "nvidia-h100", 1),
    ):
        m = pod_manifest(name, [py("main", QUOTA_PROBE, resources={"limits": {"nvidia.com/gpu": str(gpus)}})])
        m["spec"]["nodeSelector"]["heterotrain.io/accelerator"] = accel
        create(rest, ns, m)
        pod = wait_phase(rest, ns, name, ("Succeeded", "Failed"), timeout=60)
        out = read_log(cluster, pod, "main")
        assert pod["status"]["phase"] == "Succeeded", out
        node = rest.get(f"/api/v1/nodes/{q(pod['spec']['nodeName'])}")
        speed = float(node["metadata"]["annotations"][SPEED_ANNOTATION])
        got = json.loads(out.strip().splitlines()[-1])
        assert got["group"].endswith(f"/pod-{pod['metadata']['uid']}/main")
        cores[name] = (got["cores"], speed)
    per_speed = cores["a100-1"][0] / cores["a100-1"][1]
    assert 0 < per_speed <= 0.15  # the default per-unit quota, scaled to fit the machine
    assert cores["a100-2"][0] == pytest.approx(
        2 * per_speed * cores["a100-2"][1], rel=0.01
    )  # each device its share
    assert cores["h100-1"][0] == pytest.approx(per_speed * cores["h100-1"][1], rel=0.01)  # speed 3.0
