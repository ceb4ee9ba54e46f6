"""The restart backoff: how long a failed worker waits before it is started again.

One rule, and its defaults, for the operator (which replaces pods: ``spec.faultTolerance``, whose field
defaults are these) and the launcher (which restarts processes in place: the operator passes the job's
values as ``HETEROTRAIN_RESTART_BACKOFF_SECONDS``, ``..._LIMIT_SECONDS`` and
``HETEROTRAIN_FAILURE_WINDOW_SECONDS``).
"""

from __future__ import annotations

from typing import Final

DEFAULT_RESTART_BACKOFF_SECONDS: Final = 1
DEFAULT_RESTART_BACKOFF_LIMIT_SECONDS: Final = 60
DEFAULT_FAILURE_WINDOW_SECONDS: Final = 600


def restart_backoff(recent: int, base: float, limit: float) -> float:
    """Seconds to wait after ``recent`` failures within the failure window: none for the first one, then
    ``base``, doubled with each further failure, at most ``limit``; ``base`` 0 turns it off."""
    if recent <= 1 or base <= 0:
        return 0.0
    return float(min(limit, base * 2 ** (recent - 2)))
