"""Durable storage behind one protocol; SQLite is the embedded default, PostgreSQL the store
several processes share. `memory://` names the in-memory store (gateway/store/memory.py),
which nothing durable uses: config accepts no such URL, so only code (the tests) opens it."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Store, StoredWarning
from gateway.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "StoredWarning", "is_postgres", "open_store", "sqlite_path"]


MEMORY_URL = "memory://"
"""The in-memory store, for tests: not a URL the configuration accepts."""


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel.db` → rel.db (from the working directory); `sqlite:////a.db` → /a.db."""
    return Path(url.removeprefix("sqlite:///"))


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(url: str) -> Store:
    """The store a validated URL names (or `memory://`); enter it with `async with` before use."""
    if url == MEMORY_URL:
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if is_postgres(url):
        from gateway.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(url)
    return SqliteStore(sqlite_path(url))
