"""One process among several: what it shares with the others and what it learns from them.

`Coordinator` applies the other processes' control messages to this one (stop a warning's
deliveries, watch a new warning's expiry and coverage deadline, follow a circuit), tells them
of this one's (a warning accepted here, a circuit opened or closed here), and runs the
backstop that holds when a message was missed: every `sweep_s` it reads the ids of the active
warnings from the store, watches those it did not know, and stops what it still sends of any
other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from gateway.coord.control import Control
from gateway.coverage import CoverageTracker
from gateway.dispatcher import Dispatcher
from gateway.ledger import LedgerDraft, Stage
from gateway.lifecycle import Lifecycle
from gateway.policies.breaker import CircuitBreaker
from gateway.redis_link import stop_tasks
from gateway.service import Service
from gateway.store import Store
from gateway.store.base import StoredWarning, WarningState

log = logging.getLogger("gateway.coord")


class Coordinator(Service):
    """An async context manager; enter it once the dispatcher, lifecycle and tracker run."""

    def __init__(
        self,
        control: Control,
        store: Store,
        dispatcher: Dispatcher,
        breaker: CircuitBreaker,
        lifecycle: Lifecycle,
        tracker: CoverageTracker,
        *,
        sweep_s: float,
    ) -> None:
        self.control = control
        self.store = store
        self.dispatcher = dispatcher
        self.breaker = breaker
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.sweep_s = sweep_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        control.handlers.update(stop=self._stop, watch=self._watch, circuit=self._circuit)

    async def start(self) -> None:
        self.breaker.listener = self._circuit_changed
        self.store.on_commit(self._committed)
        self._spawn(self._backstop())

    async def close(self) -> None:
        self.breaker.listener = None
        self._closing = True
        await stop_tasks(list(self._tasks))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- from the others -----------------------------------------------------------------

    async def _stop(self, message: Mapping[str, Any]) -> None:
        await self.dispatcher.stop(str(message["warning"]), everywhere=False)

    async def _watch(self, message: Mapping[str, Any]) -> None:
        await self._learn(str(message["warning"]))

    async def _learn(self, warning_id: str) -> None:
        """Follow `warning_id` (read from the store) unless this process follows it already."""
        if self.lifecycle.watches(warning_id):
            return
        stored = await self.store.get_warning(warning_id)
        if stored is not None:
            self._follow(stored)

    async def _circuit(self, message: Mapping[str, Any]) -> None:
        cooldown = message.get("cooldown")
        self.breaker.follow(str(message["endpoint"]), float(cooldown) if cooldown else None)

    def _follow(self, stored: StoredWarning) -> None:
        self.lifecycle.watch(stored)  # both ignore a warning they watch already
        if stored.state == WarningState.ACTIVE:
            self.tracker.watch(stored)

    # -- to the others -------------------------------------------------------------------

    def _committed(self, entries: Sequence[LedgerDraft]) -> None:
        for e in entries:
            if e.stage is Stage.AUTHORIZED:  # a warning accepted here
                self._spawn(self._send("watch", warning=e.warning_id))

    def _circuit_changed(self, endpoint_id: str, cooldown: float | None) -> None:
        self._spawn(self._send("circuit", endpoint=endpoint_id, cooldown=cooldown))

    async def _send(self, op: str, **data: Any) -> None:
        try:
            await self.control.send(op, **data)
        except RedisError as exc:
            log.warning("control message %s not sent: %s", op, exc)

    # -- the backstop --------------------------------------------------------------------

    async def _backstop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.sweep_s)
            try:
                # Ids only: every process does this every sweep_s, and reads a warning only
                # when it does not follow it yet (a `watch` message it missed).
                ids = await self.store.active_warning_ids()
                for warning_id in sorted(ids):
                    await self._learn(warning_id)
            except Exception as exc:
                log.warning("backstop skipped: %s", exc)
                continue
            for warning_id in self.dispatcher.tracked() - ids:
                log.warning("%s ended elsewhere unheard: stopping its deliveries", warning_id)
                await self.dispatcher.stop(warning_id, everywhere=False)
