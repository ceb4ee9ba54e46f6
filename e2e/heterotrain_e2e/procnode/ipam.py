"""Pod IPs: one address per pod from ``--pod-cidr``, persisted in ``ipam.json``.

The cluster harness (``heterotrain_e2e.cluster.podnet``) makes a /22 of the
benchmarking range 198.18.0.0/15 local on a link of its own, so a process can
bind to its pod IP and Endpoints accept it (they refuse loopback addresses).
A loopback range (``127.1.0.0/16``, the default when the runner is started
by hand) needs no setup at all, but Services get no endpoints from it.
Addresses are handed out round-robin (a released address is not reused at
once), are unique among the live pods of the runner, and survive a runner
restart.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
from pathlib import Path

BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")


class IPExhausted(Exception):
    pass


class IPAllocator:
    def __init__(self, path: Path | None, cidr: str = "127.1.0.0/16") -> None:
        self._path = path
        self._net = ipaddress.ip_network(cidr)
        benchmark = isinstance(self._net, ipaddress.IPv4Network) and self._net.subnet_of(BENCHMARK_NET)
        if not (self._net.is_loopback or benchmark):
            raise ValueError(
                f"pod CIDR {cidr} is neither loopback nor inside {BENCHMARK_NET} (the range the "
                "cluster harness makes local): the runner never hands out addresses routed off this machine"
            )
        self._lock = threading.Lock()
        self._by_uid: dict[str, str] = {}
        self._cursor = 0
        if path is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(path.read_text())
                self._by_uid = {str(k): str(v) for k, v in data.get("pods", {}).items()}
                self._cursor = int(data.get("cursor", 0))

    def _usable(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        last = int(ip) & 0xFF
        return ip != self._net.network_address and ip != self._net.broadcast_address and last not in (0, 255)

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps({"cursor": self._cursor, "pods": self._by_uid}, indent=1, sort_keys=True))
        os.replace(tmp, self._path)

    def allocate(self, uid: str, preferred: str | None = None) -> str:
        """The pod's IP: its existing one, else ``preferred`` if free and in range, else the next free one."""
        with self._lock:
            if uid in self._by_uid:
                return self._by_uid[uid]
            used = set(self._by_uid.values())
            if preferred and preferred not in used:
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(preferred) in self._net:
                        self._by_uid[uid] = preferred
                        self._save()
                        return preferred
            size = self._net.num_addresses
            for i in range(size):
                idx = (self._cursor + i) % size
                ip = self._net.network_address + idx
                if not self._usable(ip) or str(ip) in used:
                    continue
                self._cursor = (idx + 1) % size
                self._by_uid[uid] = str(ip)
                self._save()
                return str(ip)
            raise IPExhausted(f"no free pod IP left in {self._net}")

    def get(self, uid: str) -> str | None:
        with self._lock:
            return self._by_uid.get(uid)

    def release(self, uid: str) -> None:
        with self._lock:
            if self._by_uid.pop(uid, None) is not None:
                self._save()

    def retain_only(self, uids: set[str]) -> list[str]:
        """Release the addresses of pods that no longer exist; return their uids."""
        with self._lock:
            gone = [u for u in self._by_uid if u not in uids]
            for u in gone:
                del self._by_uid[u]
            if gone:
                self._save()
            return gone

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_uid)
