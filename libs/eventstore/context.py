"""Who is acting, and under which trace, for the command being handled. The service
chassis sets it per request; the repository stamps it on every event it saves."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    subject: str
    roles: frozenset[str] = frozenset()


current_actor: ContextVar[Actor | None] = ContextVar("current_actor", default=None)
current_trace_id: ContextVar[str | None] = ContextVar("current_trace_id", default=None)
