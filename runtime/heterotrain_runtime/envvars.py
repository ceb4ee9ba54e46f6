"""Environment variables private to the runtime (standard library only).

What the operator sets on a worker is in :mod:`heterotrain_contract.env`; the names
here have their writer and their reader inside the runtime (the launcher and the
user process it starts), or are optional knobs a user (or a test) sets.
"""

from __future__ import annotations

from typing import Final

# --- set by the launcher on the user process -----------------------------------------------------
# torchrun's names (https://pytorch.org/docs/stable/elastic/run.html#environment-variables), then ours
ENV_RANK: Final = "RANK"
ENV_WORLD_SIZE: Final = "WORLD_SIZE"
ENV_LOCAL_RANK: Final = "LOCAL_RANK"
ENV_LOCAL_WORLD_SIZE: Final = "LOCAL_WORLD_SIZE"
ENV_GROUP_RANK: Final = "GROUP_RANK"
ENV_GROUP_WORLD_SIZE: Final = "GROUP_WORLD_SIZE"
ENV_ROLE_RANK: Final = "ROLE_RANK"
ENV_ROLE_WORLD_SIZE: Final = "ROLE_WORLD_SIZE"
ENV_MASTER_ADDR: Final = "MASTER_ADDR"
ENV_MASTER_PORT: Final = "MASTER_PORT"
ENV_TORCHELASTIC_RESTART_COUNT: Final = "TORCHELASTIC_RESTART_COUNT"
ENV_EPOCH: Final = "HETEROTRAIN_EPOCH"  # membership epoch the process was started in
ENV_WEIGHT: Final = "HETEROTRAIN_WEIGHT"  # this rank's weight in that epoch
ENV_LOCAL_BATCH_SIZE: Final = "HETEROTRAIN_LOCAL_BATCH_SIZE"  # this rank's share of the global batch
ENV_BATCH_SPLIT: Final = "HETEROTRAIN_BATCH_SPLIT"  # every rank's share, comma-separated, rank order
ENV_POOL: Final = "HETEROTRAIN_POOL"  # this rank's pool: "<index>/<count>" of its accelerator type
ENV_RESTART_COUNT: Final = "HETEROTRAIN_RESTART_COUNT"  # failure restarts done by the launcher so far
ENV_LAST_EXIT_CODE: Final = "HETEROTRAIN_LAST_EXIT_CODE"  # exit code of the process the launcher restarted
# A file the launcher names and the SDK writes once it is in charge of membership changes: with it
# the launcher does not restart the process on a new epoch (the SDK re-forms at a step boundary).
ENV_SDK_HANDSHAKE_FILE: Final = "HETEROTRAIN_SDK_HANDSHAKE_FILE"

# --- read by the launcher ------------------------------------------------------------------------
ENV_LAUNCHER_METRICS_PORT: Final = "HETEROTRAIN_LAUNCHER_METRICS_PORT"  # the launcher's own metrics port
ENV_LOG_LEVEL: Final = "HETEROTRAIN_LOG_LEVEL"  # the launcher's log level (default INFO)
# "1": a warm interpreter waits for the next in-place restart (see heterotrain_runtime.restarts); default
# off: it holds an imported torch in the pod's memory limit, and its CPU counts against the pod's quota.
ENV_WARM_RESTART: Final = "HETEROTRAIN_WARM_RESTART"
# The modules a warm interpreter imports before it waits (comma-separated; default torch and the SDK).
ENV_WARM_MODULES: Final = "HETEROTRAIN_WARM_MODULES"

# --- optional knobs (all have defaults) ---------------------------------------------------------
# Bound on a checkpoint's collectives (they wait for the slowest rank's write); at least the heartbeat.
ENV_CHECKPOINT_TIMEOUT: Final = "HETEROTRAIN_CHECKPOINT_TIMEOUT_SECONDS"
# Rank 0 appends one JSON line per committed step, every step once (a step a peer committed as the world
# broke is written by the next world's rank 0, with "late": true: trainer/reporting.py).
ENV_PROGRESS_FILE: Final = "HETEROTRAIN_PROGRESS_FILE"
# Out of a cluster (local mode, tests): the JSON file the runtime writes what it would write into the job's
# status (progress); in a pod of a HeteroTrainJob the status itself is written.
ENV_STATUS_FILE: Final = "HETEROTRAIN_STATUS_FILE"
ENV_SAMPLE_LOG_DIR: Final = "HETEROTRAIN_SAMPLE_LOG_DIR"  # every rank logs the sample indices it committed
ENV_DATA_SEED: Final = "HETEROTRAIN_DATA_SEED"  # seed of the global sample order
ENV_TOTAL_STEPS: Final = "HETEROTRAIN_TOTAL_STEPS"  # steps to train (examples/train.py)
# Most samples per forward pass of this process (the script's own cap; a job's cap in force comes with the
# membership, and the lower one holds).  A larger share accumulates gradients over micro-batches.
ENV_MAX_MICRO_BATCH: Final = "HETEROTRAIN_MAX_MICRO_BATCH"
ENV_MEMBERSHIP_POLL_SECONDS: Final = "HETEROTRAIN_MEMBERSHIP_POLL_SECONDS"
# Directory holding the pod's service-account token and CA (token, ca.crt) on a node without mount
# namespaces (the e2e process runner sets it); unset in a normal pod, where
# /var/run/secrets/kubernetes.io/serviceaccount is used.
ENV_SERVICEACCOUNT_DIR: Final = "HETEROTRAIN_SERVICEACCOUNT_DIR"

# --- defaults where nothing was set (the operator always sets the job's values) -------------------
DEFAULT_MAX_RESTARTS: Final = 3
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_CHECKPOINT_TIMEOUT_SECONDS: Final = 600.0
DEFAULT_REBALANCE_MIN_INTERVAL_SECONDS: Final = 30.0
