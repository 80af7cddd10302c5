"""CAP 1.2 (OASIS Common Alerting Protocol) out: design.md, "Warning", CAP paragraph.

`document_to_cap` writes a stored warning as CAP 1.2 in the profile of `gateway.cap.profile`
that validates against the OASIS schema (`gateway.cap.read.validate_cap`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from gateway.cap.profile import (
    CAP_CATEGORY_BY_GATEWAY,
    CAP_CATEGORY_BY_KEYWORD,
    CAP_NS,
    CAP_TOKEN,
    COLOUR_BY_LEVEL,
    CPEAS,
    MSG_TYPE_OUT,
    NOT_XML,
    NS,
    ROOT,
    SEVERITY_BY_LEVEL,
    STATUSES,
    TEXT_PARAMETERS,
)
from gateway.townships import Registry


def cap_category(category: str | None, hazard: str) -> str:
    """The CAP <category> of a gateway hazard (see `CAP_CATEGORY_BY_KEYWORD`); default Other."""
    if category in CAP_CATEGORY_BY_GATEWAY:
        return CAP_CATEGORY_BY_GATEWAY[category]
    for keywords, cap in CAP_CATEGORY_BY_KEYWORD:
        if any(k in hazard for k in keywords):
            return cap
    return "Other"


def cap_time(value: str | datetime) -> str:
    """A timestamp in CAP's dateTime form: seconds, numeric offset, UTC as `-00:00` (CAP 3.3.2).

    Fractional seconds are cut off (an expiry moves earlier, never later).
    """
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(f"timestamp {value} has no UTC offset")
    minutes = int(offset / timedelta(minutes=1))
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{dt.replace(microsecond=0, tzinfo=None).isoformat()}{sign}{hours:02d}:{mins:02d}"


def _clean(text: str) -> str:
    return NOT_XML.sub("", text)


def _add(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    child = ET.SubElement(parent, NS + name)
    if text is not None:
        child.text = _clean(text)
    return child


def _cap_token(value: str, what: str) -> str:
    if not CAP_TOKEN.fullmatch(value):
        raise ValueError(f"CAP {what} {value!r} must not contain spaces, commas, '<' or '&'")
    return value


def document_to_cap(
    doc: Mapping[str, Any],
    *,
    sender: str,
    status: str = "Actual",
    referenced_sent_at: str | None = None,
    registry: Registry | None = None,
) -> bytes:
    """A stored warning document (`gateway.model.as_json_dict`) as CAP 1.2 XML, UTF-8.

    `sender` is the gateway's configured CAP sender id. The reference triple of an update or
    cancel is `sender,identifier,sent` of the REFERENCED message (CAP 1.2, 3.2.1): the caller
    passes its sent_at as `referenced_sent_at` (the referenced warning was emitted by this
    gateway, so its sender is `sender`); without it the document's own sent_at stands in.
    `registry` names the codes in <areaDesc> when the document's area has no description.
    Raises ValueError for a sender, identifier or status that CAP forbids.
    """
    if status not in STATUSES:
        raise ValueError(f"CAP status {status!r} is not one of {', '.join(STATUSES)}")
    sent = cap_time(doc["sent_at"])
    alert = ET.Element(NS + ROOT)
    _add(alert, "identifier", _cap_token(doc["id"], "identifier"))
    _add(alert, "sender", _cap_token(sender, "sender"))
    _add(alert, "sent", sent)
    _add(alert, "status", status)
    _add(alert, "msgType", MSG_TYPE_OUT[doc.get("msg_type", "alert")])
    _add(alert, "scope", "Public")
    if doc.get("references"):
        ref = _cap_token(doc["references"], "reference")
        _add(alert, "references", f"{sender},{ref},{cap_time(referenced_sent_at or sent)}")
    _info_out(_add(alert, "info"), doc, registry)
    ET.indent(alert)
    body = ET.tostring(alert, encoding="unicode", default_namespace=CAP_NS)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'.encode()


def _info_out(info: ET.Element, doc: Mapping[str, Any], registry: Registry | None) -> None:
    # Element order is fixed by the schema's sequence.
    _add(info, "language", "zh-CN")
    _add(info, "category", cap_category(doc.get("category"), doc["hazard"]))
    _add(info, "event", doc["hazard"])
    _add(info, "urgency", "Unknown")
    _add(info, "severity", SEVERITY_BY_LEVEL[doc["level"]])
    _add(info, "certainty", "Unknown")
    if doc.get("onset_at"):
        _add(info, "onset", cap_time(doc["onset_at"]))
    _add(info, "expires", cap_time(doc["expires_at"]))
    _add(info, "senderName", doc["issuer"]["unit"])
    _add(info, "headline", doc["title"])
    _add(info, "description", doc["content"])
    if doc.get("measures"):
        _add(info, "instruction", doc["measures"])
    if doc.get("contact_phone"):
        _add(info, "contact", doc["contact_phone"])
    for name, value in _parameters_out(doc):
        param = _add(info, "parameter")
        _add(param, "valueName", name)
        _add(param, "value", value)
    _area_out(_add(info, "area"), doc["area"], registry)


def _parameters_out(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    issuer = doc["issuer"]
    approval = doc.get("approval") or {}
    higher = approval.get("higher_approval") or {}
    joint = [j["role"] if isinstance(j, Mapping) else j for j in doc.get("joint_issuers") or []]
    times = {"approved_at", "higher_approval_at"}
    pairs: list[tuple[str, Any]] = [
        ("issuer_role", issuer.get("role")),
        ("issuer_district", issuer.get("district")),
        ("joint_issuers", ",".join(joint)),
        ("approved_by", approval.get("approved_by")),
        ("approved_at", approval.get("approved_at")),
        ("approval_ref", approval.get("ref")),
        ("higher_approval_unit", higher.get("unit")),
        ("higher_approval_at", higher.get("approved_at")),
        ("higher_approval_ref", higher.get("ref")),
        ("level_colour", COLOUR_BY_LEVEL[doc["level"]]),
        ("channels", ",".join(doc.get("channels") or [])),
        *((name, doc.get(key)) for name, key in TEXT_PARAMETERS.items()),
    ]
    return [(n, cap_time(v) if n in times else str(v)) for n, v in pairs if v]


def _area_out(area: ET.Element, codes: Mapping[str, Any], registry: Registry | None) -> None:
    districts: list[str] = list(codes.get("districts") or [])
    townships: list[str] = list(codes.get("townships") or [])
    description = codes.get("description")
    if not description:
        names = [registry.name(c) if registry else c for c in (*districts, *townships)]
        description = "、".join(names)
    _add(area, "areaDesc", description)
    for code in (*districts, *townships):
        geocode = _add(area, "geocode")
        _add(geocode, "valueName", CPEAS)
        _add(geocode, "value", code.ljust(12, "0"))


# ──────────────────────────────────────── validation ────────────────────────────────────────
