"""Make ``heterotrain_operator.placement`` importable from a plain checkout, and this directory's helper
module ``placement_helpers`` importable under ``--import-mode=importlib``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

if importlib.util.find_spec("heterotrain_operator") is None:
    sys.path.insert(0, str(REPO / "operator"))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
