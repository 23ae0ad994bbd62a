"""Cipher keys rotated without rewriting events: the key ring and the mapper's wiring."""

from __future__ import annotations

from base64 import b64encode

import pytest
from eventsourcing.cryptography import AESCipher
from eventsourcing.utils import Environment

from libs.eventstore import KeyRing, KeyRingError, create_mapper
from libs.eventstore.keyring import UndecryptableError, fingerprint

OLD, NEW, OTHER = (AESCipher.create_key(32) for _ in range(3))


def library_cipher(key: str) -> AESCipher:
    return AESCipher(Environment(env={AESCipher.CIPHER_KEY: key}))


def test_a_ring_encrypts_with_its_current_key_as_the_library_cipher_does():
    ciphertext = KeyRing(NEW, [OLD]).encrypt(b"Zo\xc3\xab O'Brien")
    assert library_cipher(NEW).decrypt(ciphertext) == b"Zo\xc3\xab O'Brien"
    with pytest.raises(ValueError):
        library_cipher(OLD).decrypt(ciphertext)


def test_a_ring_reads_what_each_of_its_keys_encrypted_and_says_which():
    ring = KeyRing(NEW, [OLD])
    written_before = library_cipher(OLD).encrypt(b"before the rotation")
    written_after = ring.encrypt(b"after it")
    assert ring.decrypt(written_before) == b"before the rotation"
    assert ring.decrypt_with_key(written_before) == (fingerprint(OLD), b"before the rotation")
    assert ring.decrypt_with_key(written_after) == (fingerprint(NEW), b"after it")
    assert ring.fingerprints == (fingerprint(NEW), fingerprint(OLD))


def test_a_ring_without_the_key_refuses_naming_its_keys_by_fingerprint_only():
    ciphertext = library_cipher(OTHER).encrypt(b"secret")
    with pytest.raises(UndecryptableError) as refused:
        KeyRing(NEW, [OLD]).decrypt(ciphertext)
    message = str(refused.value)
    assert fingerprint(NEW) in message and fingerprint(OLD) in message
    assert NEW not in message and OLD not in message
    with pytest.raises(UndecryptableError):
        KeyRing(NEW).decrypt(ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))  # tampered


def test_a_key_given_twice_is_tried_once_and_the_current_key_stays_first():
    assert KeyRing(NEW, [OLD, NEW, OLD]).fingerprints == (fingerprint(NEW), fingerprint(OLD))
    assert KeyRing(f" {NEW}\n").fingerprints == (fingerprint(NEW),)


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("not base64!", "must be base64"),
        (b64encode(b"x" * 20).decode(), "16, 24 or 32 bytes once decoded, not 20"),
        ("", "16, 24 or 32 bytes once decoded, not 0"),
    ],
)
def test_a_malformed_key_is_refused_with_the_rule(key, rule):
    with pytest.raises(KeyRingError, match=rule):
        KeyRing(key)


def test_the_mapper_takes_its_keys_from_the_environment(monkeypatch):
    written = create_mapper(cipher_key=OLD, old_cipher_keys=[]).cipher.encrypt(b"facts")
    monkeypatch.setenv("THROUGHLINE_CIPHER_KEY", NEW)
    monkeypatch.setenv("THROUGHLINE_CIPHER_OLD_KEYS", f"{OTHER}, {OLD} ,")
    ring = create_mapper().cipher
    assert ring.fingerprints == (fingerprint(NEW), fingerprint(OTHER), fingerprint(OLD))
    assert ring.decrypt(written) == b"facts"
    monkeypatch.delenv("THROUGHLINE_CIPHER_OLD_KEYS")
    with pytest.raises(UndecryptableError):
        create_mapper().cipher.decrypt(written)


def test_the_mapper_names_the_variable_holding_a_bad_key(monkeypatch):
    monkeypatch.setenv("THROUGHLINE_CIPHER_KEY", NEW)
    monkeypatch.setenv("THROUGHLINE_CIPHER_OLD_KEYS", f"{OLD},not base64!")
    with pytest.raises(KeyRingError, match=r"THROUGHLINE_CIPHER_OLD_KEYS, key 2: .*base64"):
        create_mapper()
    monkeypatch.setenv("THROUGHLINE_CIPHER_KEY", "c2hvcnQ=")
    with pytest.raises(KeyRingError, match=r"^THROUGHLINE_CIPHER_KEY: .*not 5 "):
        create_mapper()


def test_old_keys_without_a_current_key_are_refused(monkeypatch):
    """A store that was encrypted cannot go back to writing facts in the clear."""
    monkeypatch.delenv("THROUGHLINE_CIPHER_KEY", raising=False)
    monkeypatch.setenv("THROUGHLINE_CIPHER_OLD_KEYS", OLD)
    with pytest.raises(KeyRingError, match="THROUGHLINE_CIPHER_OLD_KEYS is set but"):
        create_mapper()
    monkeypatch.delenv("THROUGHLINE_CIPHER_OLD_KEYS")
    assert create_mapper().cipher is None
