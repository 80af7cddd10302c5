"""Who may issue what: annex 1 (发布清单) and art. 15, 26, 28 enforced on POST /v1/warnings.

Every case posts a warning over HTTP to the gateway on a loopback server and checks the answer.
Each param cites the annex-1 row (numbered 1-41 in annex order, as in config/release_list.yaml)
or the article it exercises; the comment above it quotes the cell of the regulation
(/work/shared/reference/warning-release-measures-2026.txt).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import GatewayClient
from tests.helpers import auth, district_issuer, iso, warning_body

NATURAL = "natural_disaster"
ACCIDENT = "accident_disaster"
HEALTH = "public_health"

WANZHOU = "500101"  # 万州区, the district of the `wanzhou` client and of district issuers below
YUZHONG = "500103"  # 渝中区
WANZHOU_AREA = {"districts": [WANZHOU]}
YUZHONG_AREA = {"districts": [YUZHONG]}

# A key of a case's changes that is not a warning field: the unit of the higher approval
# (art. 15), turned into `approval.higher_approval` with times relative to now by `body()`.
HIGHER = "_higher_approval_unit"

Changes = dict[str, Any]


def city(role: str, unit: str | None = None) -> dict[str, str]:
    """A city-level issuer (no district code)."""
    return {"unit": unit or role, "role": role}


def district(role: str, code: str = WANZHOU) -> dict[str, str]:
    """A district-level issuer of `code` (万州区 by default)."""
    return district_issuer(role, district=code)


def case(
    category: str,
    hazard: str,
    level: int,
    issuer: dict[str, str],
    *joint: str,
    higher: str | None = None,
    **more: Any,
) -> Changes:
    """The changes to the sample warning for one case; the area defaults to the issuer's own
    district (万州区) for a district-level issuer and to 渝中区 for a city-level one."""
    changes: Changes = {
        "category": category,
        "hazard": hazard,
        "level": level,
        "issuer": issuer,
        "area": WANZHOU_AREA if "district" in issuer else YUZHONG_AREA,
        "title": f"{hazard}预警",
    }
    if joint:
        changes["joint_issuers"] = [{"unit": role, "role": role} for role in joint]
    if higher is not None:
        changes[HIGHER] = higher
    return changes | more


def body(changes: Changes) -> dict[str, Any]:
    """The sample warning with `changes`, higher approval (if any) given 5 minutes ago."""
    changes = dict(changes)
    higher = changes.pop(HIGHER, None)
    out = warning_body(**changes)
    if higher is not None:
        out["approval"]["higher_approval"] = {
            "unit": higher,
            "approved_at": iso(datetime.now(UTC) - timedelta(minutes=5)),
            "ref": "批复〔2026〕1号",
        }
    return out


async def post(api: GatewayClient, doc: Any, client: str = "platform") -> tuple[int, Any]:
    resp = await api.post("/v1/warnings", json=doc, headers=auth(client))
    return resp.status, await resp.json()


async def ledger(api: GatewayClient, warning_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/v1/warnings/{warning_id}/receipts", headers=auth())
    assert resp.status == 200, await resp.text()
    entries: list[dict[str, Any]] = (await resp.json())["entries"]
    return entries


async def assert_refused(
    api: GatewayClient, doc: dict[str, Any], code: str, client: str = "platform"
) -> dict[str, Any]:
    """Post `doc`, expect 403 with `code`, and check the refusal is in the ledger (art. 28)."""
    status, answer = await post(api, doc, client)
    assert status == 403, answer
    assert answer["code"] == code, answer
    assert (await api.get(f"/v1/warnings/{doc['id']}", headers=auth())).status == 404
    entries = await ledger(api, doc["id"])
    assert [e["stage"] for e in entries] == ["received", "rejected"]
    assert entries[1]["data"]["code"] == code
    refused: dict[str, Any] = answer
    return refused


def error_text(answer: dict[str, Any]) -> str:
    """The field errors of an error body as one string, for `in` checks."""
    return " | ".join(f"{e['field']}: {e['reason']}" for e in answer.get("errors", []))


# ─────────────────────────────────── accepted (202) ───────────────────────────────────

ACCEPTED = [
    # ── 自然灾害 ──
    # annex 1 row 1: 洪水、干旱 — 市水利局
    pytest.param(
        "platform", case(NATURAL, "干旱", 3, city("市水利局")), 1, id="row1-干旱-市水利局-city"
    ),
    # annex 1 row 1: 洪水、干旱 — 区县（自治县）水行政主管部门
    pytest.param(
        "platform",
        case(NATURAL, "洪水", 2, district("区县（自治县）水行政主管部门")),
        1,
        id="row1-洪水-district",
    ),
    # annex 1 row 10: …干旱…等预警信号 — 重庆气象局 (干旱 is also in row 1)
    pytest.param(
        "platform",
        case(NATURAL, "干旱", 2, city("重庆气象局")),
        10,
        id="row10-干旱-重庆气象局-city",
    ),
    # annex 1 row 10: 区县（自治县）气象主管机构 may issue 干旱 too
    pytest.param(
        "platform",
        case(NATURAL, "干旱", 4, district("区县（自治县）气象主管机构")),
        10,
        id="row10-干旱-district-weather",
    ),
    # annex 1 row 10: 暴雨、暴雪… — 区县（自治县）气象主管机构, role with ASCII parentheses
    pytest.param(
        "platform",
        case(NATURAL, "暴雪", 3, district("区县(自治县)气象主管机构")),
        10,
        id="row10-暴雪-district-ascii-parentheses",
    ),
    # annex 1 row 10: the short form 区县气象主管机构 names the same role
    pytest.param(
        "platform",
        case(NATURAL, "大风", 4, district("区县气象主管机构")),
        10,
        id="row10-大风-district-short-role",
    ),
    # annex 1 row 10: 强对流天气临近预警 — 重庆气象局, red
    pytest.param(
        "platform",
        case(NATURAL, "强对流天气临近预警", 1, city("重庆气象局")),
        10,
        id="row10-强对流天气临近预警-city-level1",
    ),
    # annex 1 row 2: 中小河流涨水风险提示 — 市水利局、重庆气象局 联合发布预警信息
    pytest.param(
        "platform",
        case(NATURAL, "中小河流涨水风险提示", 3, city("市水利局"), "重庆气象局"),
        2,
        id="row2-中小河流涨水-city-joint",
    ),
    # annex 1 row 2: 区县（自治县）水行政主管部门、气象主管机构 联合发布
    pytest.param(
        "platform",
        case(
            NATURAL,
            "中小河流涨水风险提示",
            3,
            district("区县（自治县）水行政主管部门"),
            "区县（自治县）气象主管机构",
        ),
        2,
        id="row2-中小河流涨水-district-joint",
    ),
    # annex 1 row 3: 小流域山洪灾害气象风险预警 — 市水利局、重庆气象局 联合发布 (weather leads)
    pytest.param(
        "platform",
        case(NATURAL, "小流域山洪灾害气象风险预警", 2, city("重庆气象局"), "市水利局"),
        3,
        id="row3-山洪-city-joint",
    ),
    # annex 1 row 3: district cell, joint issuer named in the short form
    pytest.param(
        "platform",
        case(
            NATURAL,
            "小流域山洪灾害气象风险预警",
            4,
            district("区县（自治县）水行政主管部门"),
            "区县气象主管机构",
        ),
        3,
        id="row3-山洪-district-joint-short-form",
    ),
    # annex 1 row 4: 城市内涝灾害气象风险预警 — 市住房城乡建设委、重庆气象局 联合发布
    pytest.param(
        "platform",
        case(NATURAL, "城市内涝灾害气象风险预警", 3, city("市住房城乡建设委"), "重庆气象局"),
        4,
        id="row4-城市内涝-city-joint",
    ),
    # annex 1 row 4: 区县（自治县）住房城乡建设行政主管部门、气象主管机构 联合发布
    pytest.param(
        "platform",
        case(
            NATURAL,
            "城市内涝灾害气象风险预警",
            3,
            district("区县(自治县)气象主管机构"),
            "区县（自治县）住房城乡建设行政主管部门",
        ),
        4,
        id="row4-城市内涝-district-joint",
    ),
    # annex 1 row 5: 地质灾害气象风险预警 — 市规划自然资源局、重庆气象局 联合发布
    pytest.param(
        "platform",
        case(NATURAL, "地质灾害气象风险预警", 2, city("市规划自然资源局"), "重庆气象局"),
        5,
        id="row5-地质灾害气象风险-city-joint",
    ),
    # annex 1 row 5: 区县（自治县）规划自然资源行政主管部门、气象主管机构 联合发布
    pytest.param(
        "platform",
        case(
            NATURAL,
            "地质灾害气象风险预警",
            3,
            district("区县（自治县）规划自然资源行政主管部门"),
            "区县（自治县）气象主管机构",
        ),
        5,
        id="row5-地质灾害气象风险-district-joint",
    ),
    # annex 1 row 6: 地质灾害临灾预报 — 区县（自治县）规划自然资源行政主管部门; level 3 needs no
    # approval beyond its own (only 二级及以上 报经市规划自然资源局批准)
    pytest.param(
        "platform",
        case(NATURAL, "地质灾害临灾预报", 3, district("区县（自治县）规划自然资源行政主管部门")),
        6,
        id="row6-临灾预报-district-level3-no-higher-approval",
    ),
    # annex 1 row 6: 二级及以上地质灾害临灾预报报经市规划自然资源局批准后发布
    pytest.param(
        "platform",
        case(
            NATURAL,
            "地质灾害临灾预报",
            2,
            district("区县（自治县）规划自然资源行政主管部门"),
            higher="市规划自然资源局",
        ),
        6,
        id="row6-临灾预报-district-level2-approved",
    ),
    pytest.param(
        "platform",
        case(
            NATURAL,
            "滑坡",
            1,
            district("区县（自治县）规划自然资源行政主管部门"),
            higher="市规划自然资源局",
        ),
        6,
        id="row6-滑坡-district-level1-approved",
    ),
    # annex 1 row 7: 农业有害生物 — 市农业农村委
    pytest.param(
        "platform",
        case(NATURAL, "农业有害生物", 4, city("市农业农村委")),
        7,
        id="row7-农业有害生物-city",
    ),
    # annex 1 row 8: 森林草原火险预警信号 — 市森林草原防灭火指挥部、市应急管理局、市林业局、
    # 重庆气象局 联合发布
    pytest.param(
        "platform",
        case(
            NATURAL,
            "森林草原火险预警信号",
            2,
            city("市森林草原防灭火指挥部"),
            "市应急管理局",
            "市林业局",
            "重庆气象局",
        ),
        8,
        id="row8-森林火险-city-four-units",
    ),
    # annex 1 row 8: 区县（自治县）森林草原防灭火指挥部、应急管理和林业行政主管部门、气象主管机构
    pytest.param(
        "platform",
        case(
            NATURAL,
            "森林草原火险预警信号",
            3,
            district("区县（自治县）森林草原防灭火指挥部"),
            "区县（自治县）应急管理行政主管部门",
            "区县（自治县）林业行政主管部门",
            "区县(自治县)气象主管机构",
        ),
        8,
        id="row8-森林火险-district-four-units",
    ),
    # annex 1 row 9: 地震 — 重庆地震局
    pytest.param("platform", case(NATURAL, "地震", 1, city("重庆地震局")), 9, id="row9-地震-city"),
    # ── 事故灾难 ──
    # annex 1 row 11: 铁路事故 — 中国铁路成都局集团有限公司
    pytest.param(
        "platform",
        case(ACCIDENT, "铁路事故", 2, city("中国铁路成都局集团有限公司")),
        11,
        id="row11-铁路事故-city",
    ),
    # annex 1 row 12: 道路交通事故 — 区县（自治县）公安局
    pytest.param(
        "wanzhou",
        case(ACCIDENT, "道路交通事故", 4, district("区县（自治县）公安局")),
        12,
        id="row12-道路交通-district-wanzhou-client",
    ),
    # annex 1 row 13: 水上交通事故 — 市交通运输委、重庆海事局 联合发布
    pytest.param(
        "platform",
        case(ACCIDENT, "水上交通事故", 2, city("市交通运输委"), "重庆海事局"),
        13,
        id="row13-水上交通-city-joint",
    ),
    # annex 1 row 13: 区县（自治县）交通运输主管部门、重庆海事局派出机构 联合发布
    pytest.param(
        "platform",
        case(
            ACCIDENT,
            "水上交通事故",
            3,
            district("区县（自治县）交通运输主管部门"),
            "重庆海事局派出机构",
        ),
        13,
        id="row13-水上交通-district-joint",
    ),
    # annex 1 row 13: alias 区县（自治县）重庆海事局派出机构 for 重庆海事局派出机构
    pytest.param(
        "platform",
        case(
            ACCIDENT,
            "水上交通事故",
            4,
            district("区县（自治县）重庆海事局派出机构"),
            "区县（自治县）交通运输主管部门",
        ),
        13,
        id="row13-水上交通-district-alias-unit",
    ),
    # annex 1 row 16: 火灾事故 — 市消防救援局
    pytest.param(
        "platform", case(ACCIDENT, "火灾事故", 1, city("市消防救援局")), 16, id="row16-火灾-city"
    ),
    # annex 1 row 17: 危险化学品生产、经营、储存事故 — 市应急管理局、市经济信息委 (not joint)
    pytest.param(
        "platform",
        case(ACCIDENT, "危险化学品事故", 2, city("市经济信息委")),
        17,
        id="row17-危化品-city-either-unit",
    ),
    # annex 1 row 23: 人员密集场所事故 — 市公安局 发布一、二级
    pytest.param(
        "platform",
        case(ACCIDENT, "人员密集场所事故", 1, city("市公安局")),
        23,
        id="row23-人员密集场所-city-level1",
    ),
    # annex 1 row 23: 区县（自治县）公安局 发布三、四级
    pytest.param(
        "platform",
        case(ACCIDENT, "人员密集场所事故", 3, district("区县（自治县）公安局")),
        23,
        id="row23-人员密集场所-district-level3",
    ),
    # annex 1 row 24: 大面积停电事故 — 三级、四级…向同级人民政府提出预警级别建议，由区县政府…发布
    pytest.param(
        "platform",
        case(
            ACCIDENT,
            "大面积停电事故",
            3,
            district("区县（自治县）经济信息部门"),
            higher="万州区人民政府",
        ),
        24,
        id="row24-停电-district-level3-万州区人民政府",
    ),
    # annex 1 row 24: 一级、二级…向同级人民政府提出预警级别建议，由市政府…发布
    pytest.param(
        "platform",
        case(ACCIDENT, "大面积停电事故", 2, city("市经济信息委"), higher="重庆市人民政府"),
        24,
        id="row24-停电-city-level2-市政府",
    ),
    # annex 1 row 27: 供水事故 — 根据供水领域划分经市政府批准后发布一级预警信息
    pytest.param(
        "platform",
        case(ACCIDENT, "供水事故", 1, city("市水利局"), higher="重庆市人民政府"),
        27,
        id="row27-供水-city-level1-重庆市人民政府",
    ),
    # annex 1 row 27: 根据供水领域划分发布二级预警信息 (no city-government approval)
    pytest.param(
        "platform",
        case(ACCIDENT, "供水事故", 2, city("市城市管理局")),
        27,
        id="row27-供水-city-level2-no-higher-approval",
    ),
    # annex 1 row 27: 区县（自治县）…城市管理（住房城乡建设）行政主管部门 发布三、四级; alias
    pytest.param(
        "platform",
        case(ACCIDENT, "供水事故", 3, district("区县（自治县）城市管理行政主管部门")),
        27,
        id="row27-供水-district-alias-unit",
    ),
    # annex 1 row 29: 特种设备事故 — 市市场监管部门 (alias 市市场监管局), 向市政府提出预警级别建议
    pytest.param(
        "platform",
        case(ACCIDENT, "特种设备事故", 2, city("市市场监管局"), higher="市人民政府"),
        29,
        id="row29-特种设备-city-alias-unit",
    ),
    # annex 1 row 29: 三级或四级…向区县（自治县）政府提出预警级别建议; the district's full name
    pytest.param(
        "platform",
        case(
            ACCIDENT,
            "特种设备事故",
            3,
            district("区县（自治县）市场监督管理部门"),
            higher="重庆市万州区人民政府",
        ),
        29,
        id="row29-特种设备-district-level3-重庆市万州区人民政府",
    ),
    # annex 1 row 31: 公共通信网络事故 — 一级预警信息报经工业和信息化部批准后发布
    pytest.param(
        "platform",
        case(ACCIDENT, "公共通信网络事故", 1, city("重庆通信管理局"), higher="工业和信息化部"),
        31,
        id="row31-通信网络-city-level1-approved",
    ),
    # annex 1 row 31: levels 2-4 need no approval by the ministry
    pytest.param(
        "platform",
        case(ACCIDENT, "公共通信网络事故", 2, city("重庆通信管理局")),
        31,
        id="row31-通信网络-city-level2",
    ),
    # annex 1 row 33: 主城排水系统事故 — 市住房城乡建委 (alias 市住房城乡建设委)
    pytest.param(
        "platform",
        case(ACCIDENT, "主城排水系统事故", 3, city("市住房城乡建设委")),
        33,
        id="row33-排水-city-alias-unit",
    ),
    # annex 1 row 34: 水上交通溢油事故 — 根据水域划分发布; 如需联合发布 (joint is optional)
    pytest.param(
        "platform",
        case(ACCIDENT, "水上交通溢油事故", 2, city("重庆海事局")),
        34,
        id="row34-溢油-city-alone",
    ),
    # ── 公共卫生事件 ──
    # annex 1 row 35: 突发传染病疫情 — 区县（自治县）卫生健康行政主管部门、疾病预防控制部门联合向
    # 同级人民政府报告提出预警建议
    pytest.param(
        "platform",
        case(
            HEALTH,
            "突发传染病疫情",
            3,
            district("区县（自治县）卫生健康行政主管部门"),
            "区县（自治县）疾病预防控制部门",
            higher="万州区人民政府",
        ),
        35,
        id="row35-传染病-district-joint-approved",
    ),
    # annex 1 row 36: 突发职业中毒事件 — 涉及跨省级行政区域的一级预警信息，报经国务院…批准后发布:
    # the condition cannot be seen in the warning, so it is recorded, not enforced
    pytest.param(
        "platform",
        case(HEALTH, "突发职业中毒事件", 1, city("市卫生健康委")),
        36,
        id="row36-职业中毒-city-level1-conditional-not-enforced",
    ),
    # annex 1 row 37: 突发群体性不明原因疾病事件 (分为三级) — 区县（自治县）卫生健康行政主管部门
    pytest.param(
        "platform",
        case(
            HEALTH, "突发群体性不明原因疾病事件", 3, district("区县（自治县）卫生健康行政主管部门")
        ),
        37,
        id="row37-不明原因疾病-district-level3",
    ),
    # annex 1 row 39: 食品安全事故 — 市市场监管局、市卫生健康委 发布一、二级
    pytest.param(
        "platform",
        case(HEALTH, "食品安全事故", 1, city("市卫生健康委")),
        39,
        id="row39-食品安全-city-level1",
    ),
    # annex 1 row 39: 区县（自治县）人民政府或其授权的部门和单位 发布三、四级
    pytest.param(
        "platform",
        case(HEALTH, "食品安全事故", 4, district("区县（自治县）人民政府或其授权的部门和单位")),
        39,
        id="row39-食品安全-district-level4-alias",
    ),
    # annex 1 row 40: 高温中暑预警 — 市卫生健康委、重庆气象局 联合发布预警信息
    pytest.param(
        "platform",
        case(HEALTH, "高温中暑预警", 2, city("市卫生健康委"), "重庆气象局"),
        40,
        id="row40-高温中暑-city-joint",
    ),
    # annex 1 row 41: 动物疫情 — 区县（自治县）农业农村行政主管部门
    pytest.param(
        "wanzhou",
        case(
            HEALTH,
            "动物疫情",
            2,
            district("区县（自治县）农业农村行政主管部门"),
            area={"townships": ["500101001"]},
        ),
        41,
        id="row41-动物疫情-district-township-area",
    ),
]


@pytest.mark.parametrize(("client", "changes", "row"), ACCEPTED)
async def test_listed_issuer_is_accepted(
    api: GatewayClient, client: str, changes: Changes, row: int
) -> None:
    doc = body(changes)
    status, answer = await post(api, doc, client)
    assert status == 202, answer
    assert answer["id"] == doc["id"]
    state = await (await api.get(f"/v1/warnings/{doc['id']}", headers=auth())).json()
    government = "district" if "district" in doc["issuer"] else "city"
    assert state["authorization"]["annex1_row"] == row
    assert state["authorization"]["government"] == government
    stages = [e["stage"] for e in await ledger(api, doc["id"])]
    assert stages[:3] == ["received", "authorized", "planned"]


# ─────────────────────────────── issuer_not_authorized ───────────────────────────────

NOT_AUTHORIZED = [
    # annex 1 row 10: 暴雨 — 重庆气象局 / 区县（自治县）气象主管机构, not 市水利局
    pytest.param(
        "platform",
        case(NATURAL, "暴雨", 3, city("市水利局")),
        "issuer.role",
        id="row10-暴雨-wrong-role-市水利局",
    ),
    # annex 1 row 1 and row 10 list 干旱; neither names 市公安局
    pytest.param(
        "platform",
        case(NATURAL, "干旱", 3, city("市公安局")),
        "issuer.role",
        id="row1+row10-干旱-wrong-role",
    ),
    # annex 1 row 12: 道路交通事故 — 市公安局 / 区县（自治县）公安局, not the weather service
    pytest.param(
        "platform",
        case(ACCIDENT, "道路交通事故", 3, city("重庆气象局")),
        "issuer.role",
        id="row12-道路交通-wrong-role",
    ),
    # annex 1 row 36: 突发职业中毒事件 — 市卫生健康委, not 市疾控中心
    pytest.param(
        "platform",
        case(HEALTH, "突发职业中毒事件", 3, city("市疾控中心")),
        "issuer.role",
        id="row36-职业中毒-wrong-role",
    ),
    # annex 1 row 10: a district-level role (区县（自治县）气象主管机构) without issuer.district
    pytest.param(
        "platform",
        case(NATURAL, "暴雨", 3, city("区县（自治县）气象主管机构")),
        "issuer.district",
        id="row10-district-role-without-district",
    ),
    # annex 1 row 12: 区县（自治县）公安局 without issuer.district
    pytest.param(
        "platform",
        case(ACCIDENT, "道路交通事故", 4, city("区县(自治县)公安局")),
        "issuer.district",
        id="row12-district-role-without-district",
    ),
    # annex 1 row 10: a city-level role (重庆气象局) carrying a district code
    pytest.param(
        "platform",
        case(NATURAL, "暴雨", 3, district("重庆气象局")),
        "issuer.role",
        id="row10-city-role-with-district",
    ),
    # annex 1 row 9: 地震 — 重庆地震局 only; no district-level unit
    pytest.param(
        "platform",
        case(NATURAL, "地震", 3, district("区县（自治县）地震工作主管部门")),
        "issuer.role",
        id="row9-地震-district-issuer",
    ),
    # annex 1 row 40: 高温中暑预警 — 市卫生健康委、重庆气象局 only; no district-level unit
    pytest.param(
        "platform",
        case(
            HEALTH,
            "高温中暑预警",
            3,
            district("区县（自治县）气象主管机构"),
            "区县（自治县）卫生健康行政主管部门",
        ),
        "issuer.role",
        id="row40-高温中暑-district-issuer",
    ),
    # annex 1 row 31: 公共通信网络事故 — 重庆通信管理局 only
    pytest.param(
        "platform",
        case(ACCIDENT, "公共通信网络事故", 3, district("区县（自治县）通信管理部门")),
        "issuer.role",
        id="row31-通信网络-district-issuer",
    ),
    # annex 1 row 6: 地质灾害临灾预报 — 区县（自治县）规划自然资源行政主管部门 only; no city unit
    pytest.param(
        "platform",
        case(NATURAL, "地质灾害临灾预报", 3, city("市规划自然资源局")),
        "issuer.role",
        id="row6-临灾预报-city-issuer",
    ),
    # annex 1 row 10 + 第五条 (按照各自职责): a district issuer warns only inside its district
    pytest.param(
        "platform",
        case(NATURAL, "暴雨", 3, district("区县（自治县）气象主管机构"), area=YUZHONG_AREA),
        "area",
        id="row10-district-issuer-area-other-district",
    ),
    pytest.param(
        "platform",
        case(
            NATURAL,
            "暴雨",
            3,
            district("区县（自治县）气象主管机构"),
            area={"townships": ["500103001"]},
        ),
        "area",
        id="row10-district-issuer-area-other-township",
    ),
    pytest.param(
        "platform",
        case(
            NATURAL,
            "暴雨",
            3,
            district("区县（自治县）气象主管机构"),
            area={"districts": [WANZHOU], "townships": ["500102006"]},
        ),
        "area",
        id="row10-district-issuer-area-partly-outside",
    ),
    # client `wanzhou` may send only for issuers of 500101
    pytest.param(
        "wanzhou",
        case(NATURAL, "暴雨", 3, district("区县（自治县）气象主管机构", YUZHONG)),
        "issuer.district",
        id="row10-wanzhou-client-other-district-issuer",
    ),
    pytest.param(
        "wanzhou",
        case(NATURAL, "暴雨", 3, city("重庆气象局"), area=WANZHOU_AREA),
        "issuer.district",
        id="row10-wanzhou-client-city-issuer",
    ),
    # art. 26: a hazard not in the list needs a client allowed to release temporarily
    pytest.param(
        "platform",
        case(NATURAL, "沙尘暴", 3, city("重庆气象局")),
        "hazard",
        id="art26-unlisted-hazard-platform",
    ),
    # art. 26 concerns hazards 未纳入清单 only: a listed hazard keeps its issuers for `duty` too
    pytest.param(
        "duty",
        case(NATURAL, "暴雨", 3, city("市公安局")),
        "issuer.role",
        id="art26-duty-listed-hazard-wrong-role",
    ),
]


@pytest.mark.parametrize(("client", "changes", "field"), NOT_AUTHORIZED)
async def test_issuer_not_authorized(
    api: GatewayClient, client: str, changes: Changes, field: str
) -> None:
    answer = await assert_refused(api, body(changes), "issuer_not_authorized", client)
    assert field in error_text(answer), answer


# ────────────────────────────────── level_not_allowed ──────────────────────────────────

LEVEL_NOT_ALLOWED = [
    # annex 1 row 23: 市公安局 发布一、二级
    pytest.param(
        case(ACCIDENT, "人员密集场所事故", 3, city("市公安局")), id="row23-人员密集场所-city-level3"
    ),
    pytest.param(
        case(ACCIDENT, "人员密集场所事故", 4, city("市公安局")), id="row23-人员密集场所-city-level4"
    ),
    # annex 1 row 23: 区县（自治县）公安局 发布三、四级
    pytest.param(
        case(ACCIDENT, "人员密集场所事故", 1, district("区县（自治县）公安局")),
        id="row23-人员密集场所-district-level1",
    ),
    pytest.param(
        case(ACCIDENT, "人员密集场所事故", 2, district("区县（自治县）公安局")),
        id="row23-人员密集场所-district-level2",
    ),
    # annex 1 row 37: 突发群体性不明原因疾病事件（分为三级，即一级、二级、三级）
    pytest.param(
        case(HEALTH, "突发群体性不明原因疾病事件", 4, city("市卫生健康委")),
        id="row37-不明原因疾病-city-level4",
    ),
    pytest.param(
        case(
            HEALTH, "突发群体性不明原因疾病事件", 4, district("区县（自治县）卫生健康行政主管部门")
        ),
        id="row37-不明原因疾病-district-level4",
    ),
    # annex 1 row 24: 大面积停电事故 — 一级、二级…由市政府…发布; 三级、四级…由区县政府…发布
    pytest.param(
        case(ACCIDENT, "大面积停电事故", 3, city("市经济信息委"), higher="市人民政府"),
        id="row24-停电-city-level3",
    ),
    pytest.param(
        case(
            ACCIDENT,
            "大面积停电事故",
            1,
            district("区县（自治县）经济信息部门"),
            higher="万州区人民政府",
        ),
        id="row24-停电-district-level1",
    ),
    # annex 1 row 27: 供水事故 — city 一级、二级; 区县（自治县）… 发布三、四级预警信息
    pytest.param(case(ACCIDENT, "供水事故", 4, city("市水利局")), id="row27-供水-city-level4"),
    pytest.param(
        case(ACCIDENT, "供水事故", 2, district("区县（自治县）水行政主管部门")),
        id="row27-供水-district-level2",
    ),
    # annex 1 row 29: 特种设备事故 — 一级或二级 市市场监管部门; 三级或四级 区县市场监管部门
    pytest.param(
        case(ACCIDENT, "特种设备事故", 3, city("市市场监管部门"), higher="市人民政府"),
        id="row29-特种设备-city-level3",
    ),
    pytest.param(
        case(
            ACCIDENT,
            "特种设备事故",
            2,
            district("区县（自治县）市场监督管理部门"),
            higher="万州区人民政府",
        ),
        id="row29-特种设备-district-level2",
    ),
    # annex 1 row 39: 食品安全事故 — 市市场监管局、市卫生健康委 发布一、二级; 区县 发布三、四级
    pytest.param(
        case(HEALTH, "食品安全事故", 3, city("市市场监管局")), id="row39-食品安全-city-level3"
    ),
    pytest.param(
        case(HEALTH, "食品安全事故", 1, district("区县（自治县）人民政府")),
        id="row39-食品安全-district-level1",
    ),
]


@pytest.mark.parametrize("changes", LEVEL_NOT_ALLOWED)
async def test_level_not_allowed(api: GatewayClient, changes: Changes) -> None:
    answer = await assert_refused(api, body(changes), "level_not_allowed")
    assert "level" in error_text(answer), answer


# ───────────────────────────────── joint_issuer_missing ─────────────────────────────────

JOINT_MISSING = [
    # annex 1 row 2: 中小河流涨水风险提示 — 市水利局、重庆气象局 联合发布预警信息
    pytest.param(
        case(NATURAL, "中小河流涨水风险提示", 3, city("市水利局")),
        ["重庆气象局"],
        id="row2-中小河流涨水-city-alone",
    ),
    # annex 1 row 2: 区县（自治县）水行政主管部门、气象主管机构
    pytest.param(
        case(NATURAL, "中小河流涨水风险提示", 3, district("区县（自治县）气象主管机构")),
        ["区县（自治县）水行政主管部门"],
        id="row2-中小河流涨水-district-alone",
    ),
    # annex 1 row 8: four units 联合发布; 市林业局 missing
    pytest.param(
        case(
            NATURAL,
            "森林草原火险预警信号",
            2,
            city("市森林草原防灭火指挥部"),
            "市应急管理局",
            "重庆气象局",
        ),
        ["市林业局"],
        id="row8-森林火险-city-one-of-four-missing",
    ),
    # annex 1 row 8: district, 气象主管机构 and 林业行政主管部门 missing
    pytest.param(
        case(
            NATURAL,
            "森林草原火险预警信号",
            3,
            district("区县（自治县）森林草原防灭火指挥部"),
            "区县（自治县）应急管理行政主管部门",
        ),
        ["区县（自治县）林业行政主管部门", "区县（自治县）气象主管机构"],
        id="row8-森林火险-district-two-of-four-missing",
    ),
    # annex 1 row 13: 区县（自治县）交通运输主管部门、重庆海事局派出机构 联合发布
    pytest.param(
        case(ACCIDENT, "水上交通事故", 3, district("区县（自治县）交通运输主管部门")),
        ["重庆海事局派出机构"],
        id="row13-水上交通-district-alone",
    ),
    # annex 1 row 13: a joint issuer of the wrong level (city unit) does not stand for the
    # district one
    pytest.param(
        case(ACCIDENT, "水上交通事故", 3, district("区县（自治县）交通运输主管部门"), "重庆海事局"),
        ["重庆海事局派出机构"],
        id="row13-水上交通-district-city-unit-as-joint",
    ),
    # annex 1 row 40: 高温中暑预警 — 市卫生健康委、重庆气象局 联合发布
    pytest.param(
        case(HEALTH, "高温中暑预警", 3, city("重庆气象局")),
        ["市卫生健康委"],
        id="row40-高温中暑-city-alone",
    ),
]


@pytest.mark.parametrize(("changes", "missing"), JOINT_MISSING)
async def test_joint_issuer_missing(
    api: GatewayClient, changes: Changes, missing: list[str]
) -> None:
    answer = await assert_refused(api, body(changes), "joint_issuer_missing")
    named = [e["reason"] for e in answer["errors"] if e["field"] == "joint_issuers"]
    for unit in missing:
        assert any(unit in reason for reason in named), answer
    assert len(named) == len(missing), answer


# ─────────────────────────────── higher_approval_required ───────────────────────────────

HIGHER_REQUIRED = [
    # annex 1 row 6: 二级及以上地质灾害临灾预报报经市规划自然资源局批准后发布
    pytest.param(
        case(NATURAL, "地质灾害临灾预报", 2, district("区县（自治县）规划自然资源行政主管部门")),
        id="row6-临灾预报-level2-no-higher-approval",
    ),
    pytest.param(
        case(NATURAL, "地质灾害临灾预报", 1, district("区县（自治县）规划自然资源行政主管部门")),
        id="row6-临灾预报-level1-no-higher-approval",
    ),
    pytest.param(
        case(
            NATURAL,
            "泥石流",
            1,
            district("区县（自治县）规划自然资源行政主管部门"),
            higher="万州区规划自然资源局",
        ),
        id="row6-泥石流-level1-approved-by-district-unit",
    ),
    pytest.param(
        case(
            NATURAL,
            "地质灾害临灾预报",
            2,
            district("区县（自治县）规划自然资源行政主管部门"),
            higher="重庆气象局",
        ),
        id="row6-临灾预报-level2-approved-by-wrong-unit",
    ),
    # annex 1 row 27: 供水事故 — 经市政府批准后发布一级预警信息
    pytest.param(
        case(ACCIDENT, "供水事故", 1, city("市水利局")), id="row27-供水-level1-no-higher-approval"
    ),
    pytest.param(
        case(ACCIDENT, "供水事故", 1, city("市城市管理局"), higher="万州区人民政府"),
        id="row27-供水-level1-approved-by-district-government",
    ),
    # annex 1 row 31: 公共通信网络事故 — 一级预警信息报经工业和信息化部批准后发布
    pytest.param(
        case(ACCIDENT, "公共通信网络事故", 1, city("重庆通信管理局")),
        id="row31-通信网络-level1-no-higher-approval",
    ),
    pytest.param(
        case(ACCIDENT, "公共通信网络事故", 1, city("重庆通信管理局"), higher="重庆市人民政府"),
        id="row31-通信网络-level1-approved-by-city-government",
    ),
    # annex 1 row 24: 三级、四级…向同级人民政府提出预警级别建议，由区县政府…发布
    pytest.param(
        case(ACCIDENT, "大面积停电事故", 3, district("区县（自治县）经济信息部门")),
        id="row24-停电-district-level3-no-government",
    ),
    # annex 1 row 24: 同级人民政府 of a 万州区 unit is 万州区人民政府, not another district's
    pytest.param(
        case(
            ACCIDENT,
            "大面积停电事故",
            4,
            district("区县（自治县）经济信息部门"),
            higher="渝中区人民政府",
        ),
        id="row24-停电-district-level4-other-district-government",
    ),
    # annex 1 row 24: …nor the city government (同级 = the issuer's own district)
    pytest.param(
        case(
            ACCIDENT,
            "大面积停电事故",
            3,
            district("区县（自治县）经济信息部门"),
            higher="重庆市人民政府",
        ),
        id="row24-停电-district-level3-city-government-not-同级",
    ),
]


@pytest.mark.parametrize("changes", HIGHER_REQUIRED)
async def test_higher_approval_required(api: GatewayClient, changes: Changes) -> None:
    answer = await assert_refused(api, body(changes), "higher_approval_required")
    assert "approval.higher_approval" in error_text(answer), answer


async def test_higher_approval_given_after_sent_at_is_refused(api: GatewayClient) -> None:
    # annex 1 row 6 + art. 15: 报经市规划自然资源局批准后发布 — approval must precede release
    doc = body(
        case(NATURAL, "地质灾害临灾预报", 1, district("区县（自治县）规划自然资源行政主管部门"))
    )
    doc["approval"]["higher_approval"] = {
        "unit": "市规划自然资源局",
        "approved_at": iso(datetime.now(UTC)),  # after sent_at (now - 1 min)
    }
    answer = await assert_refused(api, doc, "higher_approval_required")
    assert "after sent_at" in error_text(answer), answer


# ───────────────────────────────── not_approved (art. 15) ─────────────────────────────────

ApprovalOf = Callable[[datetime], Any]

NOT_APPROVED = [
    # art. 15: 未按照规定审批的预警信息，不得发布
    pytest.param(lambda now: None, id="art15-approval-missing"),
    pytest.param(lambda now: {}, id="art15-approval-empty"),
    pytest.param(
        lambda now: {"approved_at": iso(now - timedelta(minutes=10))},
        id="art15-approval-without-approved_by",
    ),
    pytest.param(
        lambda now: {"approved_by": "   ", "approved_at": iso(now - timedelta(minutes=10))},
        id="art15-approval-blank-approved_by",
    ),
    pytest.param(
        lambda now: {"approved_by": "重庆气象局值班领导"}, id="art15-approval-without-approved_at"
    ),
    pytest.param(
        lambda now: {"approved_by": "重庆气象局值班领导", "approved_at": iso(now)},
        id="art15-approved-after-sent_at",
    ),
]


@pytest.mark.parametrize("approval", NOT_APPROVED)
async def test_not_approved(api: GatewayClient, approval: ApprovalOf) -> None:
    now = datetime.now(UTC)
    doc = warning_body(sent_at=iso(now - timedelta(minutes=1)))
    value = approval(now)
    if value is None:
        doc.pop("approval")
    else:
        doc["approval"] = value
    answer = await assert_refused(api, doc, "not_approved")
    assert "approval" in error_text(answer), answer


# ─────────────────────────────── category contradicts hazard ───────────────────────────────


@pytest.mark.parametrize(
    "changes",
    [
        # annex 1 row 10: 暴雨 is a 自然灾害
        pytest.param(case(HEALTH, "暴雨", 3, city("重庆气象局")), id="row10-暴雨-public_health"),
        # annex 1 row 40: 高温中暑预警 is a 公共卫生事件
        pytest.param(
            case(NATURAL, "高温中暑预警", 3, city("市卫生健康委"), "重庆气象局"),
            id="row40-高温中暑-natural_disaster",
        ),
        # annex 1 row 16: 火灾事故 is a 事故灾难
        pytest.param(
            case(NATURAL, "火灾事故", 3, city("市消防救援局")), id="row16-火灾-natural_disaster"
        ),
    ],
)
async def test_category_contradicting_the_hazard_is_400(
    api: GatewayClient, changes: Changes
) -> None:
    status, answer = await post(api, body(changes))
    assert status == 400, answer
    assert answer["code"] == "invalid_body"
    assert "category" in {e["field"] for e in answer["errors"]}, answer


# ─────────────────────────────── art. 26: temporary release ───────────────────────────────


async def test_duty_client_releases_an_unlisted_hazard_temporarily(api: GatewayClient) -> None:
    # art. 26: 未纳入清单但需要临时发布的预警信息…按照本办法有关规定做好发布工作，并及时纳入清单
    doc = body(case(NATURAL, "沙尘暴", 3, city("重庆气象局")))
    status, answer = await post(api, doc, "duty")
    assert status == 202, answer
    entries = await ledger(api, doc["id"])
    assert [e["stage"] for e in entries][:2] == ["received", "authorized"]
    assert entries[1]["data"]["temporary_release"] is True
    state = await (await api.get(f"/v1/warnings/{doc['id']}", headers=auth())).json()
    assert state["authorization"]["temporary_release"] is True


async def test_temporary_release_still_needs_approval(api: GatewayClient) -> None:
    # art. 26 (按照本办法有关规定做好发布工作) with art. 15 (未按照规定审批的…不得发布)
    doc = body(case(NATURAL, "沙尘暴", 3, city("重庆气象局"), approval=None))
    await assert_refused(api, doc, "not_approved", "duty")


# ──────────────────────────── art. 28: every refusal is on record ────────────────────────────

CORRECTIONS = [
    # art. 15 → approval added
    pytest.param(
        case(NATURAL, "暴雨", 3, city("重庆气象局"), approval=None),
        {},
        "not_approved",
        id="art28-not_approved-then-approved",
    ),
    # annex 1 row 2 → joint issuer added
    pytest.param(
        case(NATURAL, "中小河流涨水风险提示", 3, city("市水利局")),
        {"joint_issuers": ["重庆气象局"]},
        "joint_issuer_missing",
        id="art28-row2-joint-then-complete",
    ),
    # annex 1 row 23 → level corrected
    pytest.param(
        case(ACCIDENT, "人员密集场所事故", 3, city("市公安局")),
        {"level": 2},
        "level_not_allowed",
        id="art28-row23-level-then-corrected",
    ),
    # annex 1 row 10 → issuer corrected
    pytest.param(
        case(NATURAL, "暴雨", 3, city("市水利局")),
        {"issuer": city("重庆气象局")},
        "issuer_not_authorized",
        id="art28-row10-issuer-then-corrected",
    ),
    # annex 1 row 6 → higher approval added
    pytest.param(
        case(NATURAL, "地质灾害临灾预报", 2, district("区县（自治县）规划自然资源行政主管部门")),
        {HIGHER: "市规划自然资源局"},
        "higher_approval_required",
        id="art28-row6-then-approved",
    ),
]


@pytest.mark.parametrize(("refused", "fix", "code"), CORRECTIONS)
async def test_refusal_is_recorded_and_a_corrected_body_is_accepted(
    api: GatewayClient, refused: Changes, fix: Changes, code: str
) -> None:
    first = body(refused)
    await assert_refused(api, first, code)
    # The platform retries the refused body unchanged: refused again and recorded again.
    status, answer = await post(api, first)
    assert (status, answer["code"]) == (403, code)
    corrected = body({**refused, **fix, "id": first["id"]})
    if "approval" not in corrected:
        corrected["approval"] = warning_body()["approval"]
    status, answer = await post(api, corrected)
    assert status == 202, answer
    stages = [e["stage"] for e in await ledger(api, first["id"])]
    assert stages[:6] == ["received", "rejected", "received", "rejected", "received", "authorized"]
    entries = await ledger(api, first["id"])
    assert [e["data"]["code"] for e in entries if e["stage"] == "rejected"] == [code, code]
