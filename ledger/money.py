"""Exact money: integer minor units with a fixed scale per currency; Decimal only at the edges.

Guarantees: a `Money` is immutable, its `minor` is an int, and conversion from a decimal is exact or
an `InvalidAmount` error — never rounded silently. The only rounding is `Money.from_decimal_rounded`,
used for computed amounts (fees); it rounds half-even and says so by its name.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Final

import msgspec

from ledger.errors import InvalidAmount, UnknownCurrency

# ISO 4217 minor-unit exponents for the currencies we expect; others via `configure_scales`.
_DEFAULT_SCALES: Final[dict[str, int]] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "MXN": 2, "BRL": 2, "COP": 2,
    "CLP": 0, "JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "BTC": 8, "ETH": 18, "USDT": 6, "USDC": 6,
}
_scales: dict[str, int] = dict(_DEFAULT_SCALES)

# Postings are BIGINT: every amount and balance must fit, with headroom for sums of many legs.
AMOUNT_MINOR_MAX: Final[int] = 10**15 - 1
DIGITS_MAX: Final[int] = 34
_CURRENCY_RE: Final = re.compile(r"^[A-Z]{3,5}$")


def _shown(value: object) -> str:
    """A refused amount as a person typed it: '1E+400', not Decimal('1E+400')."""
    return f"'{value}'" if isinstance(value, Decimal) else repr(value)


def configure_scales(spec: str) -> None:
    """Add or override currency scales from `"USD=2,BTC=8"` (the CURRENCY_SCALES setting)."""
    for part in filter(None, (p.strip() for p in spec.split(","))):
        code, _, scale = part.partition("=")
        code = code.strip().upper()
        if not _CURRENCY_RE.match(code) or not scale.strip().isdigit() or int(scale) > 18:
            raise ValueError(f"bad currency scale {part!r}: expected CODE=DIGITS, e.g. USD=2")
        _scales[code] = int(scale)


def scale_of(currency: str) -> int:
    try:
        return _scales[currency]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {currency!r}") from None


def currencies() -> dict[str, int]:
    return dict(_scales)


def to_decimal(value: object) -> Decimal:
    """A finite Decimal from a Decimal, int or decimal string; float is refused outright."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount("amount must be a decimal string or an integer, never a float")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise InvalidAmount(f"amount {_shown(value)} is not a decimal number")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount(f"amount {_shown(value)} is not a decimal number") from None
    else:
        raise InvalidAmount(f"amount of type {type(value).__name__} is not a decimal number")
    if not number.is_finite():
        raise InvalidAmount(f"amount {_shown(value)} is not finite")
    if number != 0:
        if len(number.as_tuple().digits) > DIGITS_MAX:
            raise InvalidAmount(f"amount {_shown(value)} has more than {DIGITS_MAX} digits")
        # Bound the exponent too, so scaling can neither overflow nor underflow to zero silently.
        if number.adjusted() > DIGITS_MAX:
            raise InvalidAmount(f"amount {_shown(value)} is out of range")
        if number.adjusted() < -DIGITS_MAX:
            raise InvalidAmount(f"amount {_shown(value)} has more decimal places than any currency")
    return number


class Money(msgspec.Struct, frozen=True, kw_only=True, order=False):
    """An exact amount: `minor` units of `currency` (USD 12.34 = Money(minor=1234, currency="USD")).

    Signed, so it can carry balances and differences; amounts on postings are always positive.
    """

    minor: int
    currency: str

    def __post_init__(self) -> None:
        # msgspec does not check types on construction: a float (or bool) minor must never get in.
        if type(self.minor) is not int:
            raise InvalidAmount(f"minor units must be an int, not {type(self.minor).__name__}")

    @classmethod
    def from_decimal(cls, value: object, currency: str) -> Money:
        """Exact conversion; more decimal places than the currency has is an error, not a rounding."""
        number = to_decimal(value)
        scale = scale_of(currency)
        with localcontext() as ctx:
            ctx.prec = DIGITS_MAX + 20
            scaled = number.scaleb(scale)
            if scaled != scaled.to_integral_value():
                raise InvalidAmount(
                    f"amount {_shown(value)} has more than {scale} decimal places for {currency}")
            minor = int(scaled)
        if abs(minor) > AMOUNT_MINOR_MAX:
            raise InvalidAmount(f"amount {_shown(value)} is out of range")
        return cls(minor=minor, currency=currency)

    @classmethod
    def from_decimal_rounded(cls, value: Decimal, currency: str) -> Money:
        """For computed amounts only (a fee = rate × profit): round half-even to the currency's scale."""
        number = to_decimal(value)
        scale = scale_of(currency)
        with localcontext() as ctx:
            ctx.prec = DIGITS_MAX + 20
            minor = int(number.scaleb(scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        if abs(minor) > AMOUNT_MINOR_MAX:
            raise InvalidAmount(f"amount {_shown(value)} is out of range")
        return cls(minor=minor, currency=currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        scale_of(currency)
        return cls(minor=0, currency=currency)

    def to_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-scale_of(self.currency))

    def __str__(self) -> str:
        """The wire form: a plain decimal string at the currency's scale, e.g. "1250.00", "-0.50"."""
        scale = scale_of(self.currency)
        sign = "-" if self.minor < 0 else ""
        digits = str(abs(self.minor)).rjust(scale + 1, "0")
        return f"{sign}{digits[:-scale]}.{digits[-scale:]}" if scale else f"{sign}{digits}"

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise InvalidAmount(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(minor=self.minor + other.minor, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(minor=self.minor - other.minor, currency=self.currency)

    def __neg__(self) -> Money:
        return Money(minor=-self.minor, currency=self.currency)

    def __abs__(self) -> Money:
        return Money(minor=abs(self.minor), currency=self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.minor >= other.minor

    def is_zero(self) -> bool:
        return self.minor == 0

    def is_positive(self) -> bool:
        return self.minor > 0


def parse_amount(value: object, currency: str) -> Money:
    """A positive amount for a posting or a request (zero and negatives are refused: the side says)."""
    money = Money.from_decimal(value, currency)
    if money.minor <= 0:
        raise InvalidAmount(f"amount {_shown(value)} must be positive; the side carries the direction")
    return money
