#!/usr/bin/env python
"""The GPT example as a plain PyTorch DDP script plus HeteroTrain's two lines (see the runtime README).

Its code lives in the runtime package (``runtime/heterotrain_runtime/examples/gpt_ddp.py``), so a
HeteroTrainJob runs it as ``python -m heterotrain_runtime.examples.gpt_ddp``; this file runs the same:

    torchrun --nproc-per-node 3 examples/gpt_ddp.py --weights 1,2,3 --checkpoint-dir /tmp/gpt-ddp
"""

import sys

from heterotrain_runtime.examples.gpt_ddp import main

if __name__ == "__main__":
    sys.exit(main())
