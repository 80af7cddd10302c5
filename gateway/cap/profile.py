"""The CAP 1.2 profile the gateway reads and writes: design.md, "Warning", CAP paragraph.

The profile is the one China's national warning system uses: a `zh-CN` info block (an `en-US`
block may come with it), urgency and certainty `Unknown`, severity for the colour level, and
`CPEAS Geographic Code` geocodes of 12 digits (`XXXXXX000000` a district, `XXXXXXXXX000` a
township). What CAP has no element for travels in `<parameter>` entries named like the JSON
fields (`PARAMETERS`). `gateway.cap.read` reads CAP with these tables, `gateway.cap.write`
writes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

DEFAULT_CAP_SENDER = "cq-warning-gateway@example.org"
CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CPEAS = "CPEAS Geographic Code"
SCHEMA_PATH = Path(__file__).resolve().parent / "CAP-v1.2.xsd"
INVALID_CAP = "invalid_cap"

NS = f"{{{CAP_NS}}}"
ROOT = "alert"
LEVEL_BY_SEVERITY = {"Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4}
SEVERITY_BY_LEVEL = {level: severity for severity, level in LEVEL_BY_SEVERITY.items()}
COLOUR_BY_LEVEL = {1: "red", 2: "orange", 3: "yellow", 4: "blue"}
LEVEL_BY_COLOUR = {
    **{colour: level for level, colour in COLOUR_BY_LEVEL.items()},
    "红色": 1,
    "橙色": 2,
    "黄色": 3,
    "蓝色": 4,
}
MSG_TYPE_IN = {"Alert": "alert", "Update": "update", "Cancel": "cancel"}
MSG_TYPE_OUT = {v: k for k, v in MSG_TYPE_IN.items()}
STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
# CAP 1.2, 3.2.1: identifier and sender must not hold spaces, commas or the restricted characters
# '<' and '&'.
CAP_TOKEN = re.compile(r"[^\s,<&]+")
PHONE = re.compile(r"[0-9+()\- ]{3,40}")
LIST_SEP = re.compile(r"\s*[,，]\s*")
CHANNEL_SEP = re.compile(r"[\s,，]+")
# Characters XML 1.0 cannot carry at all (C0 controls other than tab, LF, CR; U+FFFE, U+FFFF).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

# <parameter> valueName → JSON field, for the plain text fields.
TEXT_PARAMETERS = {
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
    *TEXT_PARAMETERS,
)
"""The `<parameter>` valueNames the gateway reads and writes; others are ignored on input."""

# The gateway's hazards (annex 1) → CAP <category>. public_health is Health and social_safety is
# Security whatever the hazard; natural and accident disasters go by the first keyword in the
# hazard name below (CAP: "Met - meteorological (inc. flood)", "Geo - geophysical (inc.
# landslide)"); anything else is Other.
CAP_CATEGORY_BY_GATEWAY = {"public_health": "Health", "social_safety": "Security"}
CAP_CATEGORY_BY_KEYWORD: tuple[tuple[tuple[str, ...], str], ...] = (
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
GATEWAY_CATEGORY_BY_CAP = {
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
