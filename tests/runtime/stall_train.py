#!/usr/bin/env python
"""Test infrastructure: ``examples/train.py`` with a checkpoint that stalls in one process.

``HETEROTRAIN_TEST_STALL`` (JSON: ``pod``, ``phase``, ``nth``, ``marker``, ``seconds``) makes the process
of pod ``pod`` stop at the ``nth`` time it reaches the checkpoint phase ``phase`` (see
``heterotrain_runtime.checkpoint.crash_point_hook``): it writes ``marker`` (the step directory being
saved) and sleeps ``seconds``, so a test can kill a process while its peers are inside the checkpoint's
collectives, deterministically.
"""

from __future__ import annotations

import json
import os
import sys
import time

from heterotrain_contract import ENV_POD_NAME
from heterotrain_runtime import checkpoint
from heterotrain_runtime.examples.train import main

STALL_ENV = "HETEROTRAIN_TEST_STALL"


def install() -> None:
    raw = os.environ.get(STALL_ENV)
    if not raw:
        return
    spec = json.loads(raw)
    if spec["pod"] != os.environ.get(ENV_POD_NAME):
        return
    seen = 0

    def hook(phase: str) -> None:
        nonlocal seen
        if phase != spec["phase"]:
            return
        seen += 1
        if seen == spec["nth"] and not os.path.exists(spec["marker"]):  # once: not again after a restart
            checkpoint.atomic_write(spec["marker"], f"{time.time()}\n".encode())
            time.sleep(spec["seconds"])

    checkpoint.crash_point_hook = hook


if __name__ == "__main__":
    install()
    sys.exit(main())
