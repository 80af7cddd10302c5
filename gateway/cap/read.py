"""CAP 1.2 (OASIS Common Alerting Protocol) in: design.md, "Warning", CAP paragraph.

`cap_to_document` reads an untrusted CAP alert and maps it to the gateway's JSON warning document,
the same dict a JSON client posts; the caller validates it like any JSON body. Only the shape of
the CAP message is checked here (code `invalid_cap`); field values are the model's business.
`validate_cap` reports what the OASIS schema shipped in `gateway/cap/CAP-v1.2.xsd` rejects.
The profile (`gateway.cap.profile`) is China's national one; `gateway.cap.write` writes it.

Safety: XML is parsed by defusedxml with any DOCTYPE refused, so no DTD is loaded, no entity is
declared or expanded and nothing is fetched (billion laughs, XXE); the size is checked first.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as defused_et
from defusedxml import DefusedXmlException, DTDForbidden

from gateway.cap.profile import (
    CAP_NS,
    CHANNEL_SEP,
    CPEAS,
    GATEWAY_CATEGORY_BY_CAP,
    INVALID_CAP,
    LEVEL_BY_COLOUR,
    LEVEL_BY_SEVERITY,
    LIST_SEP,
    MSG_TYPE_IN,
    NS,
    PHONE,
    ROOT,
    SCHEMA_PATH,
    TEXT_PARAMETERS,
    CategoryOf,
)
from gateway.exceptions import FieldError, InvalidWarning, PayloadTooLarge
from gateway.text import unicode_errors
from gateway.townships import normalise

if TYPE_CHECKING:
    import xmlschema


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
    if root.tag != NS + ROOT:
        namespace, _, local = root.tag[1:].rpartition("}") if root.tag[:1] == "{" else ("", "", "")
        if (local or root.tag) == ROOT:
            got = f"not {namespace}" if namespace else "the alert has none"
            raise _invalid(ROOT, f"namespace must be {CAP_NS}; {got}")
        raise _invalid("(body)", f"the root element must be a CAP 1.2 <alert>, not {root.tag}")
    return root


def _text(parent: ET.Element, name: str) -> str | None:
    """The stripped text of the first child `name`, None when absent or empty."""
    child = parent.find(NS + name)
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
    if msg_type in MSG_TYPE_IN:
        doc["msg_type"] = MSG_TYPE_IN[msg_type]
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
    infos = root.findall(NS + "info")
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
    for param in info.findall(NS + "parameter"):
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
    if contact is not None and PHONE.fullmatch(contact) and sum(c.isdigit() for c in contact) >= 3:
        doc["contact_phone"] = contact
    level = _level(info, params, path, errors)
    if level is not None:
        doc["level"] = level
    _issuer(_text(info, "senderName"), params, doc)
    _approval(params, doc)
    for name, key in TEXT_PARAMETERS.items():
        if name in params:
            doc[key] = params[name]
    if "channels" in params:
        doc["channels"] = [c for c in CHANNEL_SEP.split(params["channels"]) if c]
    _area(info.findall(NS + "area"), doc)


def _category(info: ET.Element, doc: dict[str, Any], category_of: CategoryOf | None) -> None:
    if category_of is None or "category" in doc or not isinstance(doc.get("hazard"), str):
        return
    category = category_of(doc["hazard"])
    if category is None:
        cap = [(e.text or "").strip() for e in info.findall(NS + "category")]
        category = next(
            (GATEWAY_CATEGORY_BY_CAP[c] for c in cap if c in GATEWAY_CATEGORY_BY_CAP), None
        )
    if category is not None:
        doc["category"] = category


def _level(
    info: ET.Element, params: Mapping[str, str], path: str, errors: list[FieldError]
) -> int | None:
    """The level from severity, or from a `level_colour` parameter when severity is Unknown."""
    severity = _text(info, "severity")
    by_severity = LEVEL_BY_SEVERITY.get(severity or "")
    colour = params.get("level_colour")
    by_colour = LEVEL_BY_COLOUR.get((colour or "").lower())
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
        roles = [r for r in LIST_SEP.split(params["joint_issuers"]) if r]
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
        for geocode in area.findall(NS + "geocode"):
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


@functools.cache
def _schema() -> xmlschema.XMLSchema:
    # Imported here, not at start: xmlschema alone took a quarter of the gateway's start-up.
    import xmlschema

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
        path = (getattr(error, "path", None) or "/").replace(NS, "cap:")
        out.append(f"{path}: {error.reason or error.message}")
    return out
