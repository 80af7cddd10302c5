"""A warning's page in the console: the live fragment (header, channels, dead letters, timing,
township coverage) and the manual confirmation form, which stays outside the fragment so a live
update never wipes what an operator is typing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.console.pages import (
    CHANNEL_NAMES,
    MSG_TYPES,
    channel_bars,
    e,
    layout,
    level_badge,
    local_time,
    state_badge,
    warning_href,
)
from gateway.console.sessions import Session
from gateway.receipts import MEANS
from gateway.reports.filing import BEIJING

FILING_KEYS = (
    "单位名称",
    "预警信息类别",
    "预警信息发布时间",
    "预警信息级别",
    "发布对象",
    "预警有效期",
    "预警信息传播方式",
    "预警信息主要内容",
    "备注",
)
STAGE_NAMES = {
    "received": "接收",
    "rejected": "拒绝",
    "authorized": "审核通过",
    "planned": "已计划",
    "queued": "入队",
    "attempt": "尝试发送",
    "sent": "已发送",
    "delivered": "已送达",
    "failed": "失败",
    "receipt": "回执",
    "superseded": "被更新",
    "cancelled": "已解除",
    "expired": "已过期",
    "escalated": "已上报",
}
CELL_NAMES = {"covered": "已覆盖", "pending": "待覆盖", "blind": "盲区", "escalated": "已上报"}
MEANS_NAMES = {"other": "其他方式"}
NOTICES = {
    "recorded": "人工确认已记录。",
    "duplicate": "该人工确认此前已记录。",
    "csrf": "表单已过期，请重新提交。",
}


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} 秒"


def header(p: Mapping[str, Any]) -> str:
    form = p["filing"]
    facts = "".join(f"<dt>{e(k)}</dt><dd>{e(form.get(k, ''))}</dd>" for k in FILING_KEYS)
    chain = []
    if p.get("references"):
        ref = p["references"]
        chain.append(f'<li>替代：<a href="{e(warning_href(ref))}">{e(ref)}</a></li>')
    for s in p["successors"]:
        kind = MSG_TYPES.get(s["msg_type"], s["msg_type"])
        chain.append(
            f'<li>{e(kind)}：<a href="{e(warning_href(s["id"]))}">{e(s["title"])}</a>'
            f' <span class="muted">{e(s["id"])}</span></li>'
        )
    chain_html = (
        f'<nav aria-label="更新与解除"><h3>更新链</h3><ol class="chain">{"".join(chain)}</ol></nav>'
        if chain
        else ""
    )
    return (
        f'<div class="head"><h1>{level_badge(p["level"])} {e(p["title"])}</h1>'
        f"<p>{state_badge(p['status'])} {e(p['hazard'])} · {e(p['issuer_unit'])} · "
        f'{e(p["area"])} · <span class="muted">{e(p["id"])}</span></p></div>'
        f'<section aria-labelledby="h-filing"><h2 id="h-filing">备案要点</h2>'
        f'<dl class="facts">{facts}</dl>'
        f'<p><a href="{e(warning_href(p["id"]))}/filing" target="_blank">备案表打印视图</a></p>'
        f"{chain_html}</section>"
    )


def channels_table(p: Mapping[str, Any]) -> str:
    rows = []
    for kind, label in (("channels", "预警"), ("escalations", "上报")):
        for name, c in sorted(p[kind].items()):
            rows.append(
                f'<tr><th scope="row">{e(label)} · {e(CHANNEL_NAMES.get(name, name))}</th>'
                + "".join(
                    f"<td>{c.get(k, 0)}</td>"
                    for k in ("planned", "delivered", "sent", "pending", "failed", "stopped")
                )
                + "</tr>"
            )
    return (
        '<section aria-labelledby="h-ch"><h2 id="h-ch">各渠道发送情况</h2>'
        f'<div class="bars">{channel_bars(p["channels"])}</div>'
        '<table><thead><tr><th scope="col">渠道</th><th scope="col">计划</th>'
        '<th scope="col">已送达</th><th scope="col">待回执</th><th scope="col">待发送</th>'
        '<th scope="col">失败</th><th scope="col">已停止</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def dead_letters(p: Mapping[str, Any]) -> str:
    items = p["dead_letters"]
    if not items:
        body = '<p class="muted">无失败投递。</p>'
    else:
        body = (
            '<table><thead><tr><th scope="col">渠道</th><th scope="col">终端</th>'
            '<th scope="col">尝试次数</th><th scope="col">最后错误</th></tr></thead><tbody>'
            + "".join(
                f"<tr><td>{e(CHANNEL_NAMES.get(d['channel'], d['channel']))}</td>"
                f"<td>{e(d['endpoint'])}</td><td>{d['attempts']}</td><td>{e(d['error'])}</td></tr>"
                for d in items
            )
            + "</tbody></table>"
        )
    return (
        f'<section aria-labelledby="h-dead"><h2 id="h-dead">失败投递（{len(items)}）</h2>'
        f"{body}</section>"
    )


def timing(p: Mapping[str, Any]) -> str:
    ch = "".join(
        f'<tr><th scope="row">{e(CHANNEL_NAMES.get(name, name))}</th>'
        f"<td>{seconds(t['first_s'])}</td><td>{seconds(t['last_s'])}</td><td>{int(t['count'])}</td></tr>"
        for name, t in sorted(p["channel_times"].items())
    )
    stages = "".join(
        f'<tr><th scope="row">{e(STAGE_NAMES.get(s["stage"], s["stage"]))}</th>'
        f"<td>{s['first_ms'] / 1000:.3f} 秒</td><td>{s['count']}</td></tr>"
        for s in p["stages"]
    )
    tail = "".join(
        f"<li><time>{e(local_time(t['at']))}</time> "
        f"<b>{e(STAGE_NAMES.get(t['stage'], t['stage']))}</b>"
        f" {e(_entry_text(t['data']))}</li>"
        for t in reversed(p["timeline"])
    )
    return (
        '<section aria-labelledby="h-time"><h2 id="h-time">回执与环节计时</h2>'
        "<p>全部乡镇覆盖用时："
        f'<strong id="full-coverage">{seconds(p["full_coverage_s"])}</strong></p>'
        '<div class="cols"><table><caption>各渠道首次/末次送达（自接收起）</caption>'
        '<thead><tr><th scope="col">渠道</th><th scope="col">首次</th><th scope="col">末次</th>'
        f'<th scope="col">条数</th></tr></thead><tbody>{ch}</tbody></table>'
        '<table><caption>各环节首次出现（自接收起）</caption><thead><tr><th scope="col">环节</th>'
        f'<th scope="col">首次</th><th scope="col">记录数</th></tr></thead><tbody>{stages}</tbody>'
        f"</table></div><h3>最近记录（共 {p['entries']} 条）</h3>"
        f'<ol class="tail" reversed>{tail}</ol></section>'
    )


def _entry_text(data: Mapping[str, Any]) -> str:
    keys = ("channel", "endpoint", "township", "means", "by", "status", "reason", "error")
    return " ".join(f"{data[k]}" for k in keys if data.get(k) not in (None, ""))


def reached(t: Mapping[str, Any]) -> str:
    """What reached a township, and when."""
    by = t.get("covered_by") or {}
    if not t.get("covered_at"):
        return f"上报于 {local_time(t['escalated_at'])}" if t.get("escalated_at") else ""
    if "means" in by:
        what = f"{MEANS_NAMES.get(by['means'], by['means'])}（{by.get('by', '')}）"
    else:
        what = f"{CHANNEL_NAMES.get(by.get('channel', ''), by.get('channel', ''))}"
    return f"{what} {local_time(t['covered_at'])}"


def cell_label(t: Mapping[str, Any]) -> str:
    """The cell's state in words, with the marks its colour does not show."""
    words = [CELL_NAMES[t["cell"]]]
    if t["blind_spot"] and t["cell"] != "blind":
        words.append("盲区")
    if t.get("escalated_at") and t["cell"] != "escalated":
        words.append("已上报")
    return " · ".join(words)


def coverage(p: Mapping[str, Any]) -> str:
    c = p["coverage"]["counts"]
    districts = []
    for d in p["districts_coverage"]:
        cells = "".join(
            f'<li class="cell cell-{e(t["cell"])}" data-township="{e(t["township"])}" '
            f'data-state="{e(t["cell"])}"><span class="tn">{e(t["name"])}</span>'
            f'<span class="tc">{e(t["township"])}</span>'
            f'<span class="ts">{e(cell_label(t))}</span>'
            f'<span class="tw">{e(reached(t))}</span></li>'
            for t in d["rows"]
        )
        districts.append(f'<h3>{e(d["name"])}（{e(d["code"])}）</h3><ul class="grid">{cells}</ul>')
    legend = "".join(f'<li class="cell-{k}">{v}</li>' for k, v in CELL_NAMES.items())
    return (
        '<section aria-labelledby="h-cov"><h2 id="h-cov">乡镇（街道）覆盖</h2>'
        f"<p>共 {c['townships']} 个，已覆盖 {c['covered']}，待覆盖 {c['pending']}，"
        f"盲区 {c['blind_spots']}，已上报 {c['escalated']}；"
        f"截止 {e(local_time(p['coverage']['deadline_at'], date=True))}</p>"
        f'<ul class="legend" aria-label="图例">{legend}</ul>{"".join(districts)}</section>'
    )


def warning_fragment(p: Mapping[str, Any]) -> str:
    return header(p) + channels_table(p) + coverage(p) + timing(p) + dead_letters(p)


def confirm_form(p: Mapping[str, Any], session: Session, now: datetime, notice: str | None) -> str:
    """Manual confirmation (art. 20) for a township of the client's districts."""
    client = session.client
    if "confirm" not in client.scopes:
        return ""
    towns = [
        t
        for d in p["districts_coverage"]
        for t in d["rows"]
        if client.allows_district(t["district"])
    ]
    if not towns:
        return ""
    first = next((t for t in towns if t["cell"] != "covered"), towns[0])
    options = "".join(
        f'<option value="{e(t["township"])}"{" selected" if t is first else ""}>'
        f"{e(t['name'])}（{e(t['township'])}）</option>"
        for t in towns
    )
    means = "".join(f'<option value="{e(m)}">{e(MEANS_NAMES.get(m, m))}</option>' for m in MEANS)
    local = now.astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S")
    message = (
        f'<p class="notice" role="status">{e(NOTICES.get(notice or "", notice or ""))}</p>'
        if notice
        else ""
    )
    return (
        '<section aria-labelledby="h-confirm" class="confirm"><h2 id="h-confirm">人工确认</h2>'
        "<p>无终端或未确认的乡镇（街道）经鸣锣、吹哨、敲门入户等方式传达后，在此记录。</p>"
        f"{message}"
        f'<form method="post" action="{e(warning_href(p["id"]))}/confirmations">'
        f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
        '<label for="c-township">乡镇（街道）</label>'
        f'<select id="c-township" name="township">{options}</select>'
        f'<label for="c-means">方式</label><select id="c-means" name="means">{means}</select>'
        '<label for="c-by">确认人</label><input id="c-by" name="by" required maxlength="200">'
        '<label for="c-at">时间（北京时间）</label>'
        f'<input id="c-at" name="at" type="datetime-local" step="1" required value="{e(local)}">'
        '<button type="submit">记录人工确认</button></form></section>'
    )


def warning_document(p: Mapping[str, Any], session: Session, fragment: str, form: str) -> str:
    wid = p["id"]
    main = (
        f'<p><a href="/console">← 预警列表</a></p>'
        f'<section id="live" aria-label="预警详情（实时更新）" data-warning="{e(wid)}" '
        f'data-fragment="/console/fragments{e(warning_href(wid).removeprefix("/console"))}">'
        f"{fragment}</section>{form}"
    )
    return layout(str(p["title"]), main, session=session, page="warning")
