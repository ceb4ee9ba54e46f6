"""The worker pod's ``heterotrain.io/ProcessesReady`` condition: the launcher's word on its processes.

The launcher of a worker pod sets it False (reason ``ProcessRestarting``) the moment one of its training
processes fails and is restarted in place, and True (``ProcessesRunning``) once the restarted process is
ready to join a world again (its SDK started).  The operator leaves a pod whose condition is False out of
the job's next membership, so the survivors re-form at once instead of waiting for a cold start, and takes
it back as a joiner when the condition turns True.  A pod without the condition is taken as ready, unless
it starts its processes before it is a member (annotation :data:`ANNOTATION_START_BEFORE_MEMBER`, set by
the operator on a new worker of a job whose processes run the SDK: a replacement, or a worker that grows
the world): its launcher sets the condition False (``ProcessesStarting``) at once and True when every
process is ready to join, and until then the job trains on without it.

The message carries the launcher's restart count and the failed process's exit code in a fixed form
(:func:`restart_message`, :func:`parse_restart_message`), so the operator counts the restart even when it
re-forms the world before the runtime's progress report of the old world arrives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .env import truthy

CONDITION_PROCESSES_READY: Final = "heterotrain.io/ProcessesReady"
REASON_PROCESS_RESTARTING: Final = "ProcessRestarting"
REASON_PROCESSES_RUNNING: Final = "ProcessesRunning"
REASON_PROCESSES_STARTING: Final = "ProcessesStarting"
#: On a worker pod: "true" when its launcher starts the processes before the pod is a member (see above).
ANNOTATION_START_BEFORE_MEMBER: Final = "heterotrain.io/start-before-member"

_MESSAGE = re.compile(r"restart (\d+)(?: after exit code (-?\d+))?")


def restart_message(restarts: int, exit_code: int | None, local_rank: int) -> str:
    code = f" after exit code {exit_code}" if exit_code is not None else ""
    return f"process {local_rank}: restart {restarts}{code}"


def parse_restart_message(message: str) -> tuple[int, int | None] | None:
    """``(restart count, exit code)`` from a message :func:`restart_message` wrote (None: another text)."""
    m = _MESSAGE.search(message or "")
    if m is None:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def processes_condition(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's ProcessesReady condition (None: its launcher never set one)."""
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == CONDITION_PROCESSES_READY:
            return dict(c)
    return None


def starts_before_member(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return truthy(annotations.get(ANNOTATION_START_BEFORE_MEMBER))


def processes_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod may be in the world: its launcher did not say a process is restarting, and a pod
    that starts its processes before it is a member has said that they are ready."""
    c = processes_condition(pod)
    if starts_before_member(pod):
        return c is not None and c.get("status") == "True"
    return c is None or c.get("status") != "False"


def condition_patch(ready: bool, message: str, now: str, reason: str | None = None) -> dict[str, Any]:
    """A strategic-merge patch for ``pods/<name>/status`` that sets the condition (merge key: type)."""
    return {
        "status": {
            "conditions": [
                {
                    "type": CONDITION_PROCESSES_READY,
                    "status": "True" if ready else "False",
                    "reason": reason or (REASON_PROCESSES_RUNNING if ready else REASON_PROCESS_RESTARTING),
                    "message": message,
                    "lastTransitionTime": now,
                }
            ]
        }
    }
