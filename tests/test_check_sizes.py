"""The size check that make verify runs: it passes on the product and names what is too long."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "check_sizes.py"


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_the_product_is_within_the_limits() -> None:
    r = _run("operator", "runtime")
    assert r.returncode == 0, r.stderr


def test_a_long_function_and_a_long_module_are_named(tmp_path: Path) -> None:
    pkg = tmp_path / "operator" / "pkg"
    pkg.mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    (pkg / "long_function.py").write_text(
        f"def too_long() -> None:\n{body}\n\ndef fine() -> None:\n    pass\n"
    )
    (pkg / "long_module.py").write_text("".join(f"X{i} = {i}\n" for i in range(701)))
    r = _run("operator", cwd=tmp_path)
    assert r.returncode == 1
    assert "operator/pkg/long_function.py:1: too_long() is 81 lines" in r.stderr
    assert "operator/pkg/long_module.py: 701 lines" in r.stderr
    assert "fine()" not in r.stderr
