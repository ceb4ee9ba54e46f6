"""The parts of :class:`heterotrain_runtime.sdk.ElasticTrainer`, one concern each.

* :mod:`.settings` — every setting, read from arguments and the environment in one place
* :mod:`.world` — world formation: membership, rendezvous store, process groups, topology
* :mod:`.state` — the training state: checkpoint save/restore, broadcast to new members
* :mod:`.accumulate` — forward and backward in micro-batches of at most the cap; out of memory
* :mod:`.control` — the per-step control vector, named fields packed into one tensor
* :mod:`.balance` — what a rank measures of its speed, and when the split is reconsidered
* :mod:`.reporting` — metrics, the progress file, the job status, the log line
"""
