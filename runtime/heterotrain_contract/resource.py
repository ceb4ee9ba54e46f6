"""The HeteroTrainJob resource and the names the operator puts on the objects it owns."""

from __future__ import annotations

from typing import Final

GROUP: Final = "heterotrain.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "HeteroTrainJob"
PLURAL: Final = "heterotrainjobs"

# --- labels on worker pods (and on the nodes of an accelerator pool) ---------------------------
LABEL_JOB: Final = f"{GROUP}/job-name"
LABEL_ROLE: Final = f"{GROUP}/role"  # "worker"
ROLE_WORKER: Final = "worker"
#: The node label whose value is an accelerator type; worker pods carry it too.
LABEL_ACCELERATOR: Final = f"{GROUP}/accelerator"
LABEL_WORKER_INDEX: Final = f"{GROUP}/worker-index"
