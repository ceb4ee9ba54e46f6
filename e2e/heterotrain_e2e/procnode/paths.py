"""Where a pod's files live on the host, and the textual rewriting of container paths (pure).

The process runner has no mount namespaces, so a volumeMount cannot make a
directory appear at its ``mountPath``.  Instead, every occurrence of a mount
path AS A PATH PREFIX in a container's command, args, env values and
workingDir is replaced by the host path backing it:

* ``/data`` is rewritten in ``/data``, ``/data/x``, ``--out=/data/x``,
  ``open('/data/x')`` and ``/a:/data`` (PATH-like lists);
* it is NOT rewritten in ``/database``, ``/data.txt``, ``/mnt/data`` or
  ``x/data`` (not the same path, or not at the start of a path);
* mounts nested in other mounts win (longest mount path first), and the
  rewriting is a single pass, so a host path is never rewritten again.

Paths a program builds at run time from pieces the runner never sees (a
constant in a Python file, a path read from a config file) are not
rewritten: the runner only sees the pod spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# A path character that may neither precede nor follow a matched mount path.
_PATH_CHAR = r"[\w.\-/]"
_PATH_CHAR_AFTER = r"[\w.\-]"


def normalize_mount_path(p: str) -> str:
    p = re.sub(r"/+", "/", p.strip())
    if len(p) > 1:
        p = p.rstrip("/")
    return p


@dataclass(frozen=True)
class PathMap:
    """Container path prefixes -> host paths.  ``rewrite`` replaces them in free text."""

    mounts: tuple[tuple[str, str], ...] = ()
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> PathMap:
        table: dict[str, str] = {}
        for container_path, host_path in pairs:
            cp = normalize_mount_path(container_path)
            if not cp.startswith("/") or cp == "/":
                continue  # a relative or root mount cannot be told apart from other text
            table[cp] = host_path
        ordered = tuple(sorted(table.items(), key=lambda kv: (-len(kv[0]), kv[0])))
        regex = None
        if ordered:
            alternation = "|".join(re.escape(cp) for cp, _ in ordered)
            regex = re.compile(rf"(?<!{_PATH_CHAR})(?:{alternation})(?!{_PATH_CHAR_AFTER})")
        return cls(ordered, regex)

    def rewrite(self, text: str) -> str:
        if self._regex is None or not text:
            return text
        table = dict(self.mounts)
        return self._regex.sub(lambda m: table[m.group(0)], text)

    def resolve(self, container_path: str) -> str | None:
        """The host path of an absolute container path under a mount, else None."""
        p = normalize_mount_path(container_path)
        for cp, host in self.mounts:
            if p == cp:
                return host
            if p.startswith(cp + "/"):
                return host.rstrip("/") + p[len(cp) :]
        return None


def safe_relative(p: str) -> str:
    """A relative path inside a volume, refusing absolute paths and ``..`` (as API validation does)."""
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if p.startswith("/") or any(x == ".." for x in parts) or not parts:
        raise ValueError(f"invalid relative path {p!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class PodDirs:
    """The host directories of one pod under ``<state-dir>/pods/<namespace>_<name>_<uid>``."""

    state_dir: Path
    namespace: str
    name: str
    uid: str

    @property
    def root(self) -> Path:
        return self.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    def volume(self, name: str) -> Path:
        return self.volumes / name

    @property
    def work(self) -> Path:
        """The working directory of containers without a ``workingDir``."""
        return self.root / "work"

    def rootfs(self, container_path: str) -> Path:
        """A per-pod stand-in for a container path no volume covers (e.g. an image's workingDir)."""
        rel = normalize_mount_path(container_path).lstrip("/")
        return self.root / "rootfs" / rel if rel else self.root / "rootfs"

    def log(self, container: str) -> Path:
        return self.root / f"{container}.log"

    def previous_log(self, container: str) -> Path:
        return self.root / f"{container}.previous.log"

    def termination_message(self, container: str) -> Path:
        return self.root / "termination" / container

    @property
    def serviceaccount(self) -> Path:
        """Service-account files the runner makes when no volume provides them."""
        return self.root / "serviceaccount"

    def kubeconfig(self, container: str) -> Path:
        return self.root / "kubeconfig" / f"{container}.yaml"


def pvc_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    return state_dir / "pvc" / namespace / claim
