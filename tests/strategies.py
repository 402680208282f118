"""Every Hypothesis strategy of the suite, in one module (STYLE.md §9): valid inputs and invalid ones.

Invalid inputs are generated as deliberately as valid ones. Amount strategies yield what callers send
(Decimal, str or int) together with the exact minor units it means, so a test never has to re-derive
the answer with the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from hypothesis import strategies as st

from ledger.money import AMOUNT_MINOR_MAX, DIGITS_MAX
from ledger.money import currencies as configured_currencies

# The built-in scales (money._DEFAULT_SCALES), snapshotted so a test that configures more cannot leak.
SCALES: dict[str, int] = dict(configured_currencies())
# A few currencies with different scales for database tests (0, 2, 3 and 8 decimal places).
LEDGER_CURRENCIES: tuple[str, ...] = ("USD", "JPY", "KWD", "BTC")
EARLIEST_EFFECTIVE = datetime(2000, 1, 1, tzinfo=UTC)


def decimal_of(minor: int, currency: str) -> Decimal:
    """The exact decimal that `minor` units of `currency` are (computed without the code under test)."""
    return Decimal(minor).scaleb(-SCALES[currency])


# ----------------------------------------------------------------------------------- currencies

def currencies() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(SCALES))


def ledger_currencies() -> st.SearchStrategy[str]:
    return st.sampled_from(LEDGER_CURRENCIES)


def unknown_currencies() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["XXX", "usd", "US", "DOLLAR", "", "USD ", "€"]),
        st.text(min_size=0, max_size=8).filter(lambda code: code not in SCALES),
    )


# --------------------------------------------------------------------------------- valid amounts

def minor_units(min_value: int = -AMOUNT_MINOR_MAX, max_value: int = AMOUNT_MINOR_MAX) -> st.SearchStrategy[int]:
    """Integers of minor units, biased to the edges (0, ±1, the range limits) by Hypothesis itself."""
    return st.integers(min_value=min_value, max_value=max_value)


@st.composite
def amount_inputs(draw: st.DrawFn, currency: str, min_minor: int = 1,
                  max_minor: int = AMOUNT_MINOR_MAX) -> tuple[object, int]:
    """(value, minor): an exact amount in one of the forms callers send, and the minor units it means.

    Forms: Decimal (as is, or with extra trailing zeros), plain string, string with trailing zeros,
    exponent notation, and int when the amount is whole.
    """
    minor = draw(st.integers(min_value=min_minor, max_value=max_minor))
    scale = SCALES[currency]
    exact = decimal_of(minor, currency)
    plain = format(exact, "f")
    padding = draw(st.integers(min_value=1, max_value=8))
    padded = plain + "0" * padding if "." in plain else plain + "." + "0" * padding
    forms: list[object] = [exact, Decimal(padded), plain, padded, f"{minor}E-{scale}", str(exact.normalize())]
    if minor % 10**scale == 0:
        forms.append(minor // 10**scale)
    return draw(st.sampled_from(forms)), minor


def positive_amounts(currency: str, max_minor: int = AMOUNT_MINOR_MAX) -> st.SearchStrategy[tuple[object, int]]:
    return amount_inputs(currency, min_minor=1, max_minor=max_minor)


@st.composite
def non_positive_amounts(draw: st.DrawFn, currency: str) -> object:
    """Zero and negative amounts: valid numbers (`Money.from_decimal` takes them) but never an amount to book."""
    zeros: list[object] = [0, "0", "0.00", "-0", "+0.0", Decimal(0), Decimal("-0"), Decimal("0E-7"), "0e5"]
    negative, _ = draw(amount_inputs(currency, min_minor=-AMOUNT_MINOR_MAX, max_minor=-1))
    return draw(st.sampled_from([*zeros, negative]))


# ------------------------------------------------------------------------------- invalid amounts

# Strings that are not decimal numbers at all, or not finite ones.
JUNK_STRINGS: tuple[str, ...] = (
    "", " ", "\t\n", "abc", "1.2.3", "12,50", "1,000.00", "$12", "12 USD", "USD 12", "0x10", "1e", "e5", "--1",
    "1-", "+-1", ".", "-", "+", "1/2", "½", "12.5.", "1e1.5", "∞", "None", "null", "true", "12 .5", "1 000",
)
NOT_FINITE: tuple[object, ...] = (
    "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-inf", "+Inf",
    Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
)


def _is_decimal_text(text: str) -> bool:
    try:
        Decimal(text.strip())
    except InvalidOperation:
        return False
    return bool(text.strip())


@st.composite
def too_many_places(draw: st.DrawFn, currency: str) -> object:
    """An amount with a non-zero digit beyond the currency's scale (as Decimal or string): never rounded."""
    scale = SCALES[currency]
    extra = draw(st.integers(min_value=1, max_value=6))
    last = draw(st.integers(min_value=1, max_value=9))
    whole = draw(st.integers(min_value=0, max_value=10**8))
    value = Decimal(whole * 10**extra + last).scaleb(-(scale + extra))
    if draw(st.booleans()):
        value = -value
    return draw(st.sampled_from([value, format(value, "f")]))


@st.composite
def too_many_digits(draw: st.DrawFn, currency: str) -> object:
    """More than DIGITS_MAX significant digits, even when the value itself would fit (trailing zeros)."""
    exact = decimal_of(draw(st.integers(min_value=1, max_value=10**6)), currency)
    digits = len(exact.as_tuple().digits)
    padded = format(exact, "f") + ("" if "." in format(exact, "f") else ".") + "0" * (DIGITS_MAX + 1 - digits)
    long_number = "9" * draw(st.integers(min_value=DIGITS_MAX + 1, max_value=DIGITS_MAX + 10))
    return draw(st.sampled_from([padded, Decimal(padded), long_number, Decimal(long_number), int(long_number)]))


@st.composite
def out_of_range(draw: st.DrawFn, currency: str) -> object:
    """Exact amounts whose minor units do not fit the ledger (|minor| > AMOUNT_MINOR_MAX), incl. "1e999"."""
    minor = draw(st.integers(min_value=AMOUNT_MINOR_MAX + 1, max_value=10**30))
    if draw(st.booleans()):
        minor = -minor
    exact = decimal_of(minor, currency)
    forms: list[object] = [exact, format(exact, "f"), "1e999", "-1e999", "1E+30", Decimal("9e99")]
    if minor % 10**SCALES[currency] == 0:
        forms.append(minor // 10**SCALES[currency])
    return draw(st.sampled_from(forms))


def floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=True, allow_infinity=True)


def not_numbers() -> st.SearchStrategy[object]:
    """Values of the wrong type altogether (bool is an int to Python, but never an amount)."""
    return st.one_of(
        st.booleans(), st.none(), st.binary(max_size=8), st.just(b"12.50"), st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.complex_numbers(max_magnitude=10),
        st.just(object()),
    )


def junk_strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(JUNK_STRINGS),
                     st.text(max_size=20).filter(lambda text: not _is_decimal_text(text)))


def malformed_amounts(currency: str) -> st.SearchStrategy[object]:
    """Everything `Money.from_decimal` must refuse with InvalidAmount, whatever the sign."""
    return st.one_of(
        st.sampled_from(NOT_FINITE), junk_strings(), floats(), not_numbers(), too_many_places(currency),
        too_many_digits(currency), out_of_range(currency),
    )


def invalid_amounts(currency: str) -> st.SearchStrategy[object]:
    """Everything `parse_amount` must refuse: the malformed, plus zero and negatives."""
    return st.one_of(malformed_amounts(currency), non_positive_amounts(currency))


def computed_decimals(currency: str) -> st.SearchStrategy[Decimal]:
    """Finite decimals with any number of places, as a computation (rate × profit) produces them,
    within the range `currency` can hold once rounded."""
    limit = decimal_of(AMOUNT_MINOR_MAX, currency)
    return st.decimals(min_value=-limit, max_value=limit, allow_nan=False, allow_infinity=False,
                       places=None).filter(lambda value: len(value.as_tuple().digits) <= DIGITS_MAX)


def any_finite_decimals() -> st.SearchStrategy[Decimal]:
    return st.decimals(allow_nan=False, allow_infinity=False)


# ----------------------------------------------------------------------------------------- times

def effective_times(earliest: datetime, latest: datetime) -> st.SearchStrategy[datetime]:
    """Aware UTC times in [earliest, latest], to the microsecond (PostgreSQL's timestamptz precision)."""
    return st.datetimes(min_value=earliest.astimezone(UTC).replace(tzinfo=None),
                        max_value=latest.astimezone(UTC).replace(tzinfo=None), timezones=st.just(UTC))


def past_times(now: datetime, span: timedelta = timedelta(days=30)) -> st.SearchStrategy[datetime]:
    """Effective times in the recent past: booked after later ones, they make postings "late"."""
    return effective_times(max(EARLIEST_EFFECTIVE, now - span), now - timedelta(seconds=1))


# ------------------------------------------------------------------------------ ledger commands

def deposit_minor(currency: str) -> st.SearchStrategy[int]:
    """Deposit sizes for the state machine: small to large, in minor units of `currency`."""
    unit = 10 ** SCALES[currency]
    return st.integers(min_value=1, max_value=100_000 * unit)


def signed_changes(currency: str) -> st.SearchStrategy[int]:
    """A non-zero gain (> 0) or loss (< 0) of a closed trade, in minor units."""
    unit = 10 ** SCALES[currency]
    return st.integers(min_value=-20_000 * unit, max_value=20_000 * unit).filter(bool)


def reasons() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)


# ------------------------------------------------------------------------------- accounting policies

POLICY_MINOR_MAX = 10**13  # balances and flows of the pure policies' tests: far from the range's edge


def fee_rates() -> st.SearchStrategy[Decimal]:
    """A performance fee rate: 0 to 1, at most four places (as investment_account.fee_rate stores it)."""
    return st.decimals(min_value=0, max_value=1, places=4, allow_nan=False, allow_infinity=False)


def balances_minor() -> st.SearchStrategy[int]:
    """An investor's balance in minor units: not below zero (withdrawals never overdraw)."""
    return st.integers(min_value=0, max_value=POLICY_MINOR_MAX)


def flows_minor() -> st.SearchStrategy[int]:
    """Net money moved by the investor in a period: in or out."""
    return st.integers(min_value=-POLICY_MINOR_MAX, max_value=POLICY_MINOR_MAX)


def days_around(day: date, span_days: int = 10) -> st.SearchStrategy[list[date]]:
    """Trued-up days near `day`, sorted and distinct (an account's snapshot days)."""
    offsets = st.lists(st.integers(min_value=-span_days, max_value=span_days), unique=True, max_size=6)
    return offsets.map(lambda found: [day + timedelta(days=n) for n in sorted(found)])
