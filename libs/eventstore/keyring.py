"""Encryption keys that can be rotated without rewriting a single event.

Events are never rewritten, so an event encrypted with a key must stay readable with that
key for as long as the record is kept. Rotating therefore means: encrypt from now on with
a new key, and keep the earlier keys for reading. `KeyRing` is the eventsourcing
library's `Cipher` over such a set: it encrypts with the current key exactly as the
library's `AESCipher` does (AES-GCM, nonce and tag in front), and decrypts with whichever
of its keys authenticates the ciphertext. The ciphertext names no key: GCM's tag tells a
wrong key apart, so a ciphertext written before any rotation reads unchanged.

Keys are named to people by a fingerprint (the first 12 hex digits of the key's SHA-256),
never by the key itself. `key_usage` reads a whole store and says which key each event
needs, so an operator can tell that every event is readable with the keys configured.
"""

from __future__ import annotations

import binascii
import hashlib
from base64 import b64decode
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import Cipher, Mapper
from eventsourcing.utils import Environment

from libs.eventstore.recorder import EventStore

UNENCRYPTED = "none"  # what `key_usage` reports for events stored without encryption
EXAMPLES = 10  # unreadable positions listed


class KeyRingError(ValueError):
    """A key that is not a base64 AES key of 16, 24 or 32 bytes, or keys that cannot be
    used together (old keys without a current one)."""


class UndecryptableError(ValueError):
    """No key in the ring decrypts the ciphertext: written with a key the ring lacks, or
    damaged."""


def fingerprint(key: str) -> str:
    """How a key is named in messages and reports: never the key itself."""
    return hashlib.sha256(_key_bytes(key)).hexdigest()[:12]


def _key_bytes(key: str) -> bytes:
    try:
        raw = b64decode(key.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyRingError("a cipher key must be base64 (AESCipher.create_key(32))") from None
    if len(raw) not in AESCipher.KEY_SIZES:
        raise KeyRingError(
            f"a cipher key must be 16, 24 or 32 bytes once decoded, not {len(raw)} "
            f"(make one with AESCipher.create_key(32))"
        )
    return raw


class KeyRing(Cipher):
    """Encrypts with `current`; decrypts with `current` or any of `previous`, tried in
    the order given after `current` (most recently retired first is the natural order)."""

    def __init__(self, current: str, previous: Sequence[str] = ()) -> None:  # type: ignore[override]
        # A key given twice is kept once: trying it twice would find nothing more.
        ring: dict[str, str] = {}
        for key in (current, *previous):
            ring.setdefault(fingerprint(key), key.strip())
        self.fingerprints = tuple(ring)
        self._ciphers = [
            AESCipher(Environment(env={AESCipher.CIPHER_KEY: ring[name]}))
            for name in self.fingerprints
        ]

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._ciphers[0].encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self.decrypt_with_key(ciphertext)[1]

    def decrypt_with_key(self, ciphertext: bytes) -> tuple[str, bytes]:
        """The fingerprint of the key that decrypts `ciphertext`, and its plaintext."""
        for name, cipher in zip(self.fingerprints, self._ciphers, strict=True):
            try:
                return name, cipher.decrypt(ciphertext)
            except ValueError:  # another key's tag, or damaged: try the next key
                continue
        raise UndecryptableError(
            f"none of the cipher keys given ({', '.join(self.fingerprints)}) decrypts it"
        )


def parse_keys(text: str) -> list[str]:
    """A comma-separated list of keys, blanks ignored."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class KeyUse:
    """How many events one key (by fingerprint, or `UNENCRYPTED`) encrypted, and where."""

    key: str
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None

    def count(self, position: int) -> None:
        self.events += 1
        if self.first_position is None:
            self.first_position = position
        self.last_position = position


@dataclass
class KeyUsage:
    """Every event of a store by the key it needs: one entry per key the mapper holds
    (current first, unused keys with no events), and the events none of them reads."""

    head_position: int
    keys: list[KeyUse]
    unreadable: int = 0
    unreadable_examples: list[int] = field(default_factory=list)

    @property
    def readable(self) -> bool:
        return self.unreadable == 0


async def key_usage(
    store: EventStore,
    mapper: Mapper,
    *,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> KeyUsage:
    """Reads every event of `store` up to its head now and finds the key that decrypts
    it with `mapper`'s cipher (a `KeyRing`), or, with no cipher, whether it is stored
    unencrypted. Nothing is written."""
    ring = mapper.cipher
    if ring is not None and not isinstance(ring, KeyRing):
        raise TypeError(f"key_usage needs a mapper built with a KeyRing, not {ring!r}")
    head = await store.head_position()
    uses = {name: KeyUse(name) for name in (ring.fingerprints if ring else (UNENCRYPTED,))}
    usage = KeyUsage(head, list(uses.values()))
    after = 0
    while after < head:
        batch = await store.read_all(after, batch_size, upto=head)
        if not batch:
            break
        for recorded in batch:
            try:
                if ring is None:
                    mapper.transcoder.decode(recorded.state)
                    name = UNENCRYPTED
                else:
                    name = ring.decrypt_with_key(recorded.state)[0]
            except ValueError:  # UndecryptableError, or encrypted bytes that are not JSON
                usage.unreadable += 1
                if len(usage.unreadable_examples) < EXAMPLES:
                    usage.unreadable_examples.append(recorded.position)
                continue
            uses[name].count(recorded.position)
        after = batch[-1].position
        if progress:
            progress(after, head)
    return usage
