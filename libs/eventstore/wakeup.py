"""Wakes a store's subscribers when new events commit: directly when this process wrote
them, through LISTEN when another process did. Subscribers also poll, so a lost
notification only delays them, and a lost LISTEN connection is replaced at once (backing
off while PostgreSQL is unreachable)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from libs.eventstore.database import session_ended

log = logging.getLogger(__name__)

_UNREACHABLE = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError)


class Wakeups:
    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._waiters: set[asyncio.Event] = set()
        self._listener: asyncpg.pool.PoolConnectionProxy | None = None
        self._lock = asyncio.Lock()
        self._relisten: asyncio.Task[None] | None = None
        self._closed = False
        self._warned = False
        self.notifications_received = 0
        self.listens = 0  # LISTEN connections opened: more than one means one was lost

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
        # The listening connection died (PostgreSQL restarted, or the backend was
        # terminated): listen again on another, and meanwhile subscribers poll.
        if self._listener is not None and not session_ended(self._listener):
            return  # an earlier listener's end, already replaced
        self._listener = None
        if not self._closed and (self._relisten is None or self._relisten.done()):
            self._relisten = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self, initial_delay: float = 0.05, max_delay: float = 5.0) -> None:
        delay = initial_delay
        while self._waiters and not self._closed:
            await self._ensure_listening()
            if self._listener is not None:
                # Whatever committed while no one listened went unannounced.
                self.wake_local()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._listener is not None and not session_ended(self._listener):
                return
            conn = None
            try:
                conn = await self._pool.acquire()
                await conn.add_listener(self._channel, self._on_notification)
                conn.add_termination_listener(self._on_termination)
            except BaseException as error:
                if conn is not None:  # its state is unknown: end it, the pool replaces it
                    with contextlib.suppress(Exception):
                        conn.terminate()
                        await self._pool.release(conn)
                if not isinstance(error, _UNREACHABLE):
                    raise
                if not self._warned:  # once per outage, not once per attempt
                    log.warning("cannot LISTEN on %s, polling only: %s", self._channel, error)
                    self._warned = True
                return
            self._listener = conn
            self._warned = False
            self.listens += 1

    async def close(self) -> None:
        self._closed = True
        if self._relisten is not None:
            self._relisten.cancel()
            # Cancelled mid-LISTEN, asyncpg may raise its own error rather than
            # CancelledError; either way the attempt is over and its connection ended.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relisten
        self.wake_local()
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._channel, self._on_notification)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
