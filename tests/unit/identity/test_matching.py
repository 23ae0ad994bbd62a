"""Scores and reasons for pairs of people, without a database."""

from __future__ import annotations

import contextlib
import random
from datetime import date, timedelta

import pytest

from services.identity.identifiers import Identifier, IdentifierType
from services.identity.matching import (
    DEFAULT_THRESHOLD,
    NameKey,
    Profile,
    date_variants,
    normalise,
    score,
)

DOB = date(1979, 3, 12)
PNC = Identifier(IdentifierType.PNC, "2012/0394773H")


def profile(given, family, dob=DOB, identifiers=(), aliases=()):
    names = [NameKey.of(given, family)] + [NameKey.of(g, f) for g, f in aliases]
    return Profile(names=names, date_of_birth=dob, identifiers=set(identifiers))


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (profile("Martha", "Kowalski"), "family name exact"),
        (profile("Martha", "Kowalsky"), "family name Jaro-Winkler 0.95"),
        (profile("Kowalski", "Martha"), "given and family names swapped"),
        (profile("Matrha", "Kowalski"), "given name Jaro-Winkler 0.96"),
        (profile("Nartha", "Kowalski"), "given name one typing slip (Jaro-Winkler 0.89)"),
        (profile("Martha", "Kowalski", dob=date(1979, 3, 13)), "date of birth one digit off"),
        (profile("Martha", "Kowalski", dob=date(1979, 12, 3)), "date of birth digits transposed"),
    ],
)
def test_one_error_still_matches_and_says_why(query, reason):
    match = score(query, profile("Martha", "Kowalski"))
    assert match.score >= DEFAULT_THRESHOLD
    assert any(reason in r for r in match.reasons), match.reasons


def test_a_part_of_the_name_not_searched_for_is_not_given_as_a_reason():
    candidate = profile("Martha", "Kowalski")
    family_only = score(profile("", "Kowalski"), candidate)
    assert family_only.reasons == ("family name exact", "date of birth exact")
    given_only = score(profile("Marta", ""), candidate)
    assert given_only.reasons == ("given name Jaro-Winkler 0.97", "date of birth exact")


def test_twins_score_well_below_the_threshold():
    for other in ("Maria", "Beatrice", "Agnieszka"):
        assert score(profile(other, "Kowalski"), profile("Martha", "Kowalski")).score < 0.4


def test_an_alias_matches_and_says_so():
    match = score(
        profile("Marta", "Smith"), profile("Martha", "Kowalski", aliases=[("Marta", "Smith")])
    )
    assert match.score > 0.9 and match.reasons[0].startswith("alias matched")


def test_a_double_barrelled_surname_written_as_given_names_is_a_swap():
    match = score(profile("Ward-Wang", "Zoë"), profile("Zoë Maya", "Ward-Wang"))
    assert match.score >= DEFAULT_THRESHOLD and "given and family names swapped" in match.reasons


def test_identifiers_decide_for_and_against():
    same = score(Profile(identifiers={PNC}), profile("Anyone", "At All", identifiers=[PNC]))
    assert "exact PNC" in same.reasons and same.score > 0.8
    other = Identifier(IdentifierType.PNC, "1979/0163001B")
    different = score(
        profile("Martha", "Kowalski", identifiers=[other]),
        profile("Martha", "Kowalski", identifiers=[PNC]),
    )
    assert "different PNC" in different.reasons and different.score < DEFAULT_THRESHOLD


def test_names_compare_without_accents_apostrophes_or_case_but_keep_other_scripts():
    assert normalise("Zoë O'Brien-Łukasz") == "zoe obrien lukasz"
    assert normalise(" O'Brien-SMITH  Jr. 2nd") == "obrien smith jr nd"
    assert normalise("ИВАНОВ") == "иванов"


def test_vowel_signs_are_letters_in_scripts_that_need_them_and_optional_in_others():
    # Devanagari and Thai write vowels as marks on consonants: Ram and Rima, Somchai and
    # Somying differ only there. Arabic and Hebrew vowel points are optional.
    assert normalise("राम") != normalise("रीमा")
    assert normalise("สมชาย") == "สมชาย"
    assert normalise("محمّد") == normalise("محمد") == "محمد"
    assert normalise("שָׁלוֹם") == "שלום"
    twins = score(profile("रीमा", "शर्मा"), profile("राम", "शर्मा"))
    assert twins.score < 0.4
    assert score(profile("राम", "शर्मा"), profile("राम", "शर्मा")).score > 0.9


def test_date_variants_cover_one_slip():
    variants = date_variants(date(1980, 3, 12))
    assert date(1980, 3, 13) in variants  # one digit changed
    assert date(1908, 3, 12) in variants  # adjacent digits swapped
    assert date(1980, 12, 3) in variants  # day and month swapped
    assert date(1980, 3, 12) not in variants
    assert date(1981, 4, 12) not in variants  # two slips


def defined_variants(value: date) -> set[date]:
    """What date_variants means, spelt out: every real date whose eight digits are the
    date's with one digit changed or two adjacent digits swapped; day and month swapped;
    and the same day a year or two either side (365 days a year from a leap day)."""
    text = f"{value.year:04d}{value.month:02d}{value.day:02d}"
    spellings = {text[:i] + digit + text[i + 1 :] for i in range(8) for digit in "0123456789"}
    spellings |= {text[:i] + text[i + 1] + text[i] + text[i + 2 :] for i in range(7)}
    found = set()
    for spelling in spellings:
        with contextlib.suppress(ValueError):
            found.add(date(int(spelling[:4]), int(spelling[4:6]), int(spelling[6:])))
    if value.day <= 12:
        found.add(date(value.year, value.day, value.month))
    for years in (-2, -1, 1, 2):
        try:
            found.add(value.replace(year=value.year + years))
        except ValueError:
            found.add(value + timedelta(days=365 * years))
    return found - {value}


@pytest.mark.parametrize(
    "value",
    [
        date(1980, 3, 12),
        date(2000, 2, 29),  # a leap day: 2100-02-29 and 1900-02-29 are not dates
        date(1996, 2, 9),  # 1996-02-29 is a date, 1997-02-29 is not
        date(1999, 12, 31),
        date(1000, 1, 1),  # year 0000 is not a date
        date(9997, 12, 31),
        date(1970, 10, 1),
        date(2011, 11, 30),
    ],
)
def test_date_variants_are_exactly_the_dates_one_slip_away(value):
    assert date_variants(value) == sorted(defined_variants(value))


def test_date_variants_agree_with_their_definition_over_many_dates():
    rng = random.Random(7)
    first, last = date(1900, 1, 1).toordinal(), date(2030, 1, 1).toordinal()
    for value in (date.fromordinal(rng.randrange(first, last)) for _ in range(300)):
        assert date_variants(value) == sorted(defined_variants(value)), value
