"""Resource quantities as the downward API reports them (pure); parsing is the contract's one parser."""

from __future__ import annotations

import math
from decimal import Decimal

from heterotrain_contract import parse_quantity

__all__ = ["ceil_div", "parse_quantity"]


def ceil_div(value: Decimal, divisor: Decimal) -> int:
    """``ceil(value / divisor)`` as the downward API reports resources (at least 0)."""
    if divisor <= 0:
        raise ValueError(f"divisor must be positive, got {divisor}")
    return max(0, math.ceil(value / divisor))
