"""Session fixtures for the e2e suite: one real local control plane per test session.

The cluster is started in a private directory on free ports (so it never
collides with a developer's ``make cluster-up``), with the default profile, and
the CRDs from ``crds/`` applied.  If the control plane cannot be built or
started, every e2e test FAILS with the reason: the suite is never skipped
silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heterotrain_e2e.cluster import controlplane, toolchain
from heterotrain_e2e.testing import (
    Cluster,
    OperatorProcess,
    busy_workers,
    clear_jobs,
    namespace_names,
    wait_for,
)

REPO = toolchain.REPO


_START_ERROR: list[str] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if _START_ERROR:
        pytest.fail(_START_ERROR[0], pytrace=False)
    d = tmp_path_factory.mktemp("cluster")
    profile = Path(os.environ.get("HETEROTRAIN_E2E_PROFILE", REPO / "e2e" / "profiles" / "default.yaml"))
    try:
        info = controlplane.up(d, profile)
    except (controlplane.ClusterError, toolchain.ToolchainError) as e:
        _START_ERROR.append(f"the e2e control plane could not be started: {e}")
        pytest.fail(_START_ERROR[0], pytrace=False)
    c = Cluster(dir=info.dir, kubeconfig=info.kubeconfig, server=info.server)
    try:
        crds = sorted((REPO / "crds").glob("*.yaml"))
        if crds:
            for f in crds:
                c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
            c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield c
    finally:
        controlplane.down(d, quiet=True)


@pytest.fixture(scope="session")
def _operator_process(cluster: Cluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, cluster.dir / "logs" / "operator.log")
    yield op
    op.stop()  # before the cluster goes down


@pytest.fixture
def operator(_operator_process: OperatorProcess) -> OperatorProcess:
    """A running operator (started once, restarted if a test killed it)."""
    if not _operator_process.alive():
        _operator_process.start()
    return _operator_process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The soak test runs its own control plane of 250 kwok nodes: it runs first among the e2e tests, before
    the session's cluster (and its training process nodes) exists, so that two control planes never share
    the machine's cores."""
    here = Path(__file__).parent

    def order(item: pytest.Item) -> int:
        if here not in item.path.parents:
            return 0
        return 1 if item.path.name == "test_soak.py" else 2

    items.sort(key=order)  # stable: the order within each group is kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_report_{report.when}", report)


@pytest.fixture(autouse=True)
def _no_job_outlives_a_failed_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails before deleting its jobs leaves them training (CPU, process nodes, accelerators)
    under every test after it: the jobs in the namespaces it created are deleted and their workers waited
    for. Passing tests delete their own (a test of the chart checks that they did)."""
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    before = namespace_names(cluster)
    yield
    report = getattr(request.node, "_report_call", None)
    if report is None or not report.failed:
        return
    pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", "--no-headers", check=False).stdout
    print("pods on the process nodes at the failure:")
    print("\n".join(line for line in pods.splitlines() if " proc-" in line))
    forced = clear_jobs(cluster, namespace_names(cluster) - before)
    if forced:
        print(f"after the failed test, forced: {', '.join(forced)}")


@pytest.fixture
def idle_process_nodes(cluster: Cluster) -> None:
    """For tests that count on every process node: the jobs the tests before deleted checkpoint on
    SIGTERM and may hold accelerators (and CPU) for a while."""
    wait_for("the process nodes idle", lambda: not busy_workers(cluster), timeout=300, interval=1.0)
