"""Test infrastructure: a real local Kubernetes control plane and the process-runner nodes."""
