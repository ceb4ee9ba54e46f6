"""A minimal kubelet HTTPS endpoint so that ``kubectl logs`` works for process-runner pods.

Part of the process runner, a fake kubelet for tests.  The API server proxies
``kubectl logs`` to ``https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>
/containerLogs/<namespace>/<pod>/<container>``; this serves that path (and
``/healthz``) from the container log files, for every node of the runner on
one port.  Supported query parameters: ``previous``, ``tailLines``,
``limitBytes`` and ``follow`` (until the container stops); ``timestamps`` and
``sinceSeconds`` are ignored.  Nothing else of the kubelet API (exec,
port-forward, stats) exists.

The serving certificate is self-signed: the API server only checks a
kubelet's certificate when started with ``--kubelet-certificate-authority``,
and it sends no credentials unless ``--kubelet-client-certificate`` is set,
so requests are not authenticated here (the port listens on 127.0.0.1 only).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

IsRunning = Callable[[str, str, str], bool]


def _self_signed(cert: Path, key: Path, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "heterotrain-procnode")])
    now = datetime.datetime.now(datetime.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(k, hashes.SHA256())
    )
    key.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))


def find_log(state_dir: Path, namespace: str, pod: str, container: str, previous: bool) -> Path | None:
    """The log of the most recent pod of that name (pod dirs are ``<ns>_<name>_<uid>``)."""
    dirs = [
        d
        for d in (state_dir / "pods").glob(f"{namespace}_{pod}_*")
        if d.name.split("_")[:2] == [namespace, pod]
    ]
    if not dirs:
        return None
    d = max(dirs, key=lambda p: p.stat().st_mtime)
    f = d / (f"{container}.previous.log" if previous else f"{container}.log")
    return f if f.exists() else None


def tail_bytes(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("kubelet api: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        if u.path in ("/healthz", "/readyz", "/livez"):
            self._send(200, b"ok")
            return
        parts = [unquote(p) for p in u.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._send(404, b"the process runner serves only /containerLogs/<namespace>/<pod>/<container>\n")
            return
        _, ns, pod, container = parts
        qs = {k: v[-1] for k, v in parse_qs(u.query).items()}
        previous = qs.get("previous") in ("true", "1")
        path = find_log(self.server.state_dir, ns, pod, container, previous)
        if path is None:
            what = "previous terminated container" if previous else "container"
            self._send(404, f'{what} "{container}" in pod "{pod}" has no log\n'.encode())
            return
        data = path.read_bytes()
        if "tailLines" in qs:
            data = tail_bytes(data, int(qs["tailLines"]))
        limit = int(qs["limitBytes"]) if qs.get("limitBytes") else None
        if limit is not None:
            data = data[:limit]
        follow = qs.get("follow") in ("true", "1") and not previous
        if not follow:
            self._send(200, data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        sent = len(data)
        offset = path.stat().st_size
        running = self.server.is_running
        while limit is None or sent < limit:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(64 * 1024)
            except FileNotFoundError:
                return  # rotated: the container restarted
            if chunk:
                offset += len(chunk)
                if limit is not None:
                    chunk = chunk[: limit - sent]
                sent += len(chunk)
                self.wfile.write(chunk)
                self.wfile.flush()
                continue
            if not running(ns, pod, container):
                return
            time.sleep(0.2)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state_dir: Path
    is_running: IsRunning


class KubeletAPI:
    def __init__(
        self, state_dir: Path, is_running: IsRunning, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self._srv = _Server((host, port), _Handler)
        self._srv.state_dir = state_dir
        self._srv.is_running = is_running
        cert, key = state_dir / "kubelet.crt", state_dir / "kubelet.key"
        _self_signed(cert, key, host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self._srv.socket = ctx.wrap_socket(self._srv.socket, server_side=True)
        self.port = int(self._srv.server_address[1])
        self._thread = threading.Thread(target=self._srv.serve_forever, name="kubelet-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("kubelet API (container logs) on https://%s:%d", self.host, self.port)

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()
