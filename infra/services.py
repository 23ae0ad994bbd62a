"""The services `make run` starts, in order: each is `python -m <module>` listening on its
port, with its own schema (its event store) in the shared PostgreSQL server.

THROUGHLINE_SERVICES overrides the list as "name=module:port,..." (the tests use it)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int


# The domain services join this list as they are built (sentence, location, assessment
# and the timeline follow identity).
SERVICES: list[ServiceSpec] = [
    ServiceSpec(name="identity", module="services.identity", port=50051),
]


def configured_services() -> list[ServiceSpec]:
    override = os.environ.get("THROUGHLINE_SERVICES")
    if override is None:
        return list(SERVICES)
    specs = []
    for item in filter(None, (part.strip() for part in override.split(","))):
        name, _, target = item.partition("=")
        module, _, port = target.rpartition(":")
        specs.append(ServiceSpec(name=name, module=module, port=int(port)))
    return specs
