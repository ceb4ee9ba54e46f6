"""HeteroTrain's elastic heterogeneous PyTorch runtime.

Kept import-light: ``heterotrain_runtime.contract`` is imported by the
operator, so nothing here may pull in torch at import time.
"""

__version__ = "0.1.0"
