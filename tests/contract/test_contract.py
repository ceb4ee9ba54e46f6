"""heterotrain_contract: the facts the API, the operator and the runtime share, each defined once."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import heterotrain_contract as hc
from heterotrain_api import parse_spec, resolve_accelerators
from heterotrain_api.v1alpha1 import AcceleratorSpec
from heterotrain_contract.podcondition import starts_before_member
from heterotrain_runtime.local import parse_pools

RUNTIME_DIR = Path(hc.__file__).resolve().parents[1]


@pytest.mark.parametrize("known", list(hc.KNOWN_ACCELERATORS.values()), ids=lambda k: k.type)
def test_every_entry_agrees_with_the_guesses_made_for_unknown_types(known: hc.KnownAccelerator) -> None:
    # The API guesses an unknown type's vendor from its resourceName, the runtime from the type's
    # prefix: for every known type both guesses give the table's own vendor, so a type never changes
    # backend by entering or leaving the table.
    assert hc.vendor_of_resource(known.resource_name) == known.vendor
    assert hc.TYPE_PREFIX_VENDORS[known.type.split("-", 1)[0]] == known.vendor
    assert hc.default_backend(known.type) == known.backend == hc.VENDOR_BACKENDS[known.vendor]
    assert known.relative_throughput > 0 and known.basis


def test_backends_as_the_api_names_them_and_as_torch_does() -> None:
    assert hc.default_backend("amd-mi300x") == "rccl"  # the API's value ...
    assert hc.torch_backend("rccl") == "nccl"  # ... which ROCm builds of torch call nccl
    assert {hc.torch_backend(b) for b in hc.VENDOR_BACKENDS.values()} == {"nccl", "hccl", "gloo"}
    assert hc.default_backend("nvidia-gb300") == "nccl"  # unknown, guessed from the prefix
    assert hc.default_backend("weird") == "gloo"


def test_operator_weights_and_local_speeds_come_from_the_one_table() -> None:
    spec = parse_spec(
        {
            "image": "i",
            "command": ["c"],
            "workers": {"min": 1, "max": 2},
            "globalBatchSize": 8,
            "accelerators": [{"type": "amd-mi300x", "perWorker": 8}, {"type": "huawei-ascend-910b"}],
        }
    )
    mi300x, ascend = resolve_accelerators(spec)
    table = hc.KNOWN_ACCELERATORS
    assert mi300x.worker_weight == table["amd-mi300x"].relative_throughput * 8
    assert mi300x.backend == "rccl" and ascend.backend == "hccl"
    assert ascend.resource_name == table["huawei-ascend-910b"].resource_name
    local = {p.type: p.speed for p in parse_pools("amd-mi300x:1,huawei-ascend-910b:1")}
    assert local == {t: table[t].relative_throughput for t in local}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("250u", Decimal("0.00025")),
        ("100n", Decimal("1E-7")),
        ("2", Decimal(2)),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("2E", Decimal(2 * 10**18)),
        ("1Ki", Decimal(1024)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("64Gi", Decimal(64 * 2**30)),
        ("1Ei", Decimal(2**60)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("2.5e-3", Decimal("0.0025")),
        (".5", Decimal("0.5")),
        ("+1", Decimal(1)),
        (" 8 ", Decimal(8)),
        (3, Decimal(3)),
    ],
)
def test_quantities(text: str | int, value: Decimal) -> None:
    assert hc.parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "abc", "1X", "1.2.3", "--1", "Gi", "1 Gi", "1ki", "1e"])
def test_quantity_parser_refuses_what_the_api_server_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        hc.parse_quantity(bad)
    assert not hc.is_quantity(bad.strip())


def test_membership_file_round_trip(tmp_path: Path) -> None:
    m = hc.Membership(
        epoch=3,
        world=(
            hc.Member("p1", 1, "nvidia-a100", "10.0.0.2", 1.0),
            hc.Member("p0", 0, "amd-mi300x", "10.0.0.1", 4.19),
        ),
    )
    path = str(tmp_path / "m.json")
    hc.write_membership_file(path, m)
    back = hc.read_membership_file(path)
    assert back is not None and [x.pod for x in back.world] == ["p0", "p1"]  # sorted by rank
    assert back.master_addr == "10.0.0.1" and back.master_port == hc.DEFAULT_MASTER_PORT
    assert hc.read_membership_file(str(tmp_path / "none.json")) is None
    with pytest.raises(ValueError, match=r"ranks must be 0\.\.1"):
        hc.Membership.from_dict({"epoch": 1, "world": [{**m.to_dict()["world"][0], "rank": 2}] * 2})


def test_membership_processes_are_ranked_pod_by_pod() -> None:
    m = hc.Membership.from_dict(
        {
            "epoch": 2,
            "world": [
                {"pod": "b", "rank": 1, "type": "t", "address": "10.0.0.2", "weight": 1.0},  # slots: 1
                {"pod": "a", "rank": 0, "type": "t", "address": "10.0.0.1", "weight": 6.0, "slots": 3},
            ],
        }
    )
    assert [(p.name, p.rank, p.local_rank, p.group_rank, p.weight) for p in m.processes] == [
        ("a:0", 0, 0, 0, 2.0), ("a:1", 1, 1, 0, 2.0), ("a:2", 2, 2, 0, 2.0), ("b", 3, 0, 1, 1.0)
    ]  # fmt: skip
    assert m.world_size == 4 and m.pod_count == 2
    assert m.process("a", 2) is not None and m.process("a", 3) is None and m.process("c") is None
    assert hc.Membership.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match=r"slots must be 1\.\.64"):
        hc.Membership.from_dict({"epoch": 1, "world": [{**m.to_dict()["world"][0], "slots": 0}]})


def test_split_global_batch() -> None:
    assert hc.split_global_batch(600, [1.0, 2.0, 3.0]) == [100, 200, 300]
    assert hc.split_global_batch(10, [1.0, 1.0, 1.0]) == [4, 3, 3]  # ties go to the lower rank
    assert hc.split_global_batch(3, [1000.0, 1.0, 1.0]) == [1, 1, 1]  # everybody gets one
    assert hc.split_global_batch(5, [0.0, 0.0]) == [3, 2]


def test_the_contract_imports_the_standard_library_alone() -> None:
    # -S -I: no site-packages, no PYTHONPATH; only the directory the contract ships in.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import heterotrain_contract, pkgutil, importlib; "
        "[importlib.import_module(m.name) for m in pkgutil.iter_modules(heterotrain_contract.__path__, "
        "'heterotrain_contract.')]; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names "
        "and m.split('.')[0] not in ('heterotrain_contract', '__main__')); print(bad)"
    )
    r = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code, str(RUNTIME_DIR)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_api_takes_its_names_from_the_contract() -> None:
    import heterotrain_api as api

    assert (api.GROUP, api.VERSION, api.KIND, api.PLURAL) == (hc.GROUP, hc.VERSION, hc.KIND, hc.PLURAL)
    assert api.KNOWN_ACCELERATORS is hc.KNOWN_ACCELERATORS
    assert hc.LABEL_ACCELERATOR in (AcceleratorSpec.model_fields["type"].description or "")


def test_every_variable_the_operator_sets_on_a_worker_is_read_by_the_runtime() -> None:
    # A variable written and read by nobody looks like a live channel; this keeps the contract honest.
    from heterotrain_operator.desired import JobView, contract_env

    spec = parse_spec(
        {
            "image": "i",
            "command": ["c"],
            "workers": {"min": 1, "max": 1},
            "globalBatchSize": 8,
            "accelerators": [{"type": "nvidia-a100"}],
            "checkpoint": {"intervalSteps": 10, "intervalSeconds": 60},
        }
    )
    job = JobView("j", "ns", "uid", 1, spec, tuple(resolve_accelerators(spec)))
    written = {e["name"] for e in contract_env(job, job.accelerators[0])}
    by_value = {getattr(hc, n): n for n in dir(hc) if n.startswith("ENV_")}
    assert written <= set(by_value), "the operator writes only the contract's names"
    runtime = "".join(p.read_text() for p in (RUNTIME_DIR / "heterotrain_runtime").rglob("*.py"))
    unread = sorted(name for name in written if by_value[name] not in runtime)
    assert unread == [], f"written by the operator, read by no runtime module: {unread}"


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, False, False),
        ("", True, True),
        ("  ", False, False),
        ("1", False, True),
        (" TRUE ", False, True),
        ("yes", False, True),
        ("on", False, True),
        ("0", True, False),
        ("false", True, False),
        ("enabled", False, False),
    ],
)
def test_one_reading_of_a_flag_for_every_variable_and_annotation(
    value: str | None, default: bool, expected: bool
) -> None:
    assert hc.truthy(value, default) is expected
    pod = {"metadata": {"annotations": {hc.ANNOTATION_START_BEFORE_MEMBER: value}}}
    assert starts_before_member(pod) is (expected if (value or "").strip() else False)


def test_restart_backoff_doubles_from_the_second_failure_up_to_its_limit() -> None:
    assert [hc.restart_backoff(k, 1.0, 60.0) for k in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert hc.restart_backoff(5, 0.0, 60.0) == 0.0


def test_the_api_and_the_launcher_take_the_backoff_defaults_from_the_contract() -> None:
    from heterotrain_api.v1alpha1 import FaultToleranceSpec
    from heterotrain_runtime.restarts import RestartPolicy

    ft = FaultToleranceSpec()
    policy = RestartPolicy({})
    assert (ft.restart_backoff_seconds, ft.restart_backoff_limit_seconds, ft.failure_window_seconds) == (
        hc.DEFAULT_RESTART_BACKOFF_SECONDS,
        hc.DEFAULT_RESTART_BACKOFF_LIMIT_SECONDS,
        hc.DEFAULT_FAILURE_WINDOW_SECONDS,
    )
    assert (policy.base, policy.limit, policy.window) == (1.0, 60.0, 600.0)


def test_the_launcher_backs_off_within_its_window_only() -> None:
    from heterotrain_runtime.restarts import RestartPolicy

    now = [0.0]
    env = {hc.ENV_RESTART_BACKOFF: "2", hc.ENV_RESTART_BACKOFF_LIMIT: "5", hc.ENV_FAILURE_WINDOW: "100"}
    policy = RestartPolicy(env, clock=lambda: now[0])
    delays = []
    for t in (0.0, 1.0, 2.0, 3.0, 200.0):
        now[0] = t
        delays.append(policy.failed())
    assert delays == [0.0, 2.0, 4.0, 5.0, 0.0]
    with pytest.raises(ValueError, match=hc.ENV_RESTART_BACKOFF):
        RestartPolicy({hc.ENV_RESTART_BACKOFF: "soon"})
