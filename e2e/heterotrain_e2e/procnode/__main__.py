"""``python -m heterotrain_e2e.procnode``: run the process runner (a fake kubelet for tests)."""

from heterotrain_e2e.procnode.cli import main

raise SystemExit(main())
