"""The demo's job: examples/quickstart.yaml, shortened and given room to grow (pure: text in, objects out).

Changed from the quickstart, and why:

* ``--steps``: fewer steps, and a smaller corpus (quicker to build at a slow pool's CPU quota), so that
  the whole demo takes about three minutes on two cores;
* ``workers: {min: 2, max: 4}`` and ``maxWorkers: 2`` for the type the demo adds a node of: the job
  goes on with two workers when one is killed, and takes the added node when it joins;
* ``HETEROTRAIN_PROGRESS_FILE`` on the checkpoint volume: rank 0 appends one JSON record per step there
  (loss, samples/s per pool), which the demo reads for its live line and its timeline;
* checkpoints every ``checkpoint_every`` steps, so that few steps are replayed after the kill.
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any

import yaml

from heterotrain_contract import KIND

#: Where rank 0's progress records go, under the job's checkpoint path (the shared volume).
PROGRESS_FILE = "demo-progress.jsonl"
DEFAULT_CHECKPOINT_PATH = "/checkpoints"
#: A quarter of the quickstart's corpus: building it takes 0.5 s instead of 3 s of CPU in every worker,
#: seconds more at an emulated device's CPU quota; 120 steps of 32 samples see a fifth of it.
CORPUS_BYTES = 1_000_000  # the API's default for spec.checkpoint.path


def demo_manifests(
    quickstart_text: str, namespace: str, steps: int, grow_type: str, checkpoint_every: int = 10
) -> list[dict[str, Any]]:
    docs = [copy.deepcopy(d) for d in yaml.safe_load_all(quickstart_text) if d]
    for d in docs:
        d.setdefault("metadata", {})["namespace"] = namespace
    job = next(d for d in docs if d["kind"] == KIND)
    spec = job["spec"]
    types = [a["type"] for a in spec["accelerators"]]
    if grow_type not in types:
        raise ValueError(f"the demo adds a node of {grow_type!r}, which the job does not list: {types}")
    spec["args"] = [
        *("--steps", str(steps), "--eval-every", str(steps), "--eval-samples", "64", "--log-every", "10"),
        *("--corpus-bytes", str(CORPUS_BYTES)),
    ]
    spec["workers"] = {"min": 2, "max": len(types) + 1}
    for a in spec["accelerators"]:
        a["maxWorkers"] = 2 if a["type"] == grow_type else 1
    ckpt_path = spec["checkpoint"].get("path", DEFAULT_CHECKPOINT_PATH)
    env = [e for e in spec.get("env") or [] if e["name"] != "HETEROTRAIN_PROGRESS_FILE"]
    env.append({"name": "HETEROTRAIN_PROGRESS_FILE", "value": str(PurePosixPath(ckpt_path) / PROGRESS_FILE)})
    spec["env"] = env
    spec["checkpoint"]["intervalSteps"] = checkpoint_every
    return docs


def claim_name(docs: list[dict[str, Any]]) -> str:
    """The PersistentVolumeClaim the job's checkpoints (and so the progress records) go to."""
    job = next(d for d in docs if d["kind"] == KIND)
    return str(job["spec"]["checkpoint"]["volume"]["persistentVolumeClaim"]["claimName"])
