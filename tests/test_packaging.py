"""The product's wheel and image carry the product alone: no test infrastructure, no e2e script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = {"heterotrain_api", "heterotrain_contract", "heterotrain_operator", "heterotrain_runtime"}


def test_wheel_built_from_what_the_image_copies_holds_the_product_only(tmp_path: Path) -> None:
    # The Dockerfile's COPY sources are what the image builds its wheel from; build the same here.
    sources = [
        src
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    ]
    assert sources and not any(s.startswith("e2e") for s in sources), sources
    src_dir = tmp_path / "src"
    for s in sources:
        path = REPO / s
        if path.is_dir():
            shutil.copytree(path, src_dir / s, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src_dir / s).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src_dir / s)
    out = tmp_path / "wheel"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        scripts = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert top == PRODUCT
    assert "heterotrain_e2e" not in scripts and "heterotrain-cluster" not in scripts
    assert "heterotrain-operator = heterotrain_operator.main:main" in scripts
