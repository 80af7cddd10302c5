"""Annex 2 (重庆市突发事件预警信息发布备案表) filled in for one stored warning.

`filing_form` gives the form as a flat dict whose keys are annex 2's own labels (单位名称,
信息标题, 预警信息类别, 预警信息发布时间, ...), every value a string ("" when the warning does
not carry it), plus the machine fields `warning_id` and `generated_at`. `filing_html` lays the
same form out as annex 2's table on a printable, self-contained page.

Times are shown in Beijing time (UTC+08:00). 传播方式 is derived from the deliveries that
actually went out (state `sent` or `delivered`) of the warning itself; escalations to command
centres (art. 21) are not dissemination of the warning to its audience and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any

from gateway.store.base import DeliveryRecord, DeliveryState, StoredWarning
from gateway.values import LEVEL_COLOURS

BEIJING = timezone(timedelta(hours=8), "北京时间")

TITLE = "重庆市突发事件预警信息发布备案表"

# Annex 2's labels, in the order the form lists them.
UNIT = "单位名称"
HEADLINE = "信息标题"
CATEGORY = "预警信息类别"
SENT_AT = "预警信息发布时间"
LEVEL = "预警信息级别"
AUDIENCE = "发布对象"
CHANNELS = "预警信息传播方式"
VALIDITY = "预警有效期"
REASON = "预警信息发布原因"
CONTENT = "预警信息主要内容"
IMPACT = "可能产生的社会经济影响"
REMARKS = "备注"

FORM_FIELDS = (
    UNIT,
    HEADLINE,
    CATEGORY,
    SENT_AT,
    LEVEL,
    AUDIENCE,
    CHANNELS,
    VALIDITY,
    REASON,
    CONTENT,
    IMPACT,
    REMARKS,
)
"""The annex-2 keys of the form, in annex order."""

CATEGORIES = {
    "natural_disaster": "自然灾害",
    "accident_disaster": "事故灾难",
    "public_health": "公共卫生事件",
    "social_safety": "社会安全事件",  # art. 3: 参照本办法执行
}
LEVELS = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
AUDIENCES = {"public": "公众", "responsible_persons": "特定责任人"}

# 传播方式 as annex 2 names them, in annex order (email is not listed there; it reaches the
# township command centres of art. 21).
BROADCAST = "应急广播"
SMS = "短信"
DISPLAY = "电子显示屏"
MEDIA = "媒体（网站/微信/微博等）"
EMAIL = "电子邮件"
CHANNEL_ORDER = (BROADCAST, SMS, DISPLAY, MEDIA, EMAIL)
_SIMPLE_CHANNELS = {"sms": SMS, "email": EMAIL, "webhook": MEDIA}
_MQTT_KINDS = {"display": DISPLAY, "broadcast": BROADCAST}

_USED = (DeliveryState.SENT, DeliveryState.DELIVERED)


def filing_form(
    stored: StoredWarning, deliveries: Sequence[DeliveryRecord], *, now: datetime | None = None
) -> dict[str, Any]:
    """Annex 2 for `stored`, its 传播方式 taken from `deliveries`; see the module docstring."""
    w = stored.warning
    sent_at = _time(w.get("sent_at"))
    expires_at = _time(w.get("expires_at"))
    form: dict[str, Any] = {
        UNIT: _text(w.get("issuer", {}).get("unit")),
        HEADLINE: _text(w.get("title")),
        CATEGORY: CATEGORIES.get(str(w.get("category")), _text(w.get("category"))),
        SENT_AT: beijing_date_time(sent_at) if sent_at else "",
        LEVEL: level_label(w.get("level")),
        AUDIENCE: AUDIENCES.get(str(w.get("audience", "public")), _text(w.get("audience"))),
        CHANNELS: "、".join(channels_used(deliveries)),
        VALIDITY: validity(expires_at - sent_at) if sent_at and expires_at else "",
        REASON: _text(w.get("reason")),
        CONTENT: _text(w.get("content")),
        IMPACT: _text(w.get("impact")),
        REMARKS: "；".join(remarks(w, stored.authorization)),
    }
    form["warning_id"] = stored.id
    form["generated_at"] = (now or datetime.now(BEIJING)).astimezone(BEIJING).isoformat()
    return form


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def beijing_date_time(at: datetime) -> str:
    """`2026年07月01日 14:05:09`, in Beijing time (annex 2: ××年××月××日)."""
    local = at.astimezone(BEIJING)
    return f"{local:%Y}年{local:%m}月{local:%d}日 {local:%H:%M:%S}"


def level_label(level: object) -> str:
    """`一级（红色）` for level 1 (art. 6)."""
    if not isinstance(level, int) or level not in LEVELS:
        return _text(level)
    return f"{LEVELS[level]}（{LEVEL_COLOURS[level]}）"


def validity(span: timedelta) -> str:
    """`0天6小时`, `1天2小时30分钟` (annex 2: ××天××小时); seconds only when not whole minutes."""
    total = max(0, round(span.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{days}天{hours}小时"
    if minutes or seconds:
        text += f"{minutes}分钟"
    if seconds:
        text += f"{seconds}秒"
    return text


def channels_used(deliveries: Sequence[DeliveryRecord]) -> list[str]:
    """Annex 2's names of the means that carried the warning itself, in annex order."""
    used: set[str] = set()
    for d in deliveries:
        if d.purpose or d.state not in _USED:
            continue
        if d.channel == "mqtt":
            used.update(_mqtt_means(d))
        elif d.channel in _SIMPLE_CHANNELS:
            used.add(_SIMPLE_CHANNELS[d.channel])
        else:
            used.add(d.channel)
    known = [name for name in CHANNEL_ORDER if name in used]
    return known + sorted(used - set(CHANNEL_ORDER))


def _mqtt_means(d: DeliveryRecord) -> list[str]:
    """Display board or loudspeaker: from the topic (`.../{kind}/{warning_id}`) or the
    endpoint id's suffix; both when neither tells."""
    topic = d.detail.get("topic")
    if isinstance(topic, str):
        levels = topic.split("/")
        if len(levels) >= 2 and levels[-2] in _MQTT_KINDS:
            return [_MQTT_KINDS[levels[-2]]]
    for kind, name in _MQTT_KINDS.items():
        if d.endpoint_id.endswith(f"-{kind}"):
            return [name]
    return [DISPLAY, BROADCAST]


def remarks(warning: Mapping[str, Any], authorization: Mapping[str, Any]) -> list[str]:
    """备注: the authority the warning went out under (annex 1 row, or art. 26 temporary
    release), joint issuers, approvals (art. 15) and what an update or cancel replaces."""
    out: list[str] = []
    if authorization.get("temporary_release"):
        out.append("未纳入预警信息发布清单，按第二十六条临时发布，应及时纳入清单")
    elif authorization.get("annex1_row") is not None:
        basis = f"依据预警信息发布清单（附件1）第{authorization['annex1_row']}行发布"
        unit = authorization.get("unit")
        out.append(f"{basis}，发布责任单位：{unit}" if unit else basis)
    joint = [j.get("unit") or j.get("role") for j in warning.get("joint_issuers", [])]
    if joint:
        out.append("联合发布：" + "、".join(str(j) for j in joint if j))
    approval = warning.get("approval") or {}
    approved = "，".join(str(v) for v in (approval.get("approved_by"), approval.get("ref")) if v)
    if approved:
        out.append(f"审核：{approved}")
    higher = approval.get("higher_approval") or {}
    if higher.get("unit"):
        ref = f"（{higher['ref']}）" if higher.get("ref") else ""
        out.append(f"经{higher['unit']}批准{ref}")
    msg_type = warning.get("msg_type", "alert")
    if msg_type != "alert" and warning.get("references"):
        what = "终止预警" if msg_type == "cancel" else "调整预警"
        out.append(f"{what}，原预警信息标识：{warning['references']}")
    return out


_CSS = """
@page { size: A4 portrait; margin: 20mm 18mm; }
* { box-sizing: border-box; }
body { font-family: "SimSun", "Songti SC", "Noto Serif CJK SC", serif; font-size: 12pt;
       color: #000; background: #fff; margin: 0 auto; max-width: 180mm; padding: 8mm 0; }
.annex { margin: 0; font-family: "SimHei", "Heiti SC", "Noto Sans CJK SC", sans-serif; }
h1 { font-size: 18pt; text-align: center; margin: 6mm 0 8mm; letter-spacing: 1pt; }
.unit { margin: 0 0 3mm; }
table { width: 100%; border-collapse: collapse; table-layout: fixed; }
th, td { border: 1px solid #000; padding: 2.5mm 3mm; vertical-align: middle; }
th { font-weight: normal; text-align: center; width: 38mm; }
th.side { width: 12mm; writing-mode: vertical-rl; letter-spacing: 4pt; }
th.remarks { letter-spacing: 12pt; }
td { white-space: pre-wrap; word-break: break-all; }
tr.tall td { height: 30mm; vertical-align: top; }
.seal { margin-top: 12mm; text-align: right; line-height: 2.2; padding-right: 10mm; }
.machine { margin-top: 10mm; font-size: 8pt; color: #444; font-family: monospace; }
@media print {
  body { padding: 0; max-width: none; }
  .machine { color: #000; }
  tr, td, th { page-break-inside: avoid; }
}
"""

# Rows of the table under the vertical 预警信息发布单位 cell, as annex 2 lays them out: the
# form's fields between the unit and the remarks.
_TABLE_ROWS = FORM_FIELDS[1:-1]
_TALL = {REASON, CONTENT, IMPACT}


def filing_html(form: Mapping[str, Any]) -> str:
    """`form` as annex 2's table on a printable UTF-8 page; every value is HTML-escaped."""

    def value(key: str) -> str:
        return escape(_text(form.get(key, "")))

    rows: list[str] = []
    for i, key in enumerate(_TABLE_ROWS):
        side = (
            f'<th class="side" rowspan="{len(_TABLE_ROWS)}">预警信息发布单位</th>' if i == 0 else ""
        )
        css = ' class="tall"' if key in _TALL else ""
        rows.append(f"<tr{css}>{side}<th>{escape(key)}</th><td>{value(key)}</td></tr>")
    remarks_th = f'<th class="remarks" colspan="2">{REMARKS}</th>'
    rows.append(f'<tr class="tall">{remarks_th}<td>{value(REMARKS)}</td></tr>')
    title = escape(_text(form.get(HEADLINE, "")))
    head_title = f"{TITLE}：{title}" if title else TITLE
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="zh-CN">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{head_title}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            '<p class="annex">附件2</p>',
            f"<h1>{TITLE}</h1>",
            f'<p class="unit">单位名称：{value(UNIT)}</p>',
            "<table>",
            '<colgroup><col style="width:12mm"><col style="width:38mm"><col></colgroup>',
            *rows,
            "</table>",
            '<p class="seal">单位（盖章）<br>年　　月　　日</p>',
            f'<p class="machine">warning_id: {value("warning_id")}<br>'
            f"generated_at: {value('generated_at')}</p>",
            "</body>",
            "</html>",
            "",
        ]
    )
