"""Wakes a store's subscribers when new events commit: directly when this process wrote
them, through LISTEN when another process did. Subscribers also poll, so a lost
notification only delays them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._waiters: set[asyncio.Event] = set()
        self._listener: asyncpg.pool.PoolConnectionProxy | None = None
        self._lock = asyncio.Lock()
        self.notifications_received = 0

    async def register(self) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        await self._ensure_listening()
        return waiter

    def unregister(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    def wake_local(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def _on_notification(self, *_: object) -> None:
        self.notifications_received += 1
        self.wake_local()

    def _on_termination(self, *_: object) -> None:
        # The listening connection died; the next subscriber to register re-listens,
        # and polling covers the gap.
        self._listener = None

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            try:
                conn = await self._pool.acquire()
                await conn.add_listener(self._channel, self._on_notification)
                conn.add_termination_listener(self._on_termination)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as error:
                log.warning("cannot LISTEN on %s, polling only: %s", self._channel, error)
                return
            self._listener = conn

    async def close(self) -> None:
        self.wake_local()
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._channel, self._on_notification)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
