"""``make demo`` (``python -m heterotrain_e2e.demo``): the product on the local cluster, in under three
minutes warm.

Test infrastructure.  With no $KUBECONFIG it starts the e2e control plane with ``e2e/profiles/demo.yaml``
(one process-runner node per accelerator type, each at its emulated speed), ``helm install``s
charts/heterotrain (the operator runs from the chart, on process nodes), applies a shortened copy of
examples/quickstart.yaml (the GPT on an A100, an H100 and an Ascend 910B), prints a live line every two
seconds, SIGKILLs one worker's process and adds a node midway, and at the end writes a PNG timeline
(samples/s per pool, loss, the demo's actions, membership changes and the job's Events) and prints its
path.  It then stops what it started (``--keep`` leaves it running).

Modules: :mod:`.job` (the demo's job, from the quickstart; pure), :mod:`.timeline` (snapshots, Events and
progress records -> series; pure), :mod:`.plot` (the PNG), :mod:`.chaos` (kill, add a node, read the
progress records), :mod:`.run` (the steps), :mod:`.__main__` (the command).
"""
