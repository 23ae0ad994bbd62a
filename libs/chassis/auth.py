"""Bearer tokens: signed JWTs (HS256) carrying a subject and roles, and the policy that
says which roles may call which method. Health and reflection stay open; any other
method without a rule is refused, so a new RPC is closed until someone grants it."""

from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from libs.eventstore.context import Actor

SECRET_VARIABLE = "THROUGHLINE_JWT_SECRET"
DEV_SECRET_FILE = Path(__file__).resolve().parents[2] / ".data" / "jwt-secret"
ISSUER = "throughline"
AUDIENCE = "throughline"
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class InvalidTokenError(Exception):
    pass


def load_secret() -> str:
    """THROUGHLINE_JWT_SECRET, or for development a secret kept in .data/jwt-secret."""
    secret = os.environ.get(SECRET_VARIABLE)
    if secret:
        return secret
    if not DEV_SECRET_FILE.exists():
        DEV_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEV_SECRET_FILE.write_text(secrets.token_urlsafe(48))
        DEV_SECRET_FILE.chmod(0o600)
    return DEV_SECRET_FILE.read_text().strip()


class TokenVerifier:
    """Mints and verifies tokens. A verified token is remembered with its expiry, so a
    client calling many times pays for the signature check once (a token cannot change:
    any edit is a different string)."""

    CACHE_SIZE = 4096

    def __init__(self, secret: str, *, leeway_seconds: int = 30) -> None:
        self._secret = secret
        self._leeway = leeway_seconds
        self._verified: OrderedDict[str, tuple[Actor, float]] = OrderedDict()

    def mint(self, subject: str, roles: Iterable[str], *, ttl_seconds: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "roles": sorted(set(roles)),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl_seconds,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Actor:
        cached = self._verified.get(token)
        if cached is not None:
            actor, expires = cached
            if time.time() <= expires + self._leeway:
                self._verified.move_to_end(token)
                return actor
            del self._verified[token]
        actor, expires = self._verify(token)
        self._verified[token] = (actor, expires)
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return actor

    def _verify(self, token: str) -> tuple[Actor, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidTokenError(f"bearer token rejected: {error}") from error
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidTokenError("bearer token rejected: roles must be a list of strings")
        return Actor(subject=str(claims["sub"]), roles=frozenset(roles)), float(claims["exp"])


@dataclass(frozen=True)
class AccessPolicy:
    """Maps a full method name ("/pkg.Service/Method") or a service prefix
    ("/pkg.Service/") to the roles allowed to call it (any one suffices)."""

    rules: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def is_open(self, method: str) -> bool:
        return method.startswith(OPEN_METHOD_PREFIXES)

    def roles_for(self, method: str) -> frozenset[str]:
        if method in self.rules:
            return self.rules[method]
        service = method.rsplit("/", 1)[0] + "/"
        return self.rules.get(service, frozenset())

    def merged(self, other: AccessPolicy) -> AccessPolicy:
        return AccessPolicy({**self.rules, **other.rules})
