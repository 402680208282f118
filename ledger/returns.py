"""Returns and ratios as reported: `Decimal`s computed at 28 significant digits, rounded half-even to
RETURN_PLACES decimal places only when they are shown (the performance report, the monthly statement)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

RETURN_PLACES = 8
_QUANTUM = Decimal(1).scaleb(-RETURN_PLACES)


def rounded(value: Decimal) -> Decimal:
    """A return or ratio as reported: half-even to RETURN_PLACES decimal places."""
    return value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
