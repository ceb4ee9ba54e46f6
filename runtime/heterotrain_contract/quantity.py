"""Kubernetes resource quantities ("500m", "64Gi", "1e3", 2) as exact decimals: the one parser.

``QUANTITY_PATTERN`` is k8s.io/apimachinery's resource.Quantity as controller-gen
writes it; the API puts it into the CRD, and :func:`parse_quantity` accepts exactly
what it matches.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)

#: Binary (Ki = 2^10 ...) and decimal (n = 10^-9 ... E = 10^18) suffixes.
SUFFIXES: Final[dict[str, Decimal]] = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{k: Decimal(10) ** (3 * i) for i, k in enumerate(("k", "M", "G", "T", "P", "E"), start=1)},
    **{k: Decimal(2) ** (10 * i) for i, k in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


def is_quantity(value: str) -> bool:
    """Whether a string is a quantity the API server accepts."""
    return _QUANTITY.match(value) is not None


def parse_quantity(value: str | int | float) -> Decimal:
    """A quantity as a Decimal; ValueError on anything the API server would refuse."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    if not is_quantity(text):
        raise ValueError(f"not a quantity: {value!r}")
    for suffix in (text[-2:], text[-1:]):  # binary suffixes have two letters, decimal ones one
        if suffix in SUFFIXES:
            return Decimal(text[: -len(suffix)]) * SUFFIXES[suffix]
    return Decimal(text)  # a plain number, or one with an exponent ("1e3")
