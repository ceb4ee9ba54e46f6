"""``python -m heterotrain_runtime.install DEST``: copy this package into ``DEST/heterotrain_runtime``.

Used by the operator's init container: with ``PYTHONPATH=DEST`` the runtime is
importable in a user image that has only Python and torch (the launcher and
the SDK need nothing else; ``prometheus_client`` and ``kubernetes`` are
optional).  The copy is made next to the destination and renamed into place,
so a concurrent reader never sees half a package.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import heterotrain_runtime


def install(dest: str | os.PathLike[str]) -> Path:
    src = Path(heterotrain_runtime.__file__).resolve().parent
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "heterotrain_runtime"
    tmp = Path(tempfile.mkdtemp(prefix=".heterotrain_runtime.", dir=dest_dir))
    staged = tmp / "heterotrain_runtime"
    shutil.copytree(src, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    old = None
    if target.exists():
        old = dest_dir / f".heterotrain_runtime.old.{os.getpid()}"
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m heterotrain_runtime.install DEST_DIR", file=sys.stderr)
        return 2
    target = install(args[0])
    print(f"installed heterotrain_runtime {heterotrain_runtime.__version__} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
