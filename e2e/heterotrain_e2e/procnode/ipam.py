"""Pod IPs: one loopback address per pod (``127.1.x.y`` by default), persisted in ``ipam.json``.

On Linux the whole of 127.0.0.0/8 reaches the loopback interface, so a
process can bind to its pod IP without any network setup.  Addresses are
handed out round-robin (a released address is not reused at once), are
unique among the live pods of the runner, and survive a runner restart.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import threading
from pathlib import Path


class IPExhausted(Exception):
    pass


class IPAllocator:
    def __init__(self, path: Path | None, cidr: str = "127.1.0.0/16") -> None:
        self._path = path
        self._net = ipaddress.ip_network(cidr)
        if not self._net.is_loopback:
            raise ValueError(f"pod CIDR {cidr} is not a loopback network")
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
