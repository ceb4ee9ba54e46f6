"""Every setting of an :class:`~heterotrain_runtime.sdk.ElasticTrainer`, read in one place.

An argument given to the trainer wins over the environment (what the operator or the
launcher set), which wins over the default.  Nothing else in the trainer reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import heterotrain_contract as hc
from heterotrain_runtime import envvars
from heterotrain_runtime.precision import parse_precision

Mode = Literal["elastic", "static", "single"]


def _first(given: Any, env_value: str | None, default: Any, kind: type) -> Any:
    """``given`` unless falsy (None, 0, ""), else the environment's value unless empty, else ``default``."""
    if given:
        return given
    return kind(env_value) if env_value else default


@dataclass(frozen=True)
class TrainerSettings:
    # --- data ---------------------------------------------------------------
    global_batch_size: int
    seed: int = 0
    drop_last: bool = False
    max_micro_batch: int | None = None  # the script's cap on samples per forward pass (None: none)
    # --- compute ----------------------------------------------------------------
    precision: str = "fp32"  # the pool's precision hint, normalised (heterotrain_runtime.precision.HINTS)
    # --- fault tolerance and balance ---------------------------------------------
    heartbeat: float = envvars.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS  # seconds; bounds every collective
    policy: str = "throughput"  # rebalance policy, lower case: throughput | equal
    rebalance_min_interval: float = envvars.DEFAULT_REBALANCE_MIN_INTERVAL_SECONDS
    # --- checkpoints ---------------------------------------------------------------
    checkpoint_dir: str | None = None
    checkpoint_keep: int = 3
    checkpoint_interval_steps: int = 0
    checkpoint_interval_seconds: float = 0.0
    checkpoint_async: bool = True
    checkpoint_timeout: float = envvars.DEFAULT_CHECKPOINT_TIMEOUT_SECONDS  # >= heartbeat
    # --- identity --------------------------------------------------------------
    pod: str = "rank0"
    node: str = ""  # the node this worker runs on ("" out of a cluster)
    accelerator: str = "cpu"
    backend: str = "gloo"  # requested intra-pool backend (the API's name); see collectives.usable_backend
    local_rank: int = 0  # this process's accelerator in its pod (LOCAL_RANK)
    local_world_size: int = 1  # training processes in its pod (LOCAL_WORLD_SIZE)
    weight: float = 1.0  # this rank's weight, as the launcher published it
    batch_split: tuple[int, ...] = ()  # every rank's share, as the launcher computed it (empty: none)
    # --- membership --------------------------------------------------------------
    mode: Mode = "single"  # elastic: a membership source; static: torchrun & co; single: one process
    membership_poll: float = 0.1
    # a static world, as torchrun & co describe it (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    static_rank: int = 0
    static_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    restart_count: int = 0  # TORCHELASTIC_RESTART_COUNT: the static world's epoch
    handshake_file: str | None = None
    process_restarts: int = 0  # in-place restarts of this pod's process by the launcher
    last_exit_code: int | None = None  # exit code of the process the launcher restarted last
    # --- reporting ------------------------------------------------------------------
    log_every: int = 10
    progress_file: str | None = None
    sample_log_dir: str | None = None
    total_steps: int | None = None  # steps the job trains, when known (the ETA in the job's status)
    status_file: str | None = None  # out of a cluster: where the status reports go
    #: The environment it was read from, for the membership source and the status reporter
    #: (heterotrain_runtime.membership reads the job's name and namespace from it).
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """This process's name in its world (its pod's, with its local rank when the pod runs several)."""
        return hc.process_name(self.pod, self.local_rank, self.local_world_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: Any) -> TrainerSettings:
        """Settings from ``given`` (the trainer's arguments; None = not given) over ``env`` (default:
        ``os.environ``)."""
        e = dict(os.environ if env is None else env)
        unknown = set(given) - _GIVEN
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        gb = _first(given.get("global_batch_size"), e.get(hc.ENV_GLOBAL_BATCH_SIZE), 0, int)
        if gb <= 0:
            raise ValueError(f"global batch size unknown (argument or {hc.ENV_GLOBAL_BATCH_SIZE})")
        return cls(
            global_batch_size=gb,
            **_data(given, e),
            **_balance(given, e),
            **_checkpoints(given, e),
            **_identity(e),
            **_reporting(given, e),
            env=e,
        )


_GIVEN = frozenset(
    {
        "global_batch_size",
        "seed",
        "drop_last",
        "max_micro_batch",
        "precision",
        "heartbeat_timeout",
        "rebalance_policy",
        "rebalance_min_interval",
        "checkpoint_dir",
        "checkpoint_keep",
        "checkpoint_interval_steps",
        "checkpoint_interval_seconds",
        "async_checkpoint",
        "log_every",
        "total_steps",
    }
)


def _data(given: Mapping[str, Any], e: Mapping[str, str]) -> dict[str, Any]:
    seed = given.get("seed")
    cap = _first(given.get("max_micro_batch"), e.get(envvars.ENV_MAX_MICRO_BATCH), None, int)
    if cap is not None and cap < 1:
        raise ValueError(f"max_micro_batch ({envvars.ENV_MAX_MICRO_BATCH}) must be >= 1, got {cap}")
    return {
        "seed": seed if seed is not None else int(e.get(envvars.ENV_DATA_SEED, "0") or 0),
        "drop_last": bool(given.get("drop_last") or False),
        "max_micro_batch": cap,
        "precision": _precision(given, e),
    }


def _precision(given: Mapping[str, Any], e: Mapping[str, str]) -> str:
    """The argument, else the pool's hint (``HETEROTRAIN_PRECISION``), else fp32; checked."""
    if given.get("precision"):
        return parse_precision(str(given["precision"]), field="precision").hint
    return parse_precision(e.get(hc.ENV_PRECISION)).hint


def _heartbeat(given: Mapping[str, Any], e: Mapping[str, str]) -> float:
    return float(
        given.get("heartbeat_timeout")
        or float(e.get(hc.ENV_HEARTBEAT_TIMEOUT, envvars.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS))
    )


def _balance(given: Mapping[str, Any], e: Mapping[str, str]) -> dict[str, Any]:
    interval = given.get("rebalance_min_interval")
    if interval is None:
        interval = float(e.get(hc.ENV_REBALANCE_MIN_INTERVAL, envvars.DEFAULT_REBALANCE_MIN_INTERVAL_SECONDS))
    policy = given.get("rebalance_policy") or e.get(hc.ENV_REBALANCE_POLICY) or "Throughput"
    return {
        "heartbeat": _heartbeat(given, e),
        "policy": str(policy).lower(),
        "rebalance_min_interval": interval,
    }


def _checkpoints(given: Mapping[str, Any], e: Mapping[str, str]) -> dict[str, Any]:
    asynchronous = given.get("async_checkpoint")
    if asynchronous is None:
        asynchronous = hc.truthy(e.get(hc.ENV_CHECKPOINT_ASYNC), default=True)
    timeout = float(e.get(envvars.ENV_CHECKPOINT_TIMEOUT) or envvars.DEFAULT_CHECKPOINT_TIMEOUT_SECONDS)
    return {
        "checkpoint_dir": given.get("checkpoint_dir") or e.get(hc.ENV_CHECKPOINT_DIR) or None,
        "checkpoint_keep": _first(given.get("checkpoint_keep"), e.get(hc.ENV_CHECKPOINT_KEEP), 3, int),
        "checkpoint_interval_steps": _first(
            given.get("checkpoint_interval_steps"), e.get(hc.ENV_CHECKPOINT_INTERVAL_STEPS), 0, int
        ),
        "checkpoint_interval_seconds": _first(
            given.get("checkpoint_interval_seconds"), e.get(hc.ENV_CHECKPOINT_INTERVAL_SECONDS), 0, float
        ),
        "checkpoint_async": bool(asynchronous),
        "checkpoint_timeout": max(_heartbeat(given, e), timeout),
    }


def _identity(e: Mapping[str, str]) -> dict[str, Any]:
    accelerator = e.get(hc.ENV_ACCELERATOR, "cpu")
    mode: Mode = "single"
    if e.get(hc.ENV_MEMBERSHIP_SOURCE):
        mode = "elastic"
    elif int(e.get(envvars.ENV_WORLD_SIZE, "1")) > 1:
        mode = "static"  # torchrun & co: the world never changes in-process
    return {
        "pod": e.get(hc.ENV_POD_NAME) or f"rank{e.get(envvars.ENV_RANK, '0')}",
        "node": e.get(hc.ENV_NODE_NAME) or "",
        "accelerator": accelerator,
        "backend": e.get(hc.ENV_BACKEND) or hc.default_backend(accelerator),
        "local_rank": int(e.get(envvars.ENV_LOCAL_RANK, "0") or 0),
        "local_world_size": int(e.get(envvars.ENV_LOCAL_WORLD_SIZE, "1") or 1),
        "weight": float(e.get(envvars.ENV_WEIGHT, "1") or 1.0),
        "batch_split": tuple(int(x) for x in (e.get(envvars.ENV_BATCH_SPLIT) or "").split(",") if x.strip()),
        "mode": mode,
        "membership_poll": float(e.get(envvars.ENV_MEMBERSHIP_POLL_SECONDS, "0.1")),
        "static_rank": int(e.get(envvars.ENV_RANK, "0") or 0),
        "static_world_size": int(e.get(envvars.ENV_WORLD_SIZE, "1") or 1),
        "master_addr": e.get(envvars.ENV_MASTER_ADDR, "127.0.0.1"),
        "master_port": int(e.get(envvars.ENV_MASTER_PORT, "0") or 0),
        "restart_count": int(e.get(envvars.ENV_TORCHELASTIC_RESTART_COUNT, "0") or 0),
        "handshake_file": e.get(envvars.ENV_SDK_HANDSHAKE_FILE) or None,
        "process_restarts": int(e.get(envvars.ENV_RESTART_COUNT, "0") or 0),
        "last_exit_code": int(e[envvars.ENV_LAST_EXIT_CODE]) if e.get(envvars.ENV_LAST_EXIT_CODE) else None,
    }


def _reporting(given: Mapping[str, Any], e: Mapping[str, str]) -> dict[str, Any]:
    log_every = given.get("log_every")
    return {
        "log_every": 10 if log_every is None else int(log_every),
        "progress_file": e.get(envvars.ENV_PROGRESS_FILE) or None,
        "sample_log_dir": e.get(envvars.ENV_SAMPLE_LOG_DIR) or None,
        "total_steps": _first(given.get("total_steps"), e.get(envvars.ENV_TOTAL_STEPS), None, int),
        "status_file": e.get(envvars.ENV_STATUS_FILE) or None,
    }
