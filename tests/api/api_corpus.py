"""The invalid-manifest corpus: ``tests/api/invalid/*.yaml``.

Each file is one HeteroTrainJob manifest that is invalid for exactly one
reason, led by comment lines:

    # Invalid: <why>.
    # expect: <substring of the API server's error>     (one or more; all must appear)
    # model: <substring of the pydantic error lines>    (heterotrain_api.format_errors)

The same parsing lives in e2e/tests/test_api_server_validation.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INVALID_DIR = Path(__file__).resolve().parent / "invalid"
EXAMPLES_DIR = REPO / "examples"


@dataclass(frozen=True)
class InvalidManifest:
    path: Path
    why: str
    expect: tuple[str, ...]
    model: str | None
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.path.stem


def load(path: Path) -> InvalidManifest:
    text = path.read_text(encoding="utf-8")
    why, expect, model = "", [], None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        key, _, value = body.partition(":")
        if key == "Invalid":
            why = value.strip()
        elif key == "expect":
            expect.append(value.strip())
        elif key == "model":
            model = value.strip()
    return InvalidManifest(path, why, tuple(expect), model, yaml.safe_load(text))


def corpus() -> list[InvalidManifest]:
    return [load(p) for p in sorted(INVALID_DIR.glob("*.yaml"))]


def examples() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))
