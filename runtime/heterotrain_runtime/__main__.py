"""``python -m heterotrain_runtime launch -- CMD...`` (and the other ``heterotrain`` commands)."""

import sys

from heterotrain_runtime.cli import main

sys.exit(main())
