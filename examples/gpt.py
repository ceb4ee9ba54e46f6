#!/usr/bin/env python
"""Pretrain a small byte-level GPT on the Python standard library's source, with the HeteroTrain SDK.

Its code lives in the runtime package (``runtime/heterotrain_runtime/examples/gpt.py``) so that any
worker image with Python and torch runs it as ``python -m heterotrain_runtime.examples.gpt`` once the
operator has injected the runtime; this file runs the same thing:

    heterotrain run --local --pools nvidia-a100:1,nvidia-h100:1,huawei-ascend-910b:1 examples/gpt.py
    torchrun --nproc-per-node 2 examples/gpt.py --steps 100
    python examples/gpt.py --steps 50
"""

import sys

from heterotrain_runtime.examples.gpt import main

if __name__ == "__main__":
    sys.exit(main())
