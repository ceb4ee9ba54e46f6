"""``make soak`` with your own job mix: the jobs file is read, checked and placed in the soak's namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from heterotrain_e2e import soak


def _job(name: str, **meta: str) -> dict[str, object]:
    return {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": name, **meta},
        "spec": {"image": "x", "command": ["true"], "accelerators": [{"type": "nvidia-a100"}]},
    }


def test_jobs_come_from_documents_or_a_list_into_the_soak_namespace(tmp_path: Path) -> None:
    f = tmp_path / "jobs.yaml"
    f.write_text(
        yaml.safe_dump_all(
            [_job("a"), {"apiVersion": "v1", "kind": "List", "items": [_job("b", namespace="default")]}]
        )
    )
    jobs = soak.load_jobs(f)
    assert [(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs] == [
        ("default", "a"),
        ("default", "b"),
    ]
    assert jobs[0]["spec"] == _job("a")["spec"]


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}], "item 0 is not a named"),
        ([_job("a"), _job("a")], "named twice"),
        ([_job("a", namespace="team")], "namespace 'default'"),
        ([], "no HeteroTrainJob"),
    ],
)
def test_a_jobs_file_the_soak_cannot_count_is_refused(
    tmp_path: Path, docs: list[dict[str, object]], message: str
) -> None:
    f = tmp_path / "jobs.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(ValueError, match=message):
        soak.load_jobs(f)


def test_the_seeded_mix_is_the_issues_shape() -> None:
    jobs = soak.job_mix(200, seed=1)
    assert len({j["metadata"]["name"] for j in jobs}) == 200
    for j in jobs:
        spec = j["spec"]
        assert 1 <= len(spec["accelerators"]) <= 3 and spec["workers"] == {"min": 2, "max": 10}
        assert {a["perWorker"] for a in spec["accelerators"]} <= {1, 2, 4, 8}
        assert soak.KWOK_TOLERATION in spec["tolerations"]
    assert soak.job_mix(200, seed=1) == jobs != soak.job_mix(200, seed=2)
