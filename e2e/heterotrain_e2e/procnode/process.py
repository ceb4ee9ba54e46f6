"""Container processes: one process group (own session) each, a pid file each, logs to a file.

Pid files: ``<state-dir>/pids/<pgid>`` holds ``"<pid> <starttime> <namespace>/<pod> <container> <node>"``
(``starttime``: field 22 of ``/proc/<pid>/stat``, to tell a reused pid apart).
The file exists from just after the process started until it is reaped, so a
cluster-down after the runner itself was SIGKILLed can find the leftovers:
:func:`kill_leftovers` does it (the first token alone is enough to kill the
group with ``os.killpg(pid, SIGKILL)``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def proc_starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _proc_session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def pid_dir(state_dir: Path) -> Path:
    return state_dir / "pids"


def write_pid_file(state_dir: Path, pid: int, pod: str, container: str, node: str = "-") -> None:
    d = pid_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{pid}.tmp"
    tmp.write_text(f"{pid} {proc_starttime(pid) or '-'} {pod} {container} {node or '-'}\n")
    os.replace(tmp, d / str(pid))


def remove_pid_file(state_dir: Path, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (pid_dir(state_dir) / str(pid)).unlink()


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a container's process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours
        return False


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL the process groups of pid files left by a runner that died; remove the files.

    A group is killed when its leader still has the recorded start time, or,
    the leader being gone, through the members whose session is that pgid
    (the kernel does not reuse a pid while a group or session of that id exists,
    so a live pid with another start time means nothing of ours is left).
    """
    killed = []
    d = pid_dir(state_dir)
    for f in sorted(d.glob("*")) if d.is_dir() else []:
        if f.name.startswith("."):
            f.unlink(missing_ok=True)
            continue
        try:
            fields = f.read_text().split()
            pid, start = int(fields[0]), fields[1] if len(fields) > 1 else "-"
        except (OSError, ValueError, IndexError):
            f.unlink(missing_ok=True)
            continue
        alive_start = proc_starttime(pid)
        if alive_start is not None:
            # Same start time: our leader.  Another one: the pid was reused, which the kernel
            # only does once no process of the old group/session is left: nothing to kill.
            if start in ("-", alive_start) and signal_group(pid, signal.SIGKILL):
                killed.append(pid)
        else:
            for entry in os.listdir("/proc"):
                if entry.isdigit() and _proc_session(int(entry)) == pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(entry), signal.SIGKILL)
                        killed.append(int(entry))
        f.unlink(missing_ok=True)
    return killed


class ContainerProcess:
    """A running container: its process group, pid file and reaper thread.

    When the main process ends, the rest of its group is SIGKILLed before it
    is reaped (as the end of a container's PID 1 ends the container), then
    ``on_exit(pid, returncode)`` is called from the reaper thread.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        state_dir: Path,
        label: tuple[str, str],
        on_exit: Callable[[int, int], None],
        preexec: Callable[[], None] | None = None,
        node: str = "-",
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,  # joins the container's cgroup before exec
            )
        self.pid = self.popen.pid
        self._state_dir = state_dir
        self._on_exit = on_exit
        write_pid_file(state_dir, self.pid, label[0], label[1], node)
        self._thread = threading.Thread(target=self._reap, name=f"reap-{label[1]}-{self.pid}", daemon=True)
        self._thread.start()

    def _reap(self) -> None:
        try:
            # Wait WITHOUT reaping, so the pgid cannot be reused while we kill the rest of the group.
            while True:
                try:
                    os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    break
            signal_group(self.pid, signal.SIGKILL)
        except OSError as e:  # pragma: no cover
            if e.errno != errno.ECHILD:
                log.warning("waiting for %s: %s", self.pid, e)
        rc = self.popen.wait()
        remove_pid_file(self._state_dir, self.pid)
        self._on_exit(self.pid, rc)

    def signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            signal_group(self.pid, sig)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()
