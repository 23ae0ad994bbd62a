from __future__ import annotations

import pytest

from services.identity.bootstrap import bootstrap
from tests.conftest import new_schema_name


@pytest.fixture
async def identity(pool):
    identity = await bootstrap(pool, schema=new_schema_name("identity"), cipher_key="")
    identity.start_projection()
    yield identity
    await identity.close()
