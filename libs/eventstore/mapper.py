"""Builds the eventsourcing library's Mapper the way every Throughline store uses it: JSON
with the types our events carry, and AES-GCM encryption of event state when a key is set."""

from __future__ import annotations

import os
from datetime import date

from asyncpg.pgproto.pgproto import UUID as _DriverUUID
from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Transcoding,
    UUIDAsHex,
)
from eventsourcing.utils import Environment

from libs.eventstore.errors import UnreadableStoreError
from libs.eventstore.recorder import EventStore

CIPHER_KEY_VARIABLE = "THROUGHLINE_CIPHER_KEY"


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


def create_transcoder() -> JSONTranscoder:
    transcoder = JSONTranscoder()
    for transcoding in (
        UUIDAsHex(),
        DriverUUIDAsHex(),
        DatetimeAsISO(),
        DecimalAsStr(),
        DateAsISO(),
    ):
        transcoder.register(transcoding)
    return transcoder


def create_mapper(cipher_key: str | None = None) -> Mapper:
    """A mapper; encrypting when `cipher_key` (or THROUGHLINE_CIPHER_KEY) holds a base64
    AES key of 16, 24 or 32 bytes (make one with `AESCipher.create_key(32)`)."""
    key = cipher_key if cipher_key is not None else os.environ.get(CIPHER_KEY_VARIABLE)
    cipher = AESCipher(Environment(env={AESCipher.CIPHER_KEY: key})) if key else None
    return Mapper(transcoder=create_transcoder(), cipher=cipher)


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
                    f"they were written with (unset it if they were written with none)"
                ) from error
