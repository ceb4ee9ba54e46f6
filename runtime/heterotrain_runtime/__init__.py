"""HeteroTrain's elastic heterogeneous PyTorch runtime.

Kept import-light: the launcher, the membership sources and local mode run
without torch, so nothing here may pull in torch at import time.  What the
runtime shares with the operator lives in the ``heterotrain_contract`` package,
which ships with it.
"""

__version__ = "0.1.0"
