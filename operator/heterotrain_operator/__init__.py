"""The HeteroTrain Kubernetes operator (kopf)."""
