"""Kubernetes resource quantities ("500m", "2Gi", "1e3") as exact decimals (pure)."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a quantity; raise ValueError on anything Kubernetes would refuse."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    s = value.strip()
    m = _RE.match(s)
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    number, exponent, suffix = m.groups()
    try:
        d = Decimal(number)
        if exponent:
            return d * (Decimal(10) ** int(exponent[1:]))
    except InvalidOperation as e:  # pragma: no cover - the regex admits valid numbers only
        raise ValueError(f"invalid quantity {value!r}") from e
    return d * _SUFFIXES[suffix or ""]


def ceil_div(value: Decimal, divisor: Decimal) -> int:
    """``ceil(value / divisor)`` as the downward API reports resources (at least 0)."""
    if divisor <= 0:
        raise ValueError(f"divisor must be positive, got {divisor}")
    return max(0, math.ceil(value / divisor))
