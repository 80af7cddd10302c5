"""CAP 1.2 (OASIS Common Alerting Protocol) in and out: design.md, "Warning", CAP paragraph.

`cap_to_document` reads an untrusted CAP alert and maps it to the gateway's JSON warning document,
the same dict a JSON client posts; the caller validates it like any JSON body. Only the shape of
the CAP message is checked here (code `invalid_cap`); field values are the model's business.
`document_to_cap` writes a stored warning as CAP 1.2 that validates against the OASIS schema
shipped in `gateway/schemas/CAP-v1.2.xsd`; `validate_cap` reports what the schema rejects.

The profile is the one China's national warning system uses: a `zh-CN` info block (an `en-US`
block may come with it), urgency and certainty `Unknown`, severity for the colour level, and
`CPEAS Geographic Code` geocodes of 12 digits (`XXXXXX000000` a district, `XXXXXXXXX000` a
township). What CAP has no element for travels in `<parameter>` entries named like the JSON
fields (`PARAMETERS`).

Safety: XML is parsed by defusedxml with any DOCTYPE refused, so no DTD is loaded, no entity is
declared or expanded and nothing is fetched (billion laughs, XXE); the size is checked first.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as defused_et
import xmlschema
from defusedxml import DefusedXmlException, DTDForbidden

from gateway.exceptions import FieldError, InvalidWarning, PayloadTooLarge
from gateway.text import unicode_errors
from gateway.townships import Registry, normalise

DEFAULT_CAP_SENDER = "cq-warning-gateway@example.org"
CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CPEAS = "CPEAS Geographic Code"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "CAP-v1.2.xsd"
INVALID_CAP = "invalid_cap"

_NS = f"{{{CAP_NS}}}"
_ROOT = "alert"
_LEVEL_BY_SEVERITY = {"Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4}
_SEVERITY_BY_LEVEL = {level: severity for severity, level in _LEVEL_BY_SEVERITY.items()}
_COLOUR_BY_LEVEL = {1: "red", 2: "orange", 3: "yellow", 4: "blue"}
_LEVEL_BY_COLOUR = {
    **{colour: level for level, colour in _COLOUR_BY_LEVEL.items()},
    "红色": 1,
    "橙色": 2,
    "黄色": 3,
    "蓝色": 4,
}
_MSG_TYPE_IN = {"Alert": "alert", "Update": "update", "Cancel": "cancel"}
_MSG_TYPE_OUT = {v: k for k, v in _MSG_TYPE_IN.items()}
_STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
# CAP 1.2, 3.2.1: identifier and sender must not hold spaces, commas or the restricted characters
# '<' and '&'.
_CAP_TOKEN = re.compile(r"[^\s,<&]+")
_PHONE = re.compile(r"[0-9+()\- ]{3,40}")
_LIST_SEP = re.compile(r"\s*[,，]\s*")
_CHANNEL_SEP = re.compile(r"[\s,，]+")
# Characters XML 1.0 cannot carry at all (C0 controls other than tab, LF, CR; U+FFFE, U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

# <parameter> valueName → JSON field, for the plain text fields.
_TEXT_PARAMETERS = {
    "category": "category",
    "audience": "audience",
    "development": "development",
    "reason": "reason",
    "impact": "impact",
}
PARAMETERS = (
    "issuer_role",
    "issuer_district",
    "joint_issuers",
    "approved_by",
    "approved_at",
    "approval_ref",
    "higher_approval_unit",
    "higher_approval_at",
    "higher_approval_ref",
    "level_colour",
    "channels",
    *_TEXT_PARAMETERS,
)
"""The `<parameter>` valueNames this module reads and writes; others are ignored on input."""

# The gateway's hazards (annex 1) → CAP <category>. public_health is Health and social_safety is
# Security whatever the hazard; natural and accident disasters go by the first keyword in the
# hazard name below (CAP: "Met - meteorological (inc. flood)", "Geo - geophysical (inc.
# landslide)"); anything else is Other.
_CAP_CATEGORY_BY_GATEWAY = {"public_health": "Health", "social_safety": "Security"}
_CAP_CATEGORY_BY_KEYWORD: tuple[tuple[tuple[str, ...], str], ...] = (
    (("地震", "地质", "崩塌", "滑坡", "泥石流", "塌陷", "地裂缝"), "Geo"),
    (("火险", "火灾"), "Fire"),
    (("危险化学品", "爆炸", "烟花爆竹", "辐射"), "CBRNE"),
    (("交通", "铁路", "公路", "轨道"), "Transport"),
    (("停电", "天然气", "供水", "通信", "排水", "桥梁", "市政"), "Infra"),
    (("污染", "生态", "有害生物"), "Env"),
    (("矿山", "建设工程", "人员密集", "特种设备", "成品油"), "Safety"),
    (("暴雨", "暴雪", "寒潮", "大风", "高温", "干旱", "雷电", "冰雹", "霜冻"), "Met"),
    (("大雾", "结冰", "强对流", "霾", "洪", "涨水", "内涝"), "Met"),
)


# CAP <category> → the gateway's category, used only for an event annex 1 does not list (annex 1
# gives every listed hazard's). `Other` maps to none: such a body needs a `category` parameter.
_GATEWAY_CATEGORY_BY_CAP = {
    "Met": "natural_disaster",
    "Geo": "natural_disaster",
    "Health": "public_health",
    "Security": "social_safety",
    **dict.fromkeys(
        ("Safety", "Rescue", "Fire", "Env", "Transport", "Infra", "CBRNE"), "accident_disaster"
    ),
}
CategoryOf = Callable[[str], str | None]
"""The gateway category annex 1 gives a hazard, None for a hazard it does not list."""

# ───────────────────────────────────── CAP → document ─────────────────────────────────────


def cap_to_document(
    raw: bytes, *, max_bytes: int, category_of: CategoryOf | None = None
) -> dict[str, Any]:
    """The JSON warning document a CAP 1.2 alert carries, for the caller to validate.

    With `category_of`, the category is a `category` parameter's, else `category_of(event)`
    (annex 1), else, for an event annex 1 does not list, the first CAP <category> that maps: so
    an unlisted event reaches the authority policy (403, or an art. 26 temporary release) as its
    JSON twin does.

    Raises PayloadTooLarge above `max_bytes`, and InvalidWarning (code `invalid_cap`, with field
    errors named by CAP path, e.g. `alert.info[1].severity`) for XML that is malformed, declares a
    DOCTYPE or entities, is not a CAP 1.2 alert, lacks identifier/sent/info, is not an Actual
    Alert/Update/Cancel, or has a severity that maps to no level.
    """
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the CAP message has {len(raw)} bytes; at most {max_bytes} accepted")
    root = _parse(raw)
    errors: list[FieldError] = []
    doc = _alert(root, errors, category_of)
    # An XML parser refuses what UTF-8 cannot carry; checked anyway, as for JSON bodies.
    errors.extend(unicode_errors(doc))
    if errors:
        raise InvalidWarning(
            f"the CAP message has {len(errors)} problem(s)", code=INVALID_CAP, errors=errors
        )
    return doc


def _invalid(field: str, reason: str) -> InvalidWarning:
    return InvalidWarning(
        f"not an acceptable CAP 1.2 message: {reason}",
        code=INVALID_CAP,
        errors=[FieldError(field, reason)],
    )


def _parse_xml(raw: bytes) -> ET.Element:
    """The root element of untrusted XML; DTDs, entities and external references refused."""
    root: ET.Element = defused_et.fromstring(
        raw, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    return root


def _parse(raw: bytes) -> ET.Element:
    try:
        root = _parse_xml(raw)
    except DTDForbidden as exc:
        raise _invalid("(body)", "a DOCTYPE is refused (no DTD, no entities)") from exc
    except DefusedXmlException as exc:
        raise _invalid("(body)", f"refused XML construct: {exc}") from exc
    except (ET.ParseError, ValueError) as exc:
        raise _invalid("(body)", f"not well-formed XML: {exc}") from exc
    if root.tag != _NS + _ROOT:
        namespace, _, local = root.tag[1:].rpartition("}") if root.tag[:1] == "{" else ("", "", "")
        if (local or root.tag) == _ROOT:
            got = f"not {namespace}" if namespace else "the alert has none"
            raise _invalid(_ROOT, f"namespace must be {CAP_NS}; {got}")
        raise _invalid("(body)", f"the root element must be a CAP 1.2 <alert>, not {root.tag}")
    return root


def _text(parent: ET.Element, name: str) -> str | None:
    """The stripped text of the first child `name`, None when absent or empty."""
    child = parent.find(_NS + name)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _alert(
    root: ET.Element, errors: list[FieldError], category_of: CategoryOf | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, key in (("identifier", "id"), ("sent", "sent_at")):
        value = _text(root, name)
        if value is None:
            errors.append(FieldError(f"alert.{name}", "required"))
        else:
            doc[key] = value
    status = _text(root, "status")
    if status != "Actual":
        # Exercise, Test, Draft, System: never disseminated to the public as a real warning.
        reason = "required" if status is None else f"{status} is not disseminated; only Actual"
        errors.append(FieldError("alert.status", reason))
    msg_type = _text(root, "msgType")
    if msg_type in _MSG_TYPE_IN:
        doc["msg_type"] = _MSG_TYPE_IN[msg_type]
    else:
        reason = "required" if msg_type is None else f"{msg_type} is not Alert, Update or Cancel"
        errors.append(FieldError("alert.msgType", reason))
    references = _text(root, "references")
    if references is not None:
        ref = _last_reference(references)
        if ref is None:
            errors.append(FieldError("alert.references", "not `sender,identifier,sent` triples"))
        else:
            doc["references"] = ref
    infos = root.findall(_NS + "info")
    if not infos:
        errors.append(FieldError("alert.info", "required: at least one info block"))
    else:
        index = _preferred_info(infos)
        _info(infos[index], f"alert.info[{index}]", doc, errors)
        _category(infos[index], doc, category_of)
    return doc


def _last_reference(references: str) -> str | None:
    """The identifier of the last `sender,identifier,sent` triple (a bare identifier is taken)."""
    parts = references.split()[-1].split(",")
    if len(parts) == 3 and parts[1]:
        return parts[1]
    return parts[0] if len(parts) == 1 else None


def _preferred_info(infos: Sequence[ET.Element]) -> int:
    """The index of the zh-CN info block, else of the first Chinese one, else 0."""
    languages = [(_text(info, "language") or "en-US").lower() for info in infos]
    for wanted in ("zh-cn", "zh-hans-cn", "zh"):
        for i, language in enumerate(languages):
            if language == wanted:
                return i
    return next((i for i, lang in enumerate(languages) if lang.startswith("zh")), 0)


def _parameters(info: ET.Element) -> dict[str, str]:
    """The info block's parameters by valueName; the first of a repeated name wins."""
    out: dict[str, str] = {}
    for param in info.findall(_NS + "parameter"):
        name, value = _text(param, "valueName"), _text(param, "value")
        if name is not None and value is not None:
            out.setdefault(name, value)
    return out


def _info(info: ET.Element, path: str, doc: dict[str, Any], errors: list[FieldError]) -> None:
    params = _parameters(info)
    for name, key in (
        ("event", "hazard"),
        ("headline", "title"),
        ("description", "content"),
        ("instruction", "measures"),
        ("expires", "expires_at"),
    ):
        if (value := _text(info, name)) is not None:
            doc[key] = value
    onset = _text(info, "onset") or _text(info, "effective")
    if onset is not None:
        doc["onset_at"] = onset
    contact = _text(info, "contact")
    if contact is not None and _PHONE.fullmatch(contact) and sum(c.isdigit() for c in contact) >= 3:
        doc["contact_phone"] = contact
    level = _level(info, params, path, errors)
    if level is not None:
        doc["level"] = level
    _issuer(_text(info, "senderName"), params, doc)
    _approval(params, doc)
    for name, key in _TEXT_PARAMETERS.items():
        if name in params:
            doc[key] = params[name]
    if "channels" in params:
        doc["channels"] = [c for c in _CHANNEL_SEP.split(params["channels"]) if c]
    _area(info.findall(_NS + "area"), doc)


def _category(info: ET.Element, doc: dict[str, Any], category_of: CategoryOf | None) -> None:
    if category_of is None or "category" in doc or not isinstance(doc.get("hazard"), str):
        return
    category = category_of(doc["hazard"])
    if category is None:
        cap = [(e.text or "").strip() for e in info.findall(_NS + "category")]
        category = next(
            (_GATEWAY_CATEGORY_BY_CAP[c] for c in cap if c in _GATEWAY_CATEGORY_BY_CAP), None
        )
    if category is not None:
        doc["category"] = category


def _level(
    info: ET.Element, params: Mapping[str, str], path: str, errors: list[FieldError]
) -> int | None:
    """The level from severity, or from a `level_colour` parameter when severity is Unknown."""
    severity = _text(info, "severity")
    by_severity = _LEVEL_BY_SEVERITY.get(severity or "")
    colour = params.get("level_colour")
    by_colour = _LEVEL_BY_COLOUR.get((colour or "").lower())
    if colour is not None and by_colour is None:
        errors.append(FieldError(f"{path}.parameter.level_colour", f"unknown colour {colour}"))
        return None
    if by_severity is not None and by_colour is not None and by_severity != by_colour:
        reason = f"{severity} contradicts level_colour {colour}"
        errors.append(FieldError(f"{path}.severity", reason))
        return None
    level = by_severity or by_colour
    if level is None:
        reason = (
            f"{severity or 'a missing severity'} maps to no level: use Extreme, Severe, Moderate,"
            " Minor or a level_colour parameter"
        )
        errors.append(FieldError(f"{path}.severity", reason))
    return level


def _issuer(unit: str | None, params: Mapping[str, str], doc: dict[str, Any]) -> None:
    issuer = {
        k: v
        for k, v in (
            ("unit", unit),
            ("role", params.get("issuer_role")),
            ("district", params.get("issuer_district")),
        )
        if v is not None
    }
    if issuer:
        doc["issuer"] = issuer
    if "joint_issuers" in params:
        roles = [r for r in _LIST_SEP.split(params["joint_issuers"]) if r]
        doc["joint_issuers"] = [{"role": r} for r in roles]


def _approval(params: Mapping[str, str], doc: dict[str, Any]) -> None:
    def pick(*pairs: tuple[str, str]) -> dict[str, Any]:
        return {key: params[name] for name, key in pairs if name in params}

    approval = pick(("approved_by", "approved_by"), ("approved_at", "approved_at"))
    approval |= pick(("approval_ref", "ref"))
    higher = pick(
        ("higher_approval_unit", "unit"),
        ("higher_approval_at", "approved_at"),
        ("higher_approval_ref", "ref"),
    )
    if higher:
        approval["higher_approval"] = higher
    if approval:
        doc["approval"] = approval


def _area(areas: Sequence[ET.Element], doc: dict[str, Any]) -> None:
    """Every area block merged into one: descriptions joined, CPEAS codes split by kind.

    A code that is neither a district nor a township (a 12-digit village code, garbage) goes to
    `townships` as it is, so the model reports it with the other field errors.
    """
    if not areas:
        return
    descriptions: list[str] = []
    districts: list[str] = []
    townships: list[str] = []
    for area in areas:
        desc = _text(area, "areaDesc")
        if desc is not None and desc not in descriptions:
            descriptions.append(desc)
        for geocode in area.findall(_NS + "geocode"):
            name, value = _text(geocode, "valueName"), _text(geocode, "value")
            if name is None or value is None or name.casefold() != CPEAS.casefold():
                continue
            code = normalise(value)
            (districts if code is not None and len(code) == 6 else townships).append(code or value)
    out: dict[str, Any] = {}
    if districts:
        out["districts"] = districts
    if townships:
        out["townships"] = townships
    if descriptions:
        out["description"] = "；".join(descriptions)
    doc["area"] = out


# ───────────────────────────────────── document → CAP ─────────────────────────────────────


def cap_category(category: str | None, hazard: str) -> str:
    """The CAP <category> of a gateway hazard (see `_CAP_CATEGORY_BY_KEYWORD`); default Other."""
    if category in _CAP_CATEGORY_BY_GATEWAY:
        return _CAP_CATEGORY_BY_GATEWAY[category]
    for keywords, cap in _CAP_CATEGORY_BY_KEYWORD:
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
    return _NOT_XML.sub("", text)


def _add(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    child = ET.SubElement(parent, _NS + name)
    if text is not None:
        child.text = _clean(text)
    return child


def _cap_token(value: str, what: str) -> str:
    if not _CAP_TOKEN.fullmatch(value):
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
    if status not in _STATUSES:
        raise ValueError(f"CAP status {status!r} is not one of {', '.join(_STATUSES)}")
    sent = cap_time(doc["sent_at"])
    alert = ET.Element(_NS + _ROOT)
    _add(alert, "identifier", _cap_token(doc["id"], "identifier"))
    _add(alert, "sender", _cap_token(sender, "sender"))
    _add(alert, "sent", sent)
    _add(alert, "status", status)
    _add(alert, "msgType", _MSG_TYPE_OUT[doc.get("msg_type", "alert")])
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
    _add(info, "severity", _SEVERITY_BY_LEVEL[doc["level"]])
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
        ("level_colour", _COLOUR_BY_LEVEL[doc["level"]]),
        ("channels", ",".join(doc.get("channels") or [])),
        *((name, doc.get(key)) for name, key in _TEXT_PARAMETERS.items()),
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


@functools.cache
def _schema() -> xmlschema.XMLSchema:
    # Loaded from text with every resource access blocked: the CAP schema imports nothing.
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    return xmlschema.XMLSchema(text, allow="none", defuse="always")


def validate_cap(xml: bytes) -> list[str]:
    """What the OASIS CAP 1.2 schema rejects in `xml`, one line per error; empty when valid."""
    try:
        root = _parse_xml(xml)
    except DTDForbidden:
        return ["(document): a DOCTYPE is refused (no DTD, no entities)"]
    except DefusedXmlException as exc:
        return [f"(document): refused XML construct: {exc}"]
    except (ET.ParseError, ValueError) as exc:
        return [f"(document): not well-formed XML: {exc}"]
    out: list[str] = []
    for error in _schema().iter_errors(root):
        path = (getattr(error, "path", None) or "/").replace(_NS, "cap:")
        out.append(f"{path}: {error.reason or error.message}")
    return out
