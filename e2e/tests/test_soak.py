"""A quiet cluster stays quiet: 250 kwok nodes, 50 jobs, one quiet minute (``make soak`` runs 1,000 / 200 / 5).

Its own control plane (kwok pools only, the soak profile), its own operator process.  Fails on any worker
pod deleted or created, or any membership change, while nothing in the cluster changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from heterotrain_e2e import soak

pytestmark = pytest.mark.e2e


def test_a_quiet_250_node_cluster_stays_quiet(tmp_path: Path) -> None:
    cfg = soak.SoakConfig(nodes_per_type=50, jobs=50, seed=2, quiet_seconds=60.0, settle_timeout=600.0)
    result = soak.run(cfg, tmp_path, out=None, log=lambda s: print(s, flush=True))
    assert result["workers"] >= 2 * 50, result  # every job runs at least its min
    assert result["quiet_pod_deletions_per_minute"] == 0, result
    assert result["quiet_pod_creations_per_minute"] == 0, result
    assert result["quiet_membership_changes_per_minute"] == 0, result
    # capacity is there from the start: each job forms its world once, at its full size
    assert result["max_membership_changes_admission_to_full_size"] <= 1, result
