"""Properties of `Money`: exact conversion or InvalidAmount, never a silent rounding, never a float."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import TypeVar

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.errors import InvalidAmount, UnknownCurrency
from ledger.money import AMOUNT_MINOR_MAX, Money, parse_amount, to_decimal
from tests import strategies as s

T = TypeVar("T")


def _amount_and_currency(amounts: Callable[[str], st.SearchStrategy[T]]) -> st.SearchStrategy[tuple[str, T]]:
    """(currency, value) pairs from a strategy factory that needs the currency."""
    return s.currencies().flatmap(lambda currency: st.tuples(st.just(currency), amounts(currency)))


# -------------------------------------------------------------------------------- round trips

@given(s.currencies(), s.minor_units())
def test_str_and_to_decimal_round_trip(currency: str, minor: int) -> None:
    money = Money(minor=minor, currency=currency)
    assert Money.from_decimal(str(money), currency) == money
    assert Money.from_decimal(money.to_decimal(), currency) == money
    assert money.to_decimal() == s.decimal_of(minor, currency)


@given(_amount_and_currency(s.positive_amounts))
def test_every_valid_form_converts_exactly(case: tuple[str, tuple[object, int]]) -> None:
    currency, (value, minor) = case
    assert Money.from_decimal(value, currency) == Money(minor=minor, currency=currency)
    assert parse_amount(value, currency) == Money(minor=minor, currency=currency)


@given(s.currencies(), s.any_finite_decimals())
def test_conversion_is_exact_or_refused(currency: str, value: Decimal) -> None:
    """Whatever the decimal, the result means exactly that number, or there is no result."""
    try:
        money = Money.from_decimal(value, currency)
    except InvalidAmount:
        return
    assert money.to_decimal() == value
    assert abs(money.minor) <= AMOUNT_MINOR_MAX


@given(_amount_and_currency(s.too_many_places))
def test_too_many_decimal_places_is_refused_never_rounded(case: tuple[str, object]) -> None:
    currency, value = case
    with pytest.raises(InvalidAmount, match="decimal places"):
        Money.from_decimal(value, currency)


@pytest.mark.parametrize(("value", "currency"), [
    ("0.001", "USD"), ("0.005", "USD"), ("12.345", "USD"), ("1.5", "JPY"), ("0.0001", "KWD"),
    ("0.000000001", "BTC"), ("-0.001", "USD"), (Decimal("1.001"), "USD"), ("1e-999", "USD"),
])
def test_examples_of_refused_precision(value: object, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.from_decimal(value, currency)


# ----------------------------------------------------------------------------- invalid inputs

@given(_amount_and_currency(s.malformed_amounts))
def test_malformed_amounts_are_refused(case: tuple[str, object]) -> None:
    currency, value = case
    with pytest.raises(InvalidAmount):
        Money.from_decimal(value, currency)
    with pytest.raises(InvalidAmount):
        parse_amount(value, currency)


@given(_amount_and_currency(s.invalid_amounts))
def test_parse_amount_refuses_every_invalid_amount(case: tuple[str, object]) -> None:
    currency, value = case
    with pytest.raises(InvalidAmount):
        parse_amount(value, currency)


@given(_amount_and_currency(s.non_positive_amounts))
def test_zero_and_negatives_are_numbers_but_not_amounts(case: tuple[str, object]) -> None:
    currency, value = case
    assert Money.from_decimal(value, currency).minor <= 0
    with pytest.raises(InvalidAmount, match="positive"):
        parse_amount(value, currency)


@given(s.currencies(), s.floats())
@example("USD", 0.1)
@example("USD", 12.5)
@example("JPY", 100.0)
def test_float_is_refused_everywhere(currency: str, value: float) -> None:
    for convert in (to_decimal, lambda v: Money.from_decimal(v, currency),
                    lambda v: Money.from_decimal_rounded(v, currency), lambda v: parse_amount(v, currency)):
        with pytest.raises(InvalidAmount, match="float"):
            convert(value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_amount(value: bool) -> None:
    with pytest.raises(InvalidAmount):
        Money.from_decimal(value, "USD")
    with pytest.raises(InvalidAmount):
        parse_amount(value, "USD")


def test_money_refuses_a_minor_that_is_not_an_int() -> None:
    """The module promises `minor` is an int. Money(minor=1250.5) is accepted today, prints as
    "12..5", and a leg built with it is booked by PostgreSQL as 1250 (see test_database_invariants)."""
    accepted = []
    for minor in (12.5, 1250.0, float("nan"), "1250", Decimal("12.5"), True):
        try:
            Money(minor=minor, currency="USD")  # type: ignore[arg-type]
        except (InvalidAmount, TypeError, ValueError, msgspec.ValidationError):
            continue
        accepted.append(minor)
    assert not accepted, f"Money accepted a non-int minor: {accepted!r}"


def test_huge_exponents_are_refused_as_invalid_amounts() -> None:
    """Exponents beyond the decimal context's Emax escape today as decimal.Overflow (a 500, not a 422)."""
    for value in ("1e1000000", "-1e1000000", "1E+999999", Decimal("9e999999")):
        with pytest.raises(InvalidAmount):
            Money.from_decimal(value, "USD")
        with pytest.raises(InvalidAmount):
            parse_amount(value, "USD")
        with pytest.raises(InvalidAmount):
            Money.from_decimal_rounded(to_decimal(value), "USD")


def test_tiny_exponents_are_refused_not_rounded_to_zero() -> None:
    """A non-zero amount below the decimal context's Etiny underflows to 0.00 today instead of failing."""
    for value in ("1e-1000100", "-1e-1000100", Decimal("5e-1000060")):
        with pytest.raises(InvalidAmount):
            Money.from_decimal(value, "USD")


@given(_amount_and_currency(s.out_of_range))
def test_out_of_range_is_refused(case: tuple[str, object]) -> None:
    currency, value = case
    with pytest.raises(InvalidAmount):
        Money.from_decimal(value, currency)


@given(s.currencies(), st.integers(min_value=AMOUNT_MINOR_MAX + 1, max_value=10**40), st.sampled_from([1, -1]))
def test_rounded_conversion_refuses_out_of_range_too(currency: str, minor: int, sign: int) -> None:
    with pytest.raises(InvalidAmount, match="range"):
        Money.from_decimal_rounded(s.decimal_of(sign * minor, currency), currency)


@given(s.currencies())
def test_the_range_limits_themselves_are_accepted(currency: str) -> None:
    for minor in (AMOUNT_MINOR_MAX, -AMOUNT_MINOR_MAX):
        assert Money.from_decimal(s.decimal_of(minor, currency), currency).minor == minor


@given(s.unknown_currencies())
def test_unknown_currencies_are_refused(currency: str) -> None:
    with pytest.raises(UnknownCurrency):
        Money.from_decimal("1", currency)
    with pytest.raises(UnknownCurrency):
        Money.zero(currency)


# ------------------------------------------------------------------------- explicit rounding

@given(_amount_and_currency(s.computed_decimals))
def test_rounded_conversion_is_half_even(case: tuple[str, Decimal]) -> None:
    currency, value = case
    money = Money.from_decimal_rounded(value, currency)
    unit = Decimal(1).scaleb(-s.SCALES[currency])
    with localcontext() as context:
        context.prec = 80
        error = abs(money.to_decimal() - value)
        assert error <= unit / 2, "rounded to the nearest unit"
        if error == unit / 2:
            assert money.minor % 2 == 0, "ties go to the even neighbour"
        if value == money.to_decimal():
            assert Money.from_decimal(value, currency) == money, "nothing to round: same as exact"


@pytest.mark.parametrize(("value", "currency", "expected"), [
    ("0.005", "USD", "0.00"), ("0.015", "USD", "0.02"), ("0.025", "USD", "0.02"), ("-0.005", "USD", "0.00"),
    ("-0.015", "USD", "-0.02"), ("2.5", "JPY", "2"), ("3.5", "JPY", "4"), ("0.0045", "KWD", "0.004"),
    ("1.23456789", "USD", "1.23"), ("0.000000005", "BTC", "0.00000000"), ("0.000000015", "BTC", "0.00000002"),
])
def test_rounded_conversion_examples(value: str, currency: str, expected: str) -> None:
    assert str(Money.from_decimal_rounded(Decimal(value), currency)) == expected


@given(_amount_and_currency(s.computed_decimals))
def test_rounded_conversion_agrees_with_decimal_quantize(case: tuple[str, Decimal]) -> None:
    currency, value = case
    with localcontext() as context:
        context.prec = 80
        expected = value.quantize(Decimal(1).scaleb(-s.SCALES[currency]), rounding=ROUND_HALF_EVEN)
    assert Money.from_decimal_rounded(value, currency).to_decimal() == expected


# -------------------------------------------------------------------------------- arithmetic

@given(s.currencies(), s.minor_units(), s.minor_units())
def test_addition_and_subtraction_are_exact(currency: str, a: int, b: int) -> None:
    x, y = Money(minor=a, currency=currency), Money(minor=b, currency=currency)
    assert (x + y).minor == a + b
    assert (x - y).minor == a - b
    assert x + y == y + x
    assert (x + y) - y == x
    negated = -x
    assert -negated == x and negated.minor == -a
    assert abs(x).minor == abs(a)
    assert (x + y).to_decimal() == x.to_decimal() + y.to_decimal()
    assert (x < y) == (a < b) and (x <= y) == (a <= b) and (x > y) == (a > b) and (x >= y) == (a >= b)


@given(st.lists(s.currencies(), min_size=2, max_size=2, unique=True), s.minor_units(), s.minor_units())
def test_mixed_currencies_are_refused(pair: list[str], a: int, b: int) -> None:
    x, y = Money(minor=a, currency=pair[0]), Money(minor=b, currency=pair[1])
    for combine in (lambda: x + y, lambda: x - y, lambda: x < y, lambda: x <= y, lambda: x > y, lambda: x >= y):
        with pytest.raises(InvalidAmount, match="cannot combine"):
            combine()
    assert x != y


@given(s.currencies(), s.minor_units())
def test_money_is_immutable(currency: str, minor: int) -> None:
    money = Money(minor=minor, currency=currency)
    with pytest.raises(AttributeError):
        money.minor = minor + 1  # type: ignore[misc]
    assert hash(money) == hash(Money(minor=minor, currency=currency))


# --------------------------------------------------------------------------------- wire form

@given(s.currencies(), s.minor_units())
def test_wire_string_has_exactly_the_currency_scale(currency: str, minor: int) -> None:
    text = str(Money(minor=minor, currency=currency))
    scale = s.SCALES[currency]
    pattern = rf"-?(0|[1-9][0-9]*)\.[0-9]{{{scale}}}" if scale else r"-?(0|[1-9][0-9]*)"
    assert re.fullmatch(pattern, text), text
    assert Decimal(text) == s.decimal_of(minor, currency)
    assert (minor < 0) == text.startswith("-")


@pytest.mark.parametrize(("minor", "currency", "expected"), [
    (125000, "USD", "1250.00"), (-50, "USD", "-0.50"), (0, "USD", "0.00"), (5, "USD", "0.05"), (-5, "USD", "-0.05"),
    (1234, "JPY", "1234"), (-1, "JPY", "-1"), (1, "KWD", "0.001"), (1, "BTC", "0.00000001"),
    (AMOUNT_MINOR_MAX, "USD", "9999999999999.99"), (1, "ETH", "0.000000000000000001"),
])
def test_wire_string_examples(minor: int, currency: str, expected: str) -> None:
    assert str(Money(minor=minor, currency=currency)) == expected
