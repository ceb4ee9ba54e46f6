"""The process runner: a fake kubelet for tests, whose pods run as local processes.

TEST INFRASTRUCTURE ONLY.  This is not a kubelet and gives no isolation: it
plays the kubelet for a few Node objects of the local e2e cluster (those with
the label ``heterotrain.io/runner=process``) so that pods the real
kube-scheduler binds to them REALLY run, as plain processes of this machine,
in the project's Python environment.  Large pools are simulated by kwok
instead (pods there never run).

What it does, per node: keeps the Node Ready (status conditions, addresses,
nodeInfo; capacity/allocatable as created, extended resources kept) and renews
its Lease in ``kube-node-lease``.  Per pod bound to one of its nodes: gives it
an address of its own as pod IP (from ``--pod-cidr``: a part of 198.18.0.0/15
that the cluster harness made local, so Endpoints hold it), prepares its volumes
as directories, runs the init containers in order and then the containers
(``command`` + ``args`` with Kubernetes ``$(VAR)`` expansion, the pod's env,
the image recorded but never pulled, ``python`` resolving to the given
interpreter's environment), restarts them per ``restartPolicy`` with
exponential backoff, reports status through ``pods/status``, and on deletion
sends SIGTERM, then SIGKILL after the grace period, then deletes the object
(grace 0, UID precondition) as the kubelet does.  ``kubectl logs`` works
through a minimal kubelet HTTPS endpoint serving the log files.

There are no mount namespaces: a volumeMount's ``mountPath`` exists only as a
TEXTUAL path prefix.  Every occurrence of a mount path as a path prefix in the
container's command, args, env values and workingDir is replaced by the host
directory that backs the volume (see :mod:`.paths`).  A path the program
builds at run time from pieces the runner never sees is not rewritten.  The
working directory is ``workingDir`` mapped the same way, a per-pod stand-in
(``rootfs/<path>``) when no volume covers it, or ``work/`` when unset.

Inside a container: ``HOSTNAME`` is the pod name; ``KUBERNETES_SERVICE_HOST``/
``_PORT`` name the real API server; ``KUBECONFIG`` (unless the pod sets it) is
a kubeconfig authenticating with the pod's service-account token, and
``HETEROTRAIN_SERVICEACCOUNT_DIR`` the directory holding ``token``, ``ca.crt``
and ``namespace`` (what ``/var/run/secrets/kubernetes.io/serviceaccount``
would be).  The rest of the environment is
the pod's env, PATH (the interpreter's bin dir first) and a few variables of
the runner (HOME, LANG, TZ, TMPDIR, USER, ``--pass-env``).

Limits, as a kubelet enforces them, through cgroup v1 (:mod:`.resources`,
:mod:`.podcgroups`, :mod:`heterotrain_runtime.cgroups`): every pod runs in a
group of its own and each container run in one below it; ``limits.cpu`` is a
CPU quota, ``limits.memory`` a memory limit (no swap), and a container whose
process the kernel OOM-kills ends ``OOMKilled`` (exit code 137).  On a node
annotated ``heterotrain.io/emulated-speed``, a pod requesting N of the node's
accelerators gets a CPU quota of speed x N x the per-unit quota
(``--cpu-per-speed``, scaled down so that every served node's devices fit in
0.75 of the machine's cores), or its CPU limit if lower: a slow pool really
computes slower.  Processes are never told their speed.  Without usable
cgroups the runner stops with an error saying what is missing, unless started
with ``--no-cgroups`` (then nothing is enforced).

Not supported: probes (a running container is ready), lifecycle hooks,
requests (only limits are enforced), security contexts, image entrypoints
(a container needs ``command`` or ``args``), live updates of configMap/secret
volumes, network isolation (every pod shares the host's ports: bind to the pod
IP to avoid clashes), kubectl exec/port-forward, admission checks (a pod bound
with ``nodeName`` beyond the node's capacity runs anyway).

Layout of the state directory (``--state-dir``)::

    pids/<pgid>                       one file per running process group: "<pid> <starttime> <pod> <container>"
    pods/<ns>_<name>_<uid>/<c>.log    container stdout+stderr (<c>.previous.log: the last terminated run)
    pods/<ns>_<name>_<uid>/volumes/   emptyDir/configMap/secret/downwardAPI/projected volumes
    pvc/<ns>/<claimName>/             persistentVolumeClaim volumes, shared by all process nodes (RWX)
    ipam.json                         pod IPs handed out (uid -> IP), so a restarted runner never reuses a live one
    cgroups.json                      the runner's cgroups while it runs (a cluster-down after a crash removes them)
    runner.pid                        the runner's own pid while it runs
    kubelet.crt, kubelet.key          the self-signed certificate of the kubelet endpoint

Modules: the pure core (no I/O, unit-tested without a cluster) is
:mod:`.quantity`, :mod:`.expansion`, :mod:`.paths`, :mod:`.envresolve`,
:mod:`.volumes`, :mod:`.resources`, :mod:`.lifecycle` and :mod:`.status`; the thin I/O layer is
:mod:`.kube` (REST over the kubernetes client's connection pool),
:mod:`.process` (subprocesses, process groups, pid files), :mod:`.ipam`,
:mod:`.kubeletapi` (``kubectl logs``),
:mod:`.podcgroups` (the pods' cgroups),
:mod:`.kubeconfig`, :mod:`.podworker` (one thread per pod), :mod:`.runner`
(nodes, leases, watches) and :mod:`.cli`.
"""
