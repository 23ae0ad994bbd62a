"""Bearer tokens: verification, the cache of verified tokens, and the access policy."""

from __future__ import annotations

import time

import pytest

from libs.chassis import auth
from libs.chassis.auth import AccessPolicy, InvalidTokenError, TokenVerifier

SECRET = "unit-test-secret-long-enough-for-hs256-use"


def test_a_minted_token_verifies_to_its_subject_and_roles():
    verifier = TokenVerifier(SECRET)
    actor = verifier.verify(verifier.mint("pom:ann", ["identity.read", "feed.read"]))
    assert actor.subject == "pom:ann"
    assert actor.roles == frozenset({"identity.read", "feed.read"})


def test_a_cached_token_is_checked_again_once_it_expires(monkeypatch):
    verifier = TokenVerifier(SECRET, leeway_seconds=0)
    token = verifier.mint("pom:ann", ["identity.read"], ttl_seconds=60)
    assert verifier.verify(token).subject == "pom:ann"  # verified once, now cached
    checks = []

    def refuse(checked):
        checks.append(checked)
        raise InvalidTokenError("expired")

    monkeypatch.setattr(verifier, "_verify", refuse)
    assert verifier.verify(token).subject == "pom:ann"  # a cache hit: no new check
    assert checks == []
    later = time.time() + 120
    monkeypatch.setattr(auth.time, "time", lambda: later)
    with pytest.raises(InvalidTokenError):
        verifier.verify(token)
    assert checks == [token]


def test_an_expired_token_is_refused():
    verifier = TokenVerifier(SECRET, leeway_seconds=0)
    with pytest.raises(InvalidTokenError, match="expired"):
        verifier.verify(verifier.mint("pom:ann", [], ttl_seconds=-10))


def test_tampered_and_foreign_tokens_are_refused():
    verifier = TokenVerifier(SECRET)
    token = verifier.mint("pom:ann", ["identity.read"])
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidTokenError):
        verifier.verify(f"{header}.{payload}.{signature[:-2]}xx")
    with pytest.raises(InvalidTokenError):
        verifier.verify(TokenVerifier("some-other-secret-long-enough-for-hs").mint("x", []))


def test_the_cache_is_bounded():
    verifier = TokenVerifier(SECRET)
    verifier.CACHE_SIZE = 3
    for n in range(5):
        verifier.verify(verifier.mint(f"user{n}", []))
    assert len(verifier._verified) == 3


def test_the_policy_prefers_a_method_rule_and_closes_unknown_methods():
    policy = AccessPolicy(
        {"/pkg.Svc/": frozenset({"write"}), "/pkg.Svc/Merge": frozenset({"merge"})}
    )
    assert policy.roles_for("/pkg.Svc/Register") == {"write"}
    assert policy.roles_for("/pkg.Svc/Merge") == {"merge"}
    assert policy.roles_for("/other.Svc/Anything") == frozenset()
    assert policy.is_open("/grpc.health.v1.Health/Check")
