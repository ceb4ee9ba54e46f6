"""Make ``heterotrain_api`` importable from a plain checkout (before ``pip install -e .``), and
this directory's helper module ``api_corpus`` importable under ``--import-mode=importlib``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

if importlib.util.find_spec("heterotrain_api") is None:
    sys.path.insert(0, str(REPO / "operator"))
if importlib.util.find_spec("heterotrain_runtime") is None:
    sys.path.insert(0, str(REPO / "runtime"))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
