"""Builds the eventsourcing library's Mapper the way every Throughline store uses it: JSON
with the types our events carry, and AES-GCM encryption of event state when a key is set
(with earlier keys kept for reading the events they encrypted: see `keyring`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date
from typing import Any

from asyncpg.pgproto.pgproto import UUID as _DriverUUID
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Transcoding,
    UUIDAsHex,
)

from libs.eventstore.errors import UnreadableStoreError
from libs.eventstore.jsonencoding import compact_json_encoder
from libs.eventstore.keyring import KeyRing, KeyRingError, fingerprint, parse_keys
from libs.eventstore.recorder import EventStore

CIPHER_KEY_VARIABLE = "THROUGHLINE_CIPHER_KEY"
OLD_CIPHER_KEYS_VARIABLE = "THROUGHLINE_CIPHER_OLD_KEYS"


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class DriverUUIDAsHex(UUIDAsHex):
    """asyncpg returns UUIDs as its own fast subclass; they reach aggregates as ids read
    back from the store and must encode like any UUID (same name, so they decode as one)."""

    type = _DriverUUID


class CompactJSONTranscoder(JSONTranscoder):
    """The library's JSON transcoder, encoding the same bytes with an encoder built once
    (see `jsonencoding`) rather than once per event."""

    def __init__(self) -> None:
        super().__init__()
        self._encode_text = compact_json_encoder(self._encode_obj)

    def encode(self, obj: Any) -> bytes:
        return self._encode_text(obj).encode("utf8")


def create_transcoder() -> JSONTranscoder:
    transcoder = CompactJSONTranscoder()
    for transcoding in (
        UUIDAsHex(),
        DriverUUIDAsHex(),
        DatetimeAsISO(),
        DecimalAsStr(),
        DateAsISO(),
    ):
        transcoder.register(transcoding)
    return transcoder


def create_mapper(
    cipher_key: str | None = None, old_cipher_keys: Sequence[str] | None = None
) -> Mapper:
    """A mapper; encrypting when `cipher_key` (or THROUGHLINE_CIPHER_KEY) holds a base64
    AES key of 16, 24 or 32 bytes (make one with `AESCipher.create_key(32)`), and reading
    events encrypted with it or with any of `old_cipher_keys` (or the comma-separated
    THROUGHLINE_CIPHER_OLD_KEYS): the keys used before it, kept after a rotation.

    Raises KeyRingError, naming the variable, for a malformed key, or for old keys
    without a current one (a store cannot go back to writing unencrypted)."""
    key = cipher_key if cipher_key is not None else os.environ.get(CIPHER_KEY_VARIABLE, "")
    old = (
        old_cipher_keys
        if old_cipher_keys is not None
        else parse_keys(os.environ.get(OLD_CIPHER_KEYS_VARIABLE, ""))
    )
    if not key:
        if old:
            raise KeyRingError(
                f"{OLD_CIPHER_KEYS_VARIABLE} is set but {CIPHER_KEY_VARIABLE} is not: old "
                f"keys only read events, and new events must be encrypted with a current key"
            )
        return Mapper(transcoder=create_transcoder())
    for where, each in [(CIPHER_KEY_VARIABLE, key)] + [
        (f"{OLD_CIPHER_KEYS_VARIABLE}, key {n}", old_key) for n, old_key in enumerate(old, 1)
    ]:
        try:
            fingerprint(each)
        except KeyRingError as error:
            raise KeyRingError(f"{where}: {error}") from None
    return Mapper(transcoder=create_transcoder(), cipher=KeyRing(key, old))


async def check_readable(store: EventStore, mapper: Mapper) -> None:
    """Refuses `mapper` for `store` when it cannot read the store's first and newest
    events. A service started with another cipher key than its events were written with
    (or none, or one where there was none) would fail every read, and would append events
    that no later reader, with either key, could read alongside the others."""
    head = await store.head_position()
    if head == 0:
        return
    for after in sorted({0, head - 1}):
        for recorded in await store.read_all(after, 1):
            try:
                mapper.to_domain_event(recorded)
            except Exception as error:
                raise UnreadableStoreError(
                    f"cannot read event {recorded.position} of store {store.schema!r} "
                    f"({type(error).__name__}: {error}). If its events were written with "
                    f"another cipher key, or none, set {CIPHER_KEY_VARIABLE} to the key "
                    f"they were written with (unset it if they were written with none); "
                    f"after a key rotation, list the earlier keys in "
                    f"{OLD_CIPHER_KEYS_VARIABLE}"
                ) from error
