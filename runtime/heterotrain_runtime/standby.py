"""A warm interpreter: ``python -m heterotrain_runtime.standby`` (started by the launcher, see .restarts).

It imports the heavy modules first (``HETEROTRAIN_WARM_MODULES``, default ``torch`` and the SDK), then
waits for one line on stdin, ``{"argv": [python, ...], "env": {...}}``, takes that environment and runs
the command as ``python -m MODULE ARGS`` or ``python SCRIPT.py ARGS`` would (``runpy``, as ``__main__``,
with the same ``sys.argv`` and ``sys.path[0]``).  Without a line (the launcher went away) it exits 0.

The imports run at ``SCHED_IDLE`` where the interpreter may return to ``SCHED_OTHER`` afterwards
(``CAP_SYS_NICE`` or a high enough ``RLIMIT_NICE``): they then take only CPU time the pod's training
processes leave, which matters under a CPU quota (a kubelet's ``limits.cpu``, or an emulated device).
Elsewhere they run at normal priority.

Its name (``/proc/PID/comm``, what ``ps`` shows) tells what it is: :data:`LOADING_NAME` while it imports,
:data:`WAITING_NAME` once it is ready and waits,
``ht-warm-<LOCAL_RANK>`` (:func:`warm_name`) once it runs a restarted process — whose ``/proc/PID/environ``
is still the launcher's, as the kernel keeps an exec's environment.

It holds the memory of an imported torch, so it sets its ``oom_score_adj`` to 1000: in an out-of-memory
kill of the container it goes first; the launcher then runs without warm restarts.  Once it runs a
restarted process it goes back to the value it started with (lowering it back to that needs no privilege).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import runpy
import sys

from heterotrain_runtime import envvars

DEFAULT_MODULES = ("torch", "torch.distributed", "heterotrain_runtime.sdk")
LOADING_NAME = "ht-loading"
WAITING_NAME = "ht-standby"
WARM_PREFIX = "ht-warm-"
_PR_SET_NAME = 15


def warm_name(local_rank: str | int) -> str:
    return f"{WARM_PREFIX}{local_rank}"[:15]


def set_name(name: str) -> None:
    """This process's name (comm, 15 bytes at most); best effort."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except OSError:
        pass


def preload(env: dict[str, str] | os._Environ[str]) -> None:
    names = env.get(envvars.ENV_WARM_MODULES)
    for name in names.split(",") if names else DEFAULT_MODULES:
        if name.strip():
            importlib.import_module(name.strip())


def become(argv: list[str], env: dict[str, str]) -> None:
    """Run ``argv`` (a python command) in this interpreter, with ``env``."""
    os.environ.clear()
    os.environ.update(env)
    set_name(warm_name(env.get(envvars.ENV_LOCAL_RANK, "0")))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the command's stdin, as the launcher gives its processes: not the request pipe
    os.close(devnull)
    args = argv[1:]
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name="__main__")


def _idle_while_loading() -> bool:
    """Switch to SCHED_IDLE if a process of ours can switch back (tried in a forked child first)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    param = os.sched_param(0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, param)
            os.sched_setscheduler(0, os.SCHED_OTHER, param)
        except OSError:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return False
    os.sched_setscheduler(0, os.SCHED_IDLE, param)
    return True


def _oom_score_adj(value: str | None = None) -> str | None:
    """Read (and, with ``value``, then set) this process's oom_score_adj; best effort."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as f:
            old = f.read().strip()
            if value is not None:
                f.seek(0)
                f.write(value)
            return old
    except OSError:
        return None


def main() -> int:
    # The kernel's first choice in an out-of-memory kill of the container, never a training process.
    original = _oom_score_adj("1000")
    set_name(LOADING_NAME)
    idle = _idle_while_loading()
    preload(os.environ)
    if idle:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    set_name(WAITING_NAME)
    line = sys.stdin.readline()
    if not line:
        return 0
    request = json.loads(line)
    if original is not None:
        _oom_score_adj(original)
    become(list(request["argv"]), dict(request["env"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
