"""Pod addresses a Service can hold, for the process runner's pods (test infrastructure).

Endpoints refuse loopback addresses, so pods that run as local processes need
addresses of another kind.  ``up`` takes one /22 of the reserved benchmarking
range 198.18.0.0/15 (RFC 2544: never routed on the Internet), creates a link of
the cluster's own (a veth pair, ``htpod<hash>``; this kernel has no ``dummy``
links) and makes the whole /22 *local* on it with one route in the ``local``
table (``ip route add local 198.18.x.0/22 dev htpod<hash> table local``: any
address of the range can be bound, none is sent anywhere: nothing is routed
out).  ``down`` deletes the link, which takes the route with it.

Each cluster directory gets its own interface name and the first /22 that no
other local route of the machine holds, so several clusters (a developer's and
the test suite's) never hand out the same pod IPs.  It needs CAP_NET_ADMIN
(root); without it ``up`` fails with a message that says so.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
PREFIX = 22  # 1,022 pod IPs per cluster; 128 clusters fit in the range
INTERFACE_PREFIX = "htpod"


class PodNetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class PodNetwork:
    interface: str
    cidr: str


def _digest(d: Path) -> int:
    return int(hashlib.sha256(str(d.resolve()).encode()).hexdigest(), 16)


def interface_name(d: Path) -> str:
    """``htpod`` + 8 hex digits of the cluster directory (Linux allows 15 characters)."""
    return f"{INTERFACE_PREFIX}{_digest(d) % 16**8:08x}"


def blocks() -> list[ipaddress.IPv4Network]:
    return list(BENCHMARK_NET.subnets(new_prefix=PREFIX))


def taken_ranges(local_routes: str) -> list[ipaddress.IPv4Network]:
    """The networks of ``ip -4 route show table local`` that lie in the benchmarking range."""
    out = []
    for line in local_routes.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] not in ("local", "broadcast"):
            continue
        try:
            net = ipaddress.IPv4Network(words[1], strict=False)
        except ValueError:
            continue
        if net.overlaps(BENCHMARK_NET):
            out.append(net)
    return out


def choose_block(d: Path, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first free /22, starting at one picked by the directory's hash."""
    all_blocks = blocks()
    start = _digest(d) % len(all_blocks)
    for i in range(len(all_blocks)):
        b = all_blocks[(start + i) % len(all_blocks)]
        if not any(b.overlaps(t) for t in taken):
            return b
    raise PodNetworkError(f"every /{PREFIX} of {BENCHMARK_NET} is already in use on this machine")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if Path(p).exists()), None)
    if ip is None:
        raise PodNetworkError(
            "the `ip` command (iproute2) is missing: the process runner's pod network needs it "
            "to give pods addresses a Service can hold"
        )
    proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise PodNetworkError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _explain(e: PodNetworkError, interface: str) -> PodNetworkError:
    return PodNetworkError(
        f"cannot create the pod network of the process runner (link {interface} with a local route "
        f"from {BENCHMARK_NET}): {e}. It needs CAP_NET_ADMIN (run as root) and veth links; pods "
        "on process nodes need addresses that Endpoints accept (loopback ones are refused)"
    )


def create(d: Path, attempts: int = 8) -> PodNetwork:
    """Create the cluster's link and its local /22; return them."""
    name = interface_name(d)
    delete(name)  # a leftover of a cluster in this directory that died
    try:
        _ip("link", "add", name, "type", "veth", "peer", "name", name + "p")
        _ip("link", "set", name, "up")
        _ip("link", "set", name + "p", "up")
    except PodNetworkError as e:
        delete(name)
        raise _explain(e, name) from None
    last: PodNetworkError | None = None
    for _ in range(attempts):
        taken = taken_ranges(_ip("-4", "route", "show", "table", "local").stdout)
        block = choose_block(d, taken)
        proc = _ip("route", "add", "local", str(block), "dev", name, "table", "local", check=False)
        if proc.returncode == 0:
            return PodNetwork(name, str(block))
        last = PodNetworkError(proc.stderr.strip())  # another cluster took it in between: next one
    delete(name)
    raise _explain(last or PodNetworkError("no free range"), name)


def delete(interface: str) -> bool:
    """Delete the link (its routes go with it); False if there was none."""
    if not interface.startswith(INTERFACE_PREFIX):
        raise ValueError(f"not a pod network link of a cluster: {interface}")
    try:
        proc = _ip("link", "del", interface, check=False)
    except PodNetworkError:
        return False
    return proc.returncode == 0
