#!/usr/bin/env python
"""The example training job: an MLP on a synthetic, seeded dataset, written with the HeteroTrain SDK.

Its code lives in the runtime package (``runtime/heterotrain_runtime/examples/train.py``) so that any
worker image with Python and torch can run it as ``python -m heterotrain_runtime.examples.train`` once
the operator has injected the runtime; this file runs the same thing:

    heterotrain run --local --pools nvidia-a100:2,huawei-ascend-910b:1 examples/train.py --steps 200
    python examples/train.py --steps 50
"""

import sys

from heterotrain_runtime.examples.train import main

if __name__ == "__main__":
    sys.exit(main())
