"""The runtime's local-mode table and the API's known accelerators must not drift apart."""

from heterotrain_api import KNOWN_ACCELERATORS
from heterotrain_runtime import contract


def test_local_mode_speeds_and_backends_match_the_api_table():
    for type_, known in KNOWN_ACCELERATORS.items():
        assert contract.relative_throughput(type_) == known.relative_throughput, type_
        torch_backend = "nccl" if known.backend == "rccl" else known.backend  # ROCm exposes RCCL as nccl
        assert contract.default_backend(type_) == torch_backend, type_
