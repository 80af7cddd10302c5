"""API clients and their tokens (gateway.yaml `clients`, tokens from `GATEWAY_TOKEN_<NAME>`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.exceptions import Unauthenticated

log = logging.getLogger("gateway.clients")

TOKEN_ENV_PREFIX = "GATEWAY_TOKEN_"


@dataclass(frozen=True)
class Client:
    """A caller of the API. `districts` empty means issuers of any district."""

    name: str
    token: str | None = field(repr=False)
    districts: frozenset[str] = frozenset()
    temporary_release: bool = False


def token_env(name: str) -> str:
    """The environment variable that holds client `name`'s token."""
    return TOKEN_ENV_PREFIX + name.upper().replace("-", "_")


def with_tokens(clients: Iterable[Client], env: Mapping[str, str]) -> list[Client]:
    """`clients` with their tokens from `env`; a client without one cannot authenticate."""
    return [
        Client(c.name, env.get(token_env(c.name)) or None, c.districts, c.temporary_release)
        for c in clients
    ]


def warn_tokenless(clients: Iterable[Client]) -> None:
    """Log each client that has no token and so cannot call the API."""
    for c in clients:
        if not c.token:
            log.warning(
                "client %s has no token (%s unset): it cannot call the API",
                c.name,
                token_env(c.name),
            )


class Authenticator:
    """Maps a bearer token to its client, comparing in constant time."""

    def __init__(self, clients: Iterable[Client]) -> None:
        self._clients = [(c, c.token.encode()) for c in clients if c.token]

    def authenticate(self, header: str | None) -> Client:
        """The client whose token is in an `Authorization: Bearer <token>` header."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("an Authorization: Bearer <token> header is required")
        given = token.strip().encode()
        found: Client | None = None
        # Compare against every client so the time taken does not tell which one nearly matched.
        for client, expected in self._clients:
            if hmac.compare_digest(given, expected):
                found = client
        if found is None:
            raise Unauthenticated("unknown token")
        return found
