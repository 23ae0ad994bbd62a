"""The compact JSON encoder built once: the same text as the standard library's encoder
with the same settings, so stored events and command digests do not change with it."""

from __future__ import annotations

import json
import json.encoder
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder

from libs.eventstore.jsonencoding import compact_json_encoder
from libs.eventstore.mapper import create_transcoder

VALUES = [
    "Zoë O'Brien",
    {"b": [1, 2.5, None, True, False], "a": {"z": "Ł", "y": '\u200c\n\t"\\'}},
    [float("nan"), float("inf"), -0.0, 10**30, ""],
    {"when": date(2026, 1, 2), "who": UUID(int=7)},
    [],
    {},
]


def by_value(value):
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not encodable: {value!r}")


def standard(sort_keys: bool):
    return json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys, default=by_value
    ).encode


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("value", VALUES)
def test_it_encodes_what_the_standard_encoder_does(value, sort_keys):
    assert compact_json_encoder(by_value, sort_keys=sort_keys)(value) == standard(sort_keys)(value)


@pytest.mark.parametrize("value", VALUES)
def test_without_the_c_encoder_it_is_the_standard_encoder(value, monkeypatch):
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    assert compact_json_encoder(by_value, sort_keys=True)(value) == standard(True)(value)


def test_an_unencodable_value_fails_as_the_default_says_and_the_encoder_goes_on():
    encode = compact_json_encoder(by_value)
    with pytest.raises(TypeError, match="not encodable"):
        encode({"a": [object()]})
    assert encode({"a": [1]}) == '{"a":[1]}'


def test_the_transcoder_writes_the_bytes_the_library_transcoder_writes_and_reads_them_back():
    ours = create_transcoder()
    library = JSONTranscoder()
    for transcoding in ours.types.values():
        library.register(transcoding)
    state = {
        "timestamp": datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
        "date_of_birth": date(1980, 2, 29),
        "person_id": UUID(int=42),
        "amount": Decimal("1.10"),
        "name": {"given_names": "Zoë", "family_name": "Ó Briain"},
        "identifiers": [["NOMS", "A1234BC"]],
    }
    encoded = ours.encode(state)
    assert encoded == library.encode(state)
    assert ours.decode(encoded) == state
