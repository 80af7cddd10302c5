"""API clients, their scopes and tokens (gateway.yaml `clients`, tokens from
`GATEWAY_TOKEN_<NAME>`); design.md "Trust: who may do what"."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from gateway.exceptions import Refused, Unauthenticated

log = logging.getLogger("gateway.clients")

TOKEN_ENV_PREFIX = "GATEWAY_TOKEN_"


class Scope(StrEnum):
    """What a client may do (design.md's scope table)."""

    SUBMIT = "submit"
    """POST /v1/warnings: alerts, and updates/cancels of warnings it may act on."""
    CONFIRM = "confirm"
    """Manual confirmations on POST /v1/receipts, for townships of the client's districts."""
    READ = "read"
    """Every GET under /v1, /metrics and the console."""
    SMS_CALLBACKS = "sms_callbacks"
    """SMS provider delivery reports on POST /v1/receipts."""
    PARTNER_ACKS = "partner_acks"
    """Acks of deliveries to the partners listed in the client's `partners`."""


DEFAULT_SCOPES = frozenset({Scope.SUBMIT, Scope.CONFIRM, Scope.READ})
"""A client without `scopes`: the platform, which relays the township centres' confirmations."""


@dataclass(frozen=True)
class Client:
    """A caller of the API. `districts` empty means every district."""

    name: str
    token: str | None = field(default=None, repr=False)
    districts: frozenset[str] = frozenset()
    temporary_release: bool = False
    scopes: frozenset[Scope] = DEFAULT_SCOPES
    partners: frozenset[str] = frozenset()

    def require(self, scope: Scope) -> None:
        """Refused (403 `scope_required`) unless the client has `scope`."""
        if scope not in self.scopes:
            raise Refused(
                f"client {self.name} lacks the {scope.value} scope",
                code="scope_required",
            )

    def allows_district(self, district: str) -> bool:
        """Whether the client may act for `district` (a 6-digit code)."""
        return not self.districts or district in self.districts


def token_env(name: str) -> str:
    """The environment variable that holds client `name`'s token."""
    return TOKEN_ENV_PREFIX + name.upper().replace("-", "_")


def with_tokens(clients: Iterable[Client], env: Mapping[str, str]) -> list[Client]:
    """`clients` with their tokens from `env`; a client without one cannot authenticate."""
    return [replace(c, token=env.get(token_env(c.name)) or None) for c in clients]


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
        """The client whose token is exactly the one in `Authorization: Bearer <token>`.

        The scheme is case-insensitive (RFC 9110); the token is taken as sent: no padding,
        no second space, nothing trimmed.
        """
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("an Authorization: Bearer <token> header is required")
        given = token.encode("utf-8", "surrogateescape")
        found: Client | None = None
        # Compare against every client so the time taken does not tell which one nearly matched.
        for client, expected in self._clients:
            if hmac.compare_digest(given, expected):
                found = client
        if found is None:
            raise Unauthenticated("unknown token")
        return found

    def named(self, name: str) -> Client | None:
        """The client called `name` that has a token, if any (a session names its client)."""
        return next((c for c, _ in self._clients if c.name == name), None)
