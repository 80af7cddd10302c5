"""`Service`: the one lifecycle of the gateway's long-lived parts, as an async context manager.

`async with part:` awaits `part.start()` on entry and `part.close()` on leaving the block,
however it is left; an exception raised in the block is never swallowed. Both hooks do nothing
here: a part overrides the ones it needs. Imports nothing of gateway, so anything may use it.
"""

from __future__ import annotations

from typing import Self


class Service:
    """Base of a part that holds tasks or connections while open."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the part: start its tasks, connect; called once, by `async with`."""

    async def close(self) -> None:
        """Release what `start` took; called on leaving `async with`, also after a failure."""
