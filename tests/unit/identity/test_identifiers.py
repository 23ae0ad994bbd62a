"""Identifier checks against the published vectors in shared/reference/vectors."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from services.identity.identifiers import (
    IdentifierType,
    InvalidIdentifier,
    canonical_pnc,
    parse_identifier,
    pivot_year,
)

# A copy of shared/reference/vectors/identifiers.json (with its notes), so the suite runs
# wherever the repository is cloned.
VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "identifiers.json"
# The pivot depends on the run date; the vectors hold for run years 2003-2066.
TODAY = date(2026, 11, 22)


def vectors(kind: str):
    cases = json.loads(VECTORS.read_text())["vectors"]
    return [pytest.param(case, id=case["id"]) for case in cases if case["identifier_type"] == kind]


@pytest.mark.parametrize("case", vectors("PNC"))
def test_pnc_vectors(case):
    expected = case["expected"]
    if "equal" in expected:
        a = parse_identifier("PNC", case["input"]["a"], today=TODAY)
        b = parse_identifier("PNC", case["input"]["b"], today=TODAY)
        assert (a == b) is expected["equal"]
    elif expected["valid"]:
        assert parse_identifier("PNC", case["input"], today=TODAY).value == expected["canonical"]
    else:
        with pytest.raises(InvalidIdentifier):
            parse_identifier("PNC", case["input"], today=TODAY)


@pytest.mark.parametrize("case", vectors("CRO"))
def test_cro_vectors(case):
    expected = case["expected"]
    if expected["valid"]:
        assert parse_identifier("CRO", case["input"]).value == expected["canonical"]
    else:
        with pytest.raises(InvalidIdentifier):
            parse_identifier("CRO", case["input"])


@pytest.mark.parametrize("case", vectors("NOMS") + vectors("CRN"))
def test_noms_and_crn_vectors(case):
    expected = case["expected"]
    checks = {"valid": case["identifier_type"], "valid_noms": "NOMS", "valid_crn": "CRN"}
    for key, kind in checks.items():
        if key not in expected:
            continue
        if expected[key]:
            assert parse_identifier(kind, case["input"]).value == case["input"]
        else:
            with pytest.raises(InvalidIdentifier):
                parse_identifier(kind, case["input"])


def test_the_domain_reference_examples_are_valid():
    assert parse_identifier("PNC", "12/394773H", today=TODAY).value == "2012/0394773H"
    assert parse_identifier("CRO", "29906/12J").value == "029906/12J"
    assert parse_identifier("NOMS", "A1234AA").value == "A1234AA"


def test_a_wrong_pnc_check_letter_names_the_right_one():
    with pytest.raises(InvalidIdentifier, match="check letter is A but must be H"):
        parse_identifier("PNC", "12/394773A", today=TODAY)


def test_two_digit_years_pivot_on_the_current_year():
    assert pivot_year(26, date(2026, 1, 1)) == 2026
    assert pivot_year(27, date(2026, 1, 1)) == 1927
    assert canonical_pnc("26/1W", today=TODAY) == "2026/0000001W"
    assert canonical_pnc("27/1L", today=TODAY) == "1927/0000001L"


def test_surrounding_space_is_ignored_but_an_unknown_type_is_refused():
    assert parse_identifier("NOMS", "  A1234AA ").value == "A1234AA"
    with pytest.raises(InvalidIdentifier, match="identifier type must be one of"):
        parse_identifier("PASSPORT", "123")


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (IdentifierType.NHS, "943 476 5919", "9434765918"),
        (IdentifierType.NI, "AB123456C", "AB123456E"),
        (IdentifierType.BOOKING, "38412A", "38412"),
    ],
)
def test_other_identifier_formats(kind, good, bad):
    assert parse_identifier(kind, good).value == good.replace(" ", "")
    with pytest.raises(InvalidIdentifier):
        parse_identifier(kind, bad)
