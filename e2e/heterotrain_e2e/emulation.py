"""Device-speed emulation of the test infrastructure: the node annotation.

A process-runner pool's nodes carry ``heterotrain.io/emulated-speed`` (written from
the profile's ``emulatedSpeed``); the process runner enforces it as a CPU quota on
the pods it runs (speed x a per-unit quota x the accelerators a pod requests, through
cgroups: see :mod:`heterotrain_e2e.procnode.resources`).  Processes are never told it.
"""

from __future__ import annotations

from typing import Final

from heterotrain_contract import GROUP

#: On process-runner nodes: the emulated device speed (a float, 1.0 = reference speed).
ANNOTATION_EMULATED_SPEED: Final = f"{GROUP}/emulated-speed"

__all__ = ["ANNOTATION_EMULATED_SPEED"]
