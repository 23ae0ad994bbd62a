"""Errors domain and application code raise. They carry what a caller needs to fix the
request and import nothing from gRPC: the service chassis maps them to status codes."""

from __future__ import annotations

from datetime import datetime


class DomainError(Exception):
    """Base class for errors the caller can act on."""


class InvalidFieldError(DomainError):
    """One or more fields break a rule. Each violation names the field and the rule."""

    def __init__(self, *violations: tuple[str, str]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in self.violations))


class NotFoundError(DomainError):
    """Nothing by that key; with `known_at`, nothing by that key as the record stood then."""

    def __init__(self, kind: str, key: str, *, known_at: datetime | None = None) -> None:
        self.kind = kind
        self.key = key
        self.known_at = known_at
        if known_at is None:
            super().__init__(f"{kind} {key} was not found")
        else:
            super().__init__(f"{kind} {key} was not on the record at {known_at.isoformat()}")


class AlreadyExistsError(DomainError):
    def __init__(self, kind: str, key: str, holder: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.holder = holder
        held = f" (held by {holder})" if holder else ""
        super().__init__(f"{kind} {key} already exists{held}")


class RuleViolatedError(DomainError):
    """A domain rule forbids the command in the record's current state."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)
