"""Person matching: blocking keys that find candidates without scanning everyone, and a
score for each candidate with the reasons behind it.

The score adds log-likelihood weights in the Fellegi-Sunter manner (agreement on a
field is evidence for a match, disagreement evidence against) and maps the sum to 0..1.
Twins (same surname and date of birth, different first names, no shared identifier)
land well below the threshold because the first names' disagreement outweighs the rest."""

from __future__ import annotations

import calendar
import math
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta

import jellyfish
from rapidfuzz.distance import OSA, JaroWinkler

from services.identity.identifiers import Identifier, IdentifierType

DEFAULT_THRESHOLD = 0.5
# The weight sum at which the score is 0.5: exact names with a date of birth one digit
# off (7.5) match; same surname and date of birth with different first names (4.0) do not.
_MIDPOINT = 6.5
STRONG_IDENTIFIERS = frozenset(
    {
        IdentifierType.PNC,
        IdentifierType.CRO,
        IdentifierType.NOMS,
        IdentifierType.CRN,
        IdentifierType.NI,
        IdentifierType.NHS,
    }
)
CONFLICTING_IDENTIFIERS = frozenset({IdentifierType.PNC, IdentifierType.CRO})


# Scripts whose marks are optional: accents, and Arabic and Hebrew vowel points. In
# the others (Devanagari, Bengali, Thai...) a mark is a vowel or part of a consonant
# cluster, and two names can differ only there.
_OPTIONAL_MARKS = ("LATIN", "GREEK", "CYRILLIC", "ARABIC", "HEBREW")


def normalise(text: str) -> str:
    """Case-folded letters without accents, apostrophes or hyphens: how names compare.
    Letters of other scripts are kept, with the vowel signs that spell them, so
    non-Latin names still compare and block."""
    if text.isascii():  # most names: no accents or marks to look at
        kept = [" " if c in " -." else c for c in text.lower() if c.isalpha() or c in " -."]
        return " ".join("".join(kept).split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = []
    marks_optional = True
    for char in decomposed:
        if unicodedata.category(char).startswith("M"):
            if not marks_optional:
                kept.append(char)
            continue
        marks_optional = char.isascii() or unicodedata.name(char, "").startswith(_OPTIONAL_MARKS)
        if char.isalpha():
            kept.append(char)
        elif char in " -.":
            kept.append(" ")
        # Apostrophes (' and \u2019) join: O'Brien compares equal to OBrien.
    return " ".join("".join(kept).replace("ł", "l").split())


def phonetic(name: str) -> str:
    """Soundex of the first word of a normalised name; the name itself if not Latin."""
    first = name.split(" ")[0] if name else ""
    if first and first.isascii():
        return jellyfish.soundex(first)
    return first


def prefix(name: str) -> str:
    return name.replace(" ", "")[:3]


def first_given(given_names: str) -> str:
    return given_names.split(" ")[0] if given_names else ""


@dataclass(frozen=True)
class NameKey:
    """A name prepared for blocking and comparison."""

    given: str
    family: str

    @classmethod
    def of(cls, given_names: str, family_name: str) -> NameKey:
        return cls(normalise(given_names), normalise(family_name))


@dataclass
class Profile:
    """What is known about a person (or asked about in a search)."""

    names: list[NameKey] = field(default_factory=list)  # the primary name first
    date_of_birth: date | None = None
    sex: str | None = None
    identifiers: set[Identifier] = field(default_factory=set)


@dataclass(frozen=True)
class Match:
    score: float
    reasons: tuple[str, ...]


def _similarity(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    return 1.0 if a == b else JaroWinkler.similarity(a, b)


def _family_weight(similarity: float) -> float:
    if similarity >= 0.999:
        return 3.0
    if similarity >= 0.9:
        return 2.0
    if similarity >= 0.8:
        return 0.5
    return -2.5


def _given_weight(similarity: float, slips: int) -> float:
    # Twins often have alike first names (Maria, Martha: 0.88), so below 0.9 counts
    # against, unless one typing slip (a changed, added, dropped or swapped letter)
    # explains the difference: Noah and Nonh are 0.83 but one slip apart.
    if similarity >= 0.999:
        return 2.5
    if similarity >= 0.9:
        return 1.5
    if slips == 1:
        return 1.0
    if similarity >= 0.8:
        return -1.0
    return -3.0


def _slips(a: str, b: str) -> int:
    """Typing slips between two names (optimal string alignment distance)."""
    return OSA.distance(a, b) if min(len(a), len(b)) >= 3 else 99


def _name_evidence(query: NameKey, candidate: NameKey) -> tuple[float, str]:
    """The best reading of two names: as given, or with given and family names swapped."""
    family = _similarity(query.family, candidate.family)
    query_given, candidate_given = first_given(query.given), first_given(candidate.given)
    given = _similarity(query_given, candidate_given)
    slips = _slips(query_given, candidate_given)
    # A part of the name the query does not give is no evidence either way.
    straight = (_family_weight(family) if query.family else 0.0) + (
        _given_weight(given, slips) if query.given else 0.0
    )
    # Swapped: their family name written as given names (all of them, since a double-
    # barrelled surname splits into two "given names"), their given name as family name.
    swapped_family = max(
        _similarity(query.family, candidate_given), _similarity(query.family, candidate.given)
    )
    swapped_given = max(
        _similarity(query_given, candidate.family), _similarity(query.given, candidate.family)
    )
    swapped = _family_weight(swapped_family) + _given_weight(swapped_given, 99) - 0.5
    if (
        query.family
        and query.given
        and swapped > straight
        and min(swapped_family, swapped_given) >= 0.9
    ):
        return swapped, "given and family names swapped"
    parts = []  # only the parts the query gave: the others were not compared
    if query.family:
        parts.append(
            "family name exact" if family >= 0.999 else f"family name Jaro-Winkler {family:.2f}"
        )
    if not query.given:
        pass
    elif given >= 0.999:
        parts.append("given name exact")
    elif given < 0.9 and slips == 1:
        parts.append(f"given name one typing slip (Jaro-Winkler {given:.2f})")
    else:
        parts.append(f"given name Jaro-Winkler {given:.2f}")
    return straight, ", ".join(parts)


def digits(value: date) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def one_digit_apart(a: date, b: date) -> bool:
    x, y = digits(a), digits(b)
    return sum(p != q for p, q in zip(x, y, strict=True)) == 1


def transposed(a: date, b: date) -> bool:
    if a.year == b.year and a.day == b.month and a.month == b.day:
        return True
    x, y = digits(a), digits(b)
    diffs = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q]
    return (
        len(diffs) == 2
        and diffs[1] == diffs[0] + 1
        and x[diffs[0]] == y[diffs[1]]
        and x[diffs[1]] == y[diffs[0]]
    )


def _dob_evidence(query: date, candidate: date) -> tuple[float, str]:
    if query == candidate:
        return 4.0, "date of birth exact"
    if one_digit_apart(query, candidate):
        return 2.0, "date of birth one digit off"
    if transposed(query, candidate):
        return 2.0, "date of birth digits transposed"
    if (query.month, query.day) == (candidate.month, candidate.day) and abs(
        query.year - candidate.year
    ) <= 2:
        return 0.5, "date of birth within two years"
    return -4.0, "date of birth differs"


def score(query: Profile, candidate: Profile) -> Match:
    total = 0.0
    reasons: list[str] = []

    shared = {i for i in query.identifiers & candidate.identifiers if i.type in STRONG_IDENTIFIERS}
    for identifier in sorted(shared):
        reasons.append(f"exact {identifier.type.value}")
    if shared:
        total += 8.0
    for kind in sorted(CONFLICTING_IDENTIFIERS):
        ours = {i for i in query.identifiers if i.type == kind}
        theirs = {i for i in candidate.identifiers if i.type == kind}
        if ours and theirs and not ours & theirs:
            total -= 8.0
            reasons.append(f"different {kind.value}")

    if query.names and candidate.names:
        best: tuple[float, str] | None = None
        for index, name in enumerate(candidate.names):
            for asked in query.names:
                weight, why = _name_evidence(asked, name)
                if index > 0:
                    why = f"alias matched ({why})"
                if best is None or weight > best[0]:
                    best = (weight, why)
        assert best is not None
        total += best[0]
        reasons.append(best[1])

    if query.date_of_birth and candidate.date_of_birth:
        weight, why = _dob_evidence(query.date_of_birth, candidate.date_of_birth)
        total += weight
        reasons.append(why)

    if (
        query.sex
        and candidate.sex
        and query.sex != candidate.sex
        and "NOT" not in query.sex + candidate.sex
    ):
        total -= 1.0
        reasons.append("sex differs")

    probability = 1.0 / (1.0 + math.exp(-(total - _MIDPOINT)))
    return Match(round(probability, 4), tuple(reasons))


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _real_date(year: int, month: int, day: int) -> date | None:
    """The date, if those make one, found without raising: most slips make none, and an
    exception each costs more than the check."""
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1]:
        return None
    if month == 2 and day == 29 and not calendar.isleap(year):
        return None
    return date(year, month, day)


def date_variants(value: date) -> list[date]:
    """Dates one typing slip away: one digit changed, adjacent digits swapped, or day and
    month swapped. Used to block on a date of birth that may have been mistyped."""
    # The date as the number its eight digits spell (YYYYMMDD): a slip in digit i
    # changes it by a multiple of that digit's place.
    number = value.year * 10000 + value.month * 100 + value.day
    spelt = [int(digit) for digit in digits(value)]
    slips: set[int] = set()
    for i, current in enumerate(spelt):
        place = 10 ** (7 - i)
        without = number - current * place
        slips.update(range(without, without + 10 * place, place))
        if i < 7:
            slips.add(number + (spelt[i + 1] - current) * (place - place // 10))
    slips.discard(number)
    found: set[date] = set()
    for slip in slips:
        year, month_day = divmod(slip, 10000)
        if (parsed := _real_date(year, *divmod(month_day, 100))) is not None:
            found.add(parsed)
    if value.day <= 12:
        found.add(date(value.year, value.day, value.month))
    for years in (1, 2):
        for sign in (-1, 1):
            try:
                found.add(value.replace(year=value.year + sign * years))
            except ValueError:
                found.add(value + timedelta(days=sign * 365 * years))
    found.discard(value)
    return sorted(found)
