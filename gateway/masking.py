"""Personal data masked in every read (design.md "Trust"): phone numbers as `138****1001`,
email local parts as `z***@example.org`; provider message ids and everything else kept.

Masking is by value, not by key, so a number inside an error text or a receipt's detail is
masked too; identifiers (warning, delivery, provider message ids, hashes) and the published
warning itself are kept. Only reads are masked: the ledger keeps what arrived (its hashes cover
it).
"""

from __future__ import annotations

import re
from typing import Any

# A mainland mobile number, optionally +86/0086-prefixed, not part of a longer digit run.
_PHONE = re.compile(r"(?<![0-9])((?:\+?86|0086)?[-\s]?)(1[3-9][0-9])([0-9]{4})([0-9]{4})(?![0-9])")
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def mask_text(text: str) -> str:
    """`text` with every mobile number and email local part masked."""
    if "@" in text:
        text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(r"\1\2****\4", text)


KEPT_KEYS = frozenset(
    {
        "id",
        "warning_id",
        "delivery_id",
        "message_id",
        "references",
        "endpoint",
        "endpoint_id",
        "body_hash",
        "hash",
        "prev_hash",
        "warning",
    }
)
"""Keys whose values are identifiers or published content, never masked."""


def mask(value: Any) -> Any:
    """A JSON-able value with `mask_text` applied to every string in it, keys included,
    except the values of `KEPT_KEYS`."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask(k): v if k in KEPT_KEYS else mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value
