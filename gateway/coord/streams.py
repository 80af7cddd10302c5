"""The shared delivery queue on Redis Streams: one stream per channel and level, each read by
one consumer group, so every process reads red (level 1) before blue (level 4).

An entry carries a delivery id only: the delivery itself is read from the store, which stays
the truth. The set `live` holds the ids of deliveries that have an entry (queued or claimed),
so the sweeper can tell which pending deliveries Redis lost. An entry read by a process stays
in the group's pending list (its claim) until the process acks it, which also deletes it
and takes its id out of `live`; a process renews its claims (`renew`) well within
`claim_idle_s`, and claims idle longer than that are another process's to take (`take_over`).
A process that died leaves its consumer in every group; `remove_dead` deletes those that hold
no entry any more.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.redis_link import RedisLink

GROUP = "gateway"
LEVELS = (1, 2, 3, 4)
FIELD = b"d"

# Renews the claims of ARGV[2] (this process) on the given entries; an entry this process no
# longer holds (taken over, or lost with Redis's data) is not touched and is returned.
_RENEW = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    table.insert(lost, ARGV[i])
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
"""

# Deletes from group ARGV[1] of KEYS[1] each consumer that holds no entry, was idle over ARGV[2]
# ms and is not among ARGV[3..]; their names. One script: a consumer found empty cannot claim
# an entry before its deletion (XGROUP DELCONSUMER drops what a consumer holds).
_REMOVE_DEAD = """
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f.pending == 0 and f.idle > tonumber(ARGV[2]) and not live[f.name] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f.name)
    table.insert(removed, f.name)
  end
end
return removed
"""


@dataclass(frozen=True)
class Entry:
    """A queue entry read or taken over: which stream, its id, the delivery it names."""

    stream: str
    id: str
    delivery_id: str


class Streams:
    """The queue's Redis commands (each raises redis.RedisError when Redis fails)."""

    def __init__(self, link: RedisLink, channels: Iterable[str]) -> None:
        self.link = link
        self.client: aioredis.Redis = link.client
        self.channels = tuple(channels)
        self.live = link.key("live")
        self._renew = self.client.register_script(_RENEW)
        self._remove_dead = self.client.register_script(_REMOVE_DEAD)

    def stream(self, channel: str, level: int) -> str:
        return self.link.key("q", channel, str(min(max(level, LEVELS[0]), LEVELS[-1])))

    def all_streams(self) -> list[str]:
        return [self.stream(c, level) for c in self.channels for level in LEVELS]

    async def ensure_groups(self) -> None:
        """Create every stream and its group (again, after Redis lost its data)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for name in self.all_streams():
                pipe.xgroup_create(name, GROUP, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result

    async def streams_ready(self) -> None:
        """`ensure_groups` unless the streams exist (a restarted Redis has none)."""
        if not await self.client.exists(self.stream(self.channels[0], LEVELS[0])):
            await self.ensure_groups()

    async def push(self, deliveries: Sequence[tuple[str, str, int]]) -> None:
        """Queue (id, channel, level) deliveries."""
        if not deliveries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for delivery_id, channel, level in deliveries:
                pipe.xadd(self.stream(channel, level), {FIELD: delivery_id})
            pipe.sadd(self.live, *(d[0] for d in deliveries))
            await pipe.execute()

    async def read(self, channel: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries of `channel`, most urgent level first; waits up to
        `block_ms` for one when none is queued."""
        me = self.link.name
        got: list[Entry] = []
        for level in LEVELS:
            name = self.stream(channel, level)
            reply = await self.client.xreadgroup(GROUP, me, {name: ">"}, count=count - len(got))
            got += _entries(reply)
            if len(got) >= count:
                return got
        if got or block_ms <= 0:
            return got
        streams: dict[Any, Any] = {self.stream(channel, level): ">" for level in LEVELS}
        reply = await self.client.xreadgroup(GROUP, me, streams, count=count, block=block_ms)
        return _entries(reply)

    async def ack(self, entries: Sequence[Entry], *, done: bool = True) -> None:
        """Ack and delete `entries`; with `done` their deliveries leave `live` (an entry that
        duplicates one still held is acked with done=False)."""
        if not entries:
            return
        by_stream: dict[str, list[str]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.id)
        async with self.client.pipeline(transaction=False) as pipe:
            for name, ids in by_stream.items():
                pipe.xack(name, GROUP, *ids)
                pipe.xdel(name, *ids)
            if done:
                pipe.srem(self.live, *(e.delivery_id for e in entries))
            await pipe.execute()

    async def mine(self) -> list[Entry]:
        """Every entry this process has claimed and not acked, in every stream (also those a
        cancelled read claimed before its reply reached the caller)."""
        out: list[Entry] = []
        for name in self.all_streams():
            try:
                pending = await self.client.xpending_range(
                    name, GROUP, min="-", max="+", count=100_000, consumername=self.link.name
                )
            except ResponseError:  # no such stream or group (Redis lost them)
                continue
            ids: list[Any] = [p["message_id"] for p in pending]
            if ids:
                claimed: Any = await self.client.xclaim(name, GROUP, self.link.name, 0, ids)
                out += [
                    Entry(name, _text(eid), _text(fields[FIELD]))
                    for eid, fields in claimed
                    if fields and FIELD in fields
                ]
        return out

    async def renew(self, stream: str, ids: Sequence[str]) -> list[str]:
        """Renew this process's claims on `ids` of `stream`; the ids it no longer holds."""
        lost: list[str] = []
        for at in range(0, len(ids), 500):
            chunk = list(ids[at : at + 500])
            reply = await self._renew(keys=[stream], args=[GROUP, self.link.name, *chunk])
            lost += [_text(i) for i in reply]
        return lost

    async def take_over(self, stream: str, idle_ms: int, count: int) -> list[Entry]:
        """Claim up to `count` entries of `stream` idle for `idle_ms` (their process died);
        entries deleted meanwhile are acked and dropped."""
        try:
            reply = await self.client.xautoclaim(
                stream, GROUP, self.link.name, idle_ms, start_id="0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:
            await self.client.xack(stream, GROUP, *deleted)
        return [
            Entry(stream, _text(eid), _text(fields[FIELD]))
            for eid, fields in claimed
            if fields and FIELD in fields
        ]

    async def remove_dead(self, idle_ms: int, live: Collection[str]) -> dict[str, list[str]]:
        """Delete from every group the consumers that hold no entry, whose XINFO `idle` is over
        `idle_ms` and whose names are not in `live`; the streams each name was deleted from.
        `idle` is the time since the consumer's last read or claim (since the last one that
        got entries, before Redis 7.2), never reset by another process: `live` keeps the
        consumers of processes that are up but have had nothing to read."""
        removed: dict[str, list[str]] = {}
        for name in self.all_streams():
            try:
                reply = await self._remove_dead(keys=[name], args=[GROUP, idle_ms, *live])
            except ResponseError as exc:
                if "NOGROUP" in str(exc) or "no such key" in str(exc):
                    continue  # Redis lost the stream: its consumers went with it
                raise
            for consumer in reply:
                removed.setdefault(_text(consumer), []).append(name)
        return removed

    async def missing(self, ids: Sequence[str]) -> set[str]:
        """The delivery ids among `ids` that have no live entry."""
        out: set[str] = set()
        for at in range(0, len(ids), 5000):
            chunk = list(ids[at : at + 5000])
            flags = await self.client.smismember(self.live, chunk)
            out.update(i for i, flag in zip(chunk, flags, strict=True) if not flag)
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP's reply as entries (RESP2: [[stream, [[id, fields]...]]...])."""
    out: list[Entry] = []
    for name, items in reply or []:
        for eid, fields in items:
            if fields and FIELD in fields:
                out.append(Entry(_text(name), _text(eid), _text(fields[FIELD])))
    return out
