from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from heterotrain_api import parse_spec, resolve_accelerators
from heterotrain_operator.desired import JobView
from heterotrain_operator.settings import Settings

# ``controller_helpers`` (the controller over its cache with an in-memory API) importable under
# ``--import-mode=importlib``.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


def make_job(status: dict[str, Any] | None = None, **spec_over: Any) -> JobView:
    spec: dict[str, Any] = {
        "image": "img",
        "command": ["python", "train.py"],
        "workers": {"min": 2, "max": 3},
        "accelerators": [{"type": "nvidia-a100"}, {"type": "nvidia-h100"}],
        "globalBatchSize": 96,
    }
    spec.update(spec_over)
    s = parse_spec(spec)
    return JobView(
        name="j",
        namespace="ns",
        uid="uid-1",
        generation=1,
        spec=s,
        accelerators=tuple(resolve_accelerators(s)),
        created=0.0,
        status=status or {},
    )


@pytest.fixture(name="make_job")
def make_job_fixture():  # type: ignore[no-untyped-def]
    return make_job


@pytest.fixture
def settings() -> Settings:
    return Settings()
