"""``python -m heterotrain_runtime.install DEST``: copy the runtime into ``DEST``.

Used by the operator's init container: with ``PYTHONPATH=DEST`` the runtime is
importable in a user image that has only Python and torch (the launcher and
the SDK need nothing else; ``prometheus_client`` and ``kubernetes`` are
optional).  Two packages are copied: ``heterotrain_runtime`` and the
``heterotrain_contract`` it shares with the operator.  Each copy is made next
to its destination and renamed into place, so a concurrent reader never sees
half a package.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import heterotrain_contract
import heterotrain_runtime

PACKAGES: tuple[ModuleType, ...] = (heterotrain_runtime, heterotrain_contract)


def _install_package(package: ModuleType, dest_dir: Path) -> Path:
    assert package.__file__ is not None
    src = Path(package.__file__).resolve().parent
    name = package.__name__
    target = dest_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_dir))
    staged = tmp / name
    shutil.copytree(src, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    old = None
    if target.exists():
        old = dest_dir / f".{name}.old.{os.getpid()}"
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def install(dest: str | os.PathLike[str]) -> Path:
    """Copy the packages into ``dest``; return the runtime's directory there."""
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # The contract first: a reader that sees the new runtime finds the contract it imports.
    for package in reversed(PACKAGES):
        _install_package(package, dest_dir)
    return dest_dir / heterotrain_runtime.__name__


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
