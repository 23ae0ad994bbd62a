"""The identifiers a person can hold, each checked and put in canonical form before it is
stored, so the same identifier written two ways is one identifier.

PNC and CRO rules follow hmpps-person-record (see shared/reference/vectors/identifiers_notes.md):
check characters index "ZABCDEFGHJKLMNPQRTUVWXY" by a number modulo 23; PNC two-digit years
pivot on the current year."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

CHECK_LETTERS = "ZABCDEFGHJKLMNPQRTUVWXY"


class IdentifierType(StrEnum):
    NOMS = "NOMS"  # prison number, e.g. A1234AA
    BOOKING = "BOOKING"  # one custody period, e.g. 38412A
    CRN = "CRN"  # probation case reference number, e.g. X123456
    PNC = "PNC"  # Police National Computer number
    CRO = "CRO"  # Criminal Records Office number
    NI = "NI"  # national insurance number
    DRIVING_LICENCE = "DRIVING_LICENCE"
    ARREST_SUMMONS = "ARREST_SUMMONS"
    NHS = "NHS"


# By value, for the code that turns names into types for every command and event: calling
# the enum looks the value up through several Python calls.
IDENTIFIER_TYPES = {kind.value: kind for kind in IdentifierType}


class InvalidIdentifier(ValueError):
    """The value is not a valid identifier of its type; the message says which rule."""


@dataclass(frozen=True, order=True)
class Identifier:
    type: IdentifierType
    value: str

    def __str__(self) -> str:
        return f"{self.type} {self.value}"


_NOMS = re.compile(r"^[A-Z]\d{4}[A-Z]{2}$")
_CRN = re.compile(r"^[A-Z]\d{6}$")
_BOOKING = re.compile(r"^\d{5,6}[A-Z]$")
_PNC = re.compile(r"^(\d{2,4})(/?)(\d{1,7})([A-Z])$")
_CRO = re.compile(r"^(\d{1,6})/(\d{2})([A-Z])$")
_CRO_SF = re.compile(r"^SF(\d{2})/(\d{1,6})([A-Z])$")
_NI = re.compile(r"^(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]$")
_DRIVING_LICENCE = re.compile(r"^[A-Z9]{5}\d{6}[A-Z9]{2}\d[A-Z]{2}$")
_ARREST_SUMMONS = re.compile(r"^\d{2}/\d{1,6}/\d{1,6}[A-Z]?$")
_NHS = re.compile(r"^\d{10}$")


def check_letter(number: int) -> str:
    return CHECK_LETTERS[number % 23]


def pivot_year(two_digits: int, today: date) -> int:
    """A two-digit year up to this year's is this century's; later ones the last."""
    century = today.year - today.year % 100
    return century + two_digits if two_digits <= today.year % 100 else century - 100 + two_digits


def canonical_pnc(raw: str, *, today: date | None = None) -> str:
    """YYYY/NNNNNNNC from short or long form, with or without the slash."""
    match = _PNC.match(raw)
    if not match:
        raise InvalidIdentifier(
            "PNC must be a 2 or 4 digit year, an optional '/', up to 7 digits and an "
            "upper-case check letter, e.g. 12/394773H or 2012/0394773H"
        )
    digits = raw.replace("/", "")
    body, letter = digits[:-1], digits[-1]
    if len(digits) < 12:  # short form: two-digit year, serial is the rest
        year = pivot_year(int(body[:2]), today or date.today())
        serial = body[2:]
    else:  # long form: four-digit year, serial is the last seven digits
        year = int(body[:4])
        serial = body[-7:]
    if len(serial) > 7:
        raise InvalidIdentifier("PNC serial number must have at most 7 digits")
    serial = serial.zfill(7)
    expected = check_letter(int(f"{year % 100:02d}{serial}"))
    if letter != expected:
        raise InvalidIdentifier(f"PNC check letter is {letter} but must be {expected}")
    return f"{year}/{serial}{letter}"


def canonical_cro(raw: str) -> str:
    """NNNNNN/YYC (serial padded to six digits), or SFYY/N…C unchanged."""
    if match := _CRO_SF.match(raw):
        year, serial, letter = match.groups()
        expected = check_letter(int(year + serial))
        if letter != expected:
            raise InvalidIdentifier(f"CRO check letter is {letter} but must be {expected}")
        return raw
    if match := _CRO.match(raw):
        serial, year, letter = match.groups()
        serial = serial.zfill(6)
        expected = check_letter(int(year + serial))
        if letter != expected:
            raise InvalidIdentifier(f"CRO check letter is {letter} but must be {expected}")
        return f"{serial}/{year}{letter}"
    raise InvalidIdentifier(
        "CRO must be NNNNNN/YYC (e.g. 29906/12J) or SFYY/NNNNNNC (e.g. SF83/50058Z)"
    )


def _nhs(raw: str) -> str:
    digits = raw.replace(" ", "")
    if not _NHS.match(digits):
        raise InvalidIdentifier("NHS number must be 10 digits")
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    if check == 10 or check != int(digits[9]):
        raise InvalidIdentifier("NHS number check digit is wrong")
    return digits


def _pattern(pattern: re.Pattern[str], rule: str):
    def canonical(raw: str) -> str:
        if not pattern.match(raw):
            raise InvalidIdentifier(rule)
        return raw

    return canonical


_CANONICALISERS = {
    IdentifierType.NOMS: _pattern(
        _NOMS, "NOMS number must be a letter, 4 digits, 2 letters, e.g. A1234AA"
    ),
    IdentifierType.CRN: _pattern(_CRN, "CRN must be a letter and 6 digits, e.g. X123456"),
    IdentifierType.BOOKING: _pattern(
        _BOOKING, "booking number must be 5 or 6 digits and a letter, e.g. 38412A"
    ),
    IdentifierType.PNC: canonical_pnc,
    IdentifierType.CRO: canonical_cro,
    IdentifierType.NI: _pattern(
        _NI, "national insurance number must be 2 letters, 6 digits and A-D, e.g. AB123456C"
    ),
    IdentifierType.DRIVING_LICENCE: _pattern(
        _DRIVING_LICENCE, "driving licence number must be 16 characters in the DVLA format"
    ),
    IdentifierType.ARREST_SUMMONS: _pattern(
        _ARREST_SUMMONS, "arrest summons number must be YY/NNNNNN/NNNNNN with an optional letter"
    ),
    IdentifierType.NHS: _nhs,
}


def parse_identifier(type_name: str, raw: str | None, *, today: date | None = None) -> Identifier:
    """Checks `raw` as an identifier of `type_name` and returns it in canonical form.

    Surrounding white space is ignored; case is not (a lower-case check letter is refused,
    as the national systems refuse it). Raises InvalidIdentifier naming the rule broken."""
    kind = IDENTIFIER_TYPES.get(type_name)
    if kind is None:
        known = ", ".join(t.value for t in IdentifierType)
        raise InvalidIdentifier(f"identifier type must be one of {known}")
    value = (raw or "").strip()
    if not value:
        raise InvalidIdentifier(f"{kind} must not be empty")
    if kind is IdentifierType.PNC:
        return Identifier(kind, canonical_pnc(value, today=today))
    return Identifier(kind, _CANONICALISERS[kind](value))
