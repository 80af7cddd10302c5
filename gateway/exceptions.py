"""Every error the gateway raises on purpose, under one root.

GatewayError
├── ClientGone             the client closed its connection before its body arrived
├── ConfigError            bad or missing configuration (file, key, reason); exit code 2
├── DeliveryError          a delivery attempt failed (`reason`); the retry policy decides
│   ├── TransientDeliveryError   trying again may help (`retry_after` seconds when given)
│   └── PermanentDeliveryError   trying again will not help
│       └── EndpointGone         the endpoint asked never to be called again (HTTP 410)
├── RequestError           a request the gateway answers with an error body
│   ├── InvalidWarning     400, with every field error of the body
│   │   └── Unstorable     400, what the store cannot encode (also a ValueError); refused alone
│   ├── BodyTimeout        408, the body did not arrive within http.body_timeout_s
│   ├── PayloadTooLarge    413
│   ├── Unauthenticated    401
│   ├── Refused            403, an authority refusal with its `code` (annex 1, art. 15)
│   ├── NotFound           404
│   ├── Conflict           409
│   ├── UnsupportedMedia   415 (also `unsupported_encoding`: a Content-Encoding but identity)
│   ├── StoreUnavailable   503, the store cannot write now (with Retry-After)
│   ├── ConsoleUnavailable 503, the console's shared sessions (Redis) cannot answer now
│   └── NotImplementedYet  501, a contract feature this version does not have yet
└── LedgerCorrupt          the hash chain does not verify; names the first bad entry
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """A configuration file or environment override is wrong."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


class DeliveryError(GatewayError):
    """A delivery attempt failed; subclasses tell the retry policy what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientDeliveryError(DeliveryError):
    """Trying again may succeed; wait at least `retry_after` seconds when given."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Trying again will not help (a 4xx-like answer, a malformed address)."""


class EndpointGone(PermanentDeliveryError):
    """The endpoint asked never to be called again (HTTP 410): disable it."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request body; `field` is a dotted path."""

    field: str
    reason: str


class RequestError(GatewayError):
    """An error answered to the client as JSON `{code, message, errors?}`."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, errors: list[FieldError] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.errors = errors or []

    def headers(self) -> dict[str, str]:
        """Headers the answer carries (e.g. Retry-After)."""
        return {}

    def body(self) -> dict[str, object]:
        """The JSON error body."""
        out: dict[str, object] = {"code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = [{"field": e.field, "reason": e.reason} for e in self.errors]
        return out


class InvalidWarning(RequestError):
    status = 400
    default_code = "invalid_body"


class Unstorable(InvalidWarning, ValueError):
    """A write the store cannot encode (text that is not valid Unicode, a value JSON or SQLite
    cannot hold). Raised to its caller before the write joins a group commit, so no other
    request's write fails with it."""


class BodyTimeout(RequestError):
    """The body did not arrive in time; the answer closes the connection."""

    status = 408
    default_code = "body_timeout"


class ClientGone(GatewayError):
    """The client closed its connection mid-request: there is no one to answer."""


class PayloadTooLarge(RequestError):
    status = 413
    default_code = "payload_too_large"


class Unauthenticated(RequestError):
    status = 401
    default_code = "unauthenticated"


class Refused(RequestError):
    """An authority refusal; `code` is one of the contract's refusal codes."""

    status = 403
    default_code = "issuer_not_authorized"


class NotFound(RequestError):
    status = 404
    default_code = "not_found"


class Conflict(RequestError):
    status = 409
    default_code = "conflict"


class StoreUnavailable(RequestError):
    """503: the store cannot write now (disk full, I/O error, connection lost); nothing of the
    request was stored. The caller should retry after `retry_after` seconds."""

    status = 503
    default_code = "store_unavailable"
    retry_after: ClassVar[int] = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ConsoleUnavailable(RequestError):
    """503: the Redis that the console's sessions and sign-in limits live in cannot answer
    now; nothing was signed in or out. Retry after `retry_after` seconds."""

    status = 503
    default_code = "console_unavailable"
    retry_after: ClassVar[int] = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class LedgerCorrupt(GatewayError):
    """The ledger's hash chain breaks at entry `seq`."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq, self.reason = seq, reason
        super().__init__(f"ledger entry {seq}: {reason}")


class UnsupportedMedia(RequestError):
    status = 415
    default_code = "unsupported_media_type"


class NotImplementedYet(RequestError):
    status = 501
    default_code = "not_implemented"
