"""Build the control plane's binaries from Go modules, into a cache outside git.

kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd come
from the Go module in ``e2e/toolchain`` (which pins one Kubernetes release and
maps its staging modules with replace lines); kwok, helm and kubeconform are
``go install``-ed at pinned versions; small programs of our own (``e2e/kstatus``) are
built from their module.  Each set lands in a directory named by a
hash of what produced it, so a second build with nothing changed runs no Go at
all: it only checks that the files are there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TOOLCHAIN_MODULE = REPO / "e2e" / "toolchain"

# Built from the module in e2e/toolchain: output name -> Go package.
MODULE_BINARIES: dict[str, str] = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# Installed with `go install pkg@version` (modules without replace lines).
GO_INSTALL_TOOLS: dict[str, tuple[str, str]] = {
    "kwok": ("sigs.k8s.io/kwok/cmd/kwok", "v0.7.0"),
    "helm": ("helm.sh/helm/v3/cmd/helm", "v3.19.0"),
    "kubeconform": ("github.com/yannh/kubeconform/cmd/kubeconform", "v0.7.0"),
}
# Small programs of our own, each a Go module under e2e/ (source in git, never the binary).
LOCAL_PROGRAMS: dict[str, Path] = {
    "kstatus-check": REPO / "e2e" / "kstatus",  # the kstatus library (Flux, helm --wait) as a command
}
ALL_BINARIES = (*MODULE_BINARIES, *GO_INSTALL_TOOLS, *LOCAL_PROGRAMS)


class ToolchainError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("HETEROTRAIN_CACHE", Path.home() / ".cache" / "heterotrain"))


def _module_digest() -> str:
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        h.update((TOOLCHAIN_MODULE / name).read_bytes())
    h.update(repr(sorted(MODULE_BINARIES.items())).encode())
    return h.hexdigest()[:12]


def _program_digest(src: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix == ".go" or f.name in ("go.mod", "go.sum"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolchainError(
            "Go is not installed: the e2e control plane is built from Go modules "
            "(kube-apiserver, etcd, ...). Install Go >= 1.24 and retry."
        )
    return go


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    print(f"[toolchain] {what} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    print(f"[toolchain] {what}: done in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Toolchain:
    bindir: dict[str, Path]  # binary name -> path

    def path(self, name: str) -> str:
        return str(self.bindir[name])


def ensure(verbose: bool = True) -> Toolchain:
    """Build whatever is missing and return the binaries' paths (no Go run when all exist)."""
    root = cache_dir()
    k8s_dir = root / f"k8s-{_module_digest()}"
    paths: dict[str, Path] = {name: k8s_dir / name for name in MODULE_BINARIES}
    for name, (pkg, version) in GO_INSTALL_TOOLS.items():
        paths[name] = root / f"{name}-{version}" / Path(pkg).name
    for name, src in LOCAL_PROGRAMS.items():
        paths[name] = root / f"{name}-{_program_digest(src)}" / name
    missing = [n for n, p in paths.items() if not (p.is_file() and os.access(p, os.X_OK))]
    if not missing:
        return Toolchain(paths)

    go = _go()
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env["GOTOOLCHAIN"] = "local"  # never download another Go
    env["CGO_ENABLED"] = env.get("CGO_ENABLED", "0")
    module_missing = [n for n in missing if n in MODULE_BINARIES]
    if module_missing:
        tmp = k8s_dir.with_name(k8s_dir.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        pkgs = [MODULE_BINARIES[n] for n in module_missing]
        # `go build -o DIR/` names a main package after its import path's last element;
        # etcd's server module would be called "v3", so build each one to its own name.
        for name, pkg in zip(module_missing, pkgs, strict=True):
            _run([go, "build", "-o", str(tmp / name), pkg], TOOLCHAIN_MODULE, env, f"go build {name}")
        k8s_dir.mkdir(parents=True, exist_ok=True)
        for name in module_missing:
            os.replace(tmp / name, k8s_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
    for name in missing:
        if name in GO_INSTALL_TOOLS:
            pkg, version = GO_INSTALL_TOOLS[name]
            target = paths[name].parent
            ienv = dict(env)
            ienv["GOBIN"] = str(target)
            ienv.pop("GOFLAGS", None)
            _run([go, "install", f"{pkg}@{version}"], REPO, ienv, f"go install {name}@{version}")
        if name in LOCAL_PROGRAMS:
            tmp = paths[name].with_name(name + ".partial")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            _run([go, "build", "-o", str(tmp), "."], LOCAL_PROGRAMS[name], env, f"go build {name}")
            os.replace(tmp, paths[name])
    still = [n for n, p in paths.items() if not p.is_file()]
    if still:
        raise ToolchainError(f"build finished but binaries are missing: {still}")
    return Toolchain(paths)


def link(toolchain: Toolchain, bindir: Path) -> None:
    """Point ``bindir/<name>`` at the binaries in use (symlinks, replaced atomically)."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name, target in toolchain.bindir.items():
        link_path = bindir / name
        tmp = bindir / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link_path)
