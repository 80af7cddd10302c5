"""The endpoint book cached between starts, so a restart does not parse endpoints.yaml again.

Parsing and validating 100,000 endpoints takes seconds; reading them back from the cache a
fraction of that. The cache is one JSON file, `endpoint-book.json` in the cache directory: a
header line `{"format", "key", "body_sha256"}` and a body of columns, one per field of
`Endpoint` but its secret (a webhook keeps the name of its `secret_env`; the secret is read
from the environment at every start). `key` is the sha256 of `FORMAT`, endpoints.yaml,
townships.yaml and the source of the modules that validate them, so an edited file or a
changed rule makes the cache stale. A stale, truncated, corrupt or unreadable cache is never
used: the book is built from endpoints.yaml again (whose errors are the ConfigErrors they
always were) and the cache rewritten atomically (a temporary file renamed over it). A cache
that cannot be written (a read-only directory) only costs the next start its speed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import operator
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gateway import endpoints as endpoints_module
from gateway import townships as townships_module
from gateway import values as values_module
from gateway import yamlfile as yamlfile_module
from gateway.channel_registry import CHANNELS
from gateway.channel_registry import Registry as ChannelRegistry
from gateway.channels import spec as spec_module
from gateway.endpoints import EndpointBook, Shared, read_endpoints, with_secrets
from gateway.townships import Registry
from gateway.values import Endpoint
from gateway.yamlfile import collector_paused

log = logging.getLogger("gateway.book_cache")

FORMAT = 1
"""Bump when the rows change meaning (the key covers the validating code's source too)."""
FILE_NAME = "endpoint-book.json"
_VALIDATING = (endpoints_module, values_module, townships_module, yamlfile_module, spec_module)


class CacheUnusable(Exception):
    """Why a cache file cannot be used (stale, or not what `write` writes)."""


def cache_key(
    endpoints_path: Path, townships_path: Path, channels: ChannelRegistry = CHANNELS
) -> str:
    """The sha256 that a cache built from these files, by this code and these channels (whose
    modules read their township entries), carries."""
    digest = hashlib.sha256(f"endpoint-book {FORMAT} {','.join(channels)}\n".encode())
    for path in (endpoints_path, townships_path):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    modules = {*_VALIDATING, *(sys.modules[s.build.__module__] for s in channels.values())}
    for source in sorted(str(m.__file__) for m in modules):
        digest.update(hashlib.sha256(Path(source).read_bytes()).digest())
    return digest.hexdigest()


def load_book(
    endpoints_path: Path,
    townships_path: Path,
    registry: Registry,
    env: Mapping[str, str],
    cache_dir: Path | None,
    channels: ChannelRegistry = CHANNELS,
) -> EndpointBook:
    """The book of endpoints.yaml, from the cache in `cache_dir` when it is valid for these
    files, else from the file (then cached); no cache at all when `cache_dir` is None."""
    if cache_dir is None:
        return EndpointBook.load(endpoints_path, registry, env, channels)
    try:
        key = cache_key(endpoints_path, townships_path, channels)
    except OSError:  # endpoints.yaml unreadable: the loader names it as it always did
        return EndpointBook.load(endpoints_path, registry, env, channels)
    cache = cache_dir / FILE_NAME
    found = _cached(cache, key)
    if found is None:
        found = read_endpoints(endpoints_path, registry, channels)
        try:
            write(cache, key, found)
        except OSError as exc:
            log.warning("cannot write the endpoint book cache %s: %s", cache, exc)
    return EndpointBook(with_secrets(found, env))


def _cached(cache: Path, key: str) -> list[Endpoint] | None:
    """The endpoints in `cache` when it is usable for `key`; None (and why, logged) if not."""
    try:
        return read(cache, key)
    except FileNotFoundError:
        log.info("no endpoint book cache %s: reading endpoints.yaml", cache)
    except CacheUnusable as exc:
        log.info("endpoint book cache %s not used (%s): reading endpoints.yaml", cache, exc)
    except OSError as exc:
        log.warning("endpoint book cache %s unreadable (%s): reading endpoints.yaml", cache, exc)
    return None


def write(path: Path, key: str, endpoints: Sequence[Endpoint]) -> None:
    """Write the cache of `endpoints` (built for `key`, without secrets) to `path` atomically."""
    data = json.dumps(encode(endpoints), ensure_ascii=False, separators=(",", ":")).encode()
    header = {"format": FORMAT, "key": key, "body_sha256": hashlib.sha256(data).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(json.dumps(header).encode() + b"\n" + data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path, key: str) -> list[Endpoint]:
    """The endpoints cached in `path` for `key`; CacheUnusable unless it is what `write`
    wrote for `key` (OSError when it cannot be read)."""
    raw = path.read_bytes()
    head, newline, data = raw.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise CacheUnusable("no header") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CacheUnusable("another format")
    if header.get("key") != key:
        raise CacheUnusable("stale: endpoints.yaml, townships.yaml or the gateway changed")
    if not newline or header.get("body_sha256") != hashlib.sha256(data).hexdigest():
        raise CacheUnusable("corrupt: its body does not match its checksum")
    with collector_paused():
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise CacheUnusable("corrupt: not JSON") from exc
        return decode(body)


@dataclass(frozen=True)
class _Column:
    """How one Endpoint field is cached: its JSON types (of the elements, for a container),
    the container it is rebuilt as, and whether its distinct values are kept in a table."""

    types: frozenset[type]
    container: type[tuple[Any, ...]] | type[frozenset[Any]] | None = None
    table: bool = False


_STR: frozenset[type] = frozenset({str})
_OPTIONAL_STR: frozenset[type] = frozenset({str, type(None)})
COLUMNS = {
    "id": _Column(_STR),
    "channel": _Column(_STR, table=True),
    "townships": _Column(_STR, tuple, table=True),
    "target": _Column(_STR),
    "recipients": _Column(_STR, tuple),
    "devices": _Column(_STR, tuple),
    "secret_env": _Column(_OPTIONAL_STR, table=True),
    "timeout": _Column(frozenset((float, type(None))), table=True),
    "audiences": _Column(_STR, frozenset, table=True),
    "levels": _Column(frozenset({int}), frozenset, table=True),
    "format": _Column(_STR, table=True),
    "covers_townships": _Column(frozenset({bool}), table=True),
    "escalation_for": _Column(_OPTIONAL_STR),
}
"""Every field of Endpoint but `secret`, which is never cached."""
_NOT_CACHED = "secret"


def encode(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The JSON body of a cache of `endpoints`: one column per field, the repeated values of a
    `table` column as a table of distinct values and an index into it."""
    if any(e.secret is not None for e in endpoints):
        raise ValueError("cache the book before its secrets are read")
    body: dict[str, Any] = {"count": len(endpoints)}
    with collector_paused():
        for name, column in COLUMNS.items():
            values = list(map(operator.attrgetter(name), endpoints))
            if not column.table:
                body[name] = {"values": list(map(_plain, values))}
                continue
            table: dict[object, int] = {}
            index = [table.setdefault(v, len(table)) for v in values]
            body[name] = {"table": list(map(_plain, table)), "index": index}
    return body


def _plain(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    return list(value) if isinstance(value, tuple) else value


def decode(body: object) -> list[Endpoint]:
    """The endpoints of a cache's body; CacheUnusable unless every column has the count and
    the types that `encode` gives it."""
    if not isinstance(body, dict) or type(body.get("count")) is not int:
        raise CacheUnusable("corrupt: no count")
    count: int = body["count"]
    share = Shared()
    columns: list[Iterable[object]] = []
    for f in fields(Endpoint):
        if f.name == _NOT_CACHED:
            columns.append(itertools.repeat(None, count))
            continue
        column = COLUMNS.get(f.name)
        if column is None:
            raise CacheUnusable(f"no column for {f.name}")
        columns.append(_decoded(f.name, body.get(f.name), column, count, share))
    return list(map(Endpoint, *columns))


def _decoded(name: str, raw: object, column: _Column, count: int, share: Shared) -> list[object]:
    """The values of one column, checked and rebuilt as Endpoint holds them."""
    if not isinstance(raw, dict):
        raise CacheUnusable(f"corrupt: no column {name}")
    if not column.table:
        values = raw.get("values")
        if not isinstance(values, list) or len(values) != count:
            raise CacheUnusable(f"corrupt: column {name} has not {count} values")
        return _rebuilt(name, values, column, share)
    table, index = raw.get("table"), raw.get("index")
    if not isinstance(table, list) or not isinstance(index, list) or len(index) != count:
        raise CacheUnusable(f"corrupt: column {name} has not {count} values")
    if index and (set(map(type, index)) != {int} or min(index) < 0 or max(index) >= len(table)):
        raise CacheUnusable(f"corrupt: column {name} indexes past its table")
    return list(map(_rebuilt(name, table, column, share).__getitem__, index))


def _rebuilt(name: str, values: list[Any], column: _Column, share: Shared) -> list[object]:
    if column.container is None:
        if not set(map(type, values)) <= column.types:
            raise CacheUnusable(f"corrupt: column {name} holds values of other types")
        return (
            [share(sys.intern(v)) if type(v) is str else v for v in values]
            if column.table
            else values
        )
    elements = itertools.chain.from_iterable(values)
    if not set(map(type, values)) <= {list} or not set(map(type, elements)) <= column.types:
        raise CacheUnusable(f"corrupt: column {name} holds values of other types")
    rebuilt: list[Any] = list(map(column.container, values))
    return [share(v) for v in rebuilt] if column.table else rebuilt
