"""The console's HTML: the layout, the sign-in form and the warnings list. Every value is
escaped here; pages load only /console/static/ (a strict Content-Security-Policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from gateway.console.sessions import Session
from gateway.console.views import LEVEL_NAMES, STATES, Filters
from gateway.reports.filing import BEIJING
from gateway.store.base import WarningState

CHANNEL_NAMES = {
    "mqtt": "显示屏/广播",
    "webhook": "媒体",
    "sms": "短信",
    "email": "电子邮件",
}
STATE_NAMES: dict[str, str] = {
    WarningState.ACTIVE: "生效中",
    WarningState.SUPERSEDED: "已被更新",
    WarningState.CANCELLED: "已解除",
    WarningState.EXPIRED: "已过期",
}
MSG_TYPES = {"alert": "发布", "update": "更新", "cancel": "解除"}


def e(value: object) -> str:
    return escape(str(value), quote=True)


def warning_href(wid: str) -> str:
    return f"/console/warnings/{quote(wid, safe='')}"


def local_time(iso: str | None, *, date: bool = False) -> str:
    """An ISO time as Beijing time, `HH:MM:SS` (with the date when asked)."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso).astimezone(BEIJING)
    return at.strftime("%m-%d %H:%M:%S" if date else "%H:%M:%S")


def age(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}秒"
    if seconds < 3600:
        return f"{seconds // 60}分钟"
    if seconds < 86400:
        return f"{seconds // 3600}小时{seconds % 3600 // 60}分"
    return f"{seconds // 86400}天"


def level_badge(level: int) -> str:
    return f'<span class="lvl lvl-{int(level)}">{e(LEVEL_NAMES.get(level, level))}</span>'


def state_badge(state: str) -> str:
    return f'<span class="state state-{e(state)}">{e(STATE_NAMES.get(state, state))}</span>'


def layout(title: str, main: str, *, session: Session | None = None, page: str = "") -> str:
    """A whole page; `page` (list, warning) tells console.js what to keep live."""
    nav = ""
    if session is not None:
        nav = (
            f'<nav aria-label="账户"><span>已登录：{e(session.client.name)}</span>'
            '<form method="post" action="/console/sign-out">'
            f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
            '<button type="submit">退出登录</button></form></nav>'
        )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · 预警发布值班台</title>"
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head>'
        f'<body data-page="{e(page)}">'
        '<a class="skip" href="#main">跳到正文</a>'
        '<header class="bar"><p class="brand"><a href="/console">预警信息发布值班台</a></p>'
        f"{nav}</header>"
        '<div id="conn" class="conn" role="alert" hidden>连接已断开，正在重连…</div>'
        '<p id="updated" class="updated" aria-live="polite"></p>'
        f'<main id="main">{main}</main></body></html>'
    )


def sign_in_page(message: str = "") -> str:
    alert = f'<p class="error" role="alert">{e(message)}</p>' if message else ""
    main = (
        '<section class="signin"><h1>登录值班台</h1>'
        "<p>请输入具有查看（read）权限的客户端令牌。</p>"
        f"{alert}"
        '<form method="post" action="/console/sign-in">'
        '<label for="token">令牌</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">登录</button></form></section>'
    )
    return layout("登录", main)


def _select(name: str, label: str, options: Sequence[tuple[str, str]], chosen: str) -> str:
    opts = "".join(
        f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(text)}</option>'
        for v, text in [("", "全部"), *options]
    )
    return (
        f'<label for="f-{name}">{e(label)}</label>'
        f'<select id="f-{name}" name="{name}">{opts}</select>'
    )


def list_page(
    session: Session, filters: Filters, districts: Mapping[str, str], fragment: str
) -> str:
    query = urlencode(
        {
            k: v
            for k, v in (
                ("state", filters.state),
                ("level", filters.level),
                ("district", filters.district),
            )
            if v is not None
        }
    )
    form = (
        '<form class="filters" method="get" action="/console" aria-label="筛选">'
        + _select("state", "状态", [(s, STATE_NAMES[s]) for s in STATES], filters.state or "")
        + _select(
            "level",
            "级别",
            [(str(n), name) for n, name in LEVEL_NAMES.items()],
            str(filters.level or ""),
        )
        + _select("district", "区县", list(districts.items()), filters.district or "")
        + '<button type="submit">筛选</button></form>'
    )
    main = (
        "<h1>预警列表</h1>"
        f"{form}"
        f'<section id="live" aria-label="预警列表（实时更新）" '
        f'data-fragment="/console/fragments/warnings?{e(query)}">{fragment}</section>'
    )
    return layout("预警列表", main, session=session, page="list")


def channel_bars(channels: Mapping[str, Mapping[str, int]]) -> str:
    """Per channel a progress bar delivered / planned, with what waits and what failed."""
    parts = []
    for name in sorted(
        channels, key=lambda c: list(CHANNEL_NAMES).index(c) if c in CHANNEL_NAMES else 9
    ):
        c = channels[name]
        label = CHANNEL_NAMES.get(name, name)
        extra = ""
        if c.get("sent"):
            extra += f' <span class="wait">待回执 {c["sent"]}</span>'
        if c.get("failed"):
            extra += f' <span class="fail">失败 {c["failed"]}</span>'
        parts.append(
            f'<div class="bar-row" data-channel="{e(name)}"><span class="ch">{e(label)}</span>'
            f'<progress max="{max(1, c["planned"])}" value="{c["delivered"]}" '
            f'aria-label="{e(label)} 已送达 {c["delivered"]} / {c["planned"]}"></progress>'
            f'<span class="num">{c["delivered"]}/{c["planned"]}</span>{extra}</div>'
        )
    return "".join(parts) or '<span class="muted">无投递</span>'


def list_fragment(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<p class="muted">没有符合条件的预警。</p>'
    body = "".join(
        f'<tr data-warning="{e(r["id"])}" class="row-{e(r["status"])}">'
        f"<td>{level_badge(r['level'])}</td>"
        f'<td><a href="{e(warning_href(r["id"]))}">{e(r["title"])}</a>'
        f'<div class="muted">{e(MSG_TYPES.get(r["msg_type"], r["msg_type"]))} · '
        f"{e(r['id'])}</div></td>"
        f"<td>{e(r['hazard'])}</td><td>{e(r['issuer_unit'])}</td><td>{e(r['area'])}</td>"
        f"<td>{state_badge(r['status'])}</td>"
        f'<td><time datetime="{e(r["received_at"])}">{e(age(r["age_s"]))}前</time></td>'
        f"<td>{channel_bars(r['channels'])}</td></tr>"
        for r in rows
    )
    return (
        '<table class="warnings"><caption class="sr">预警，最新的在前</caption><thead><tr>'
        '<th scope="col">级别</th><th scope="col">标题</th><th scope="col">灾种</th>'
        '<th scope="col">发布单位</th><th scope="col">区域</th><th scope="col">状态</th>'
        '<th scope="col">已发布</th><th scope="col">各渠道送达</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def message_page(title: str, message: str, session: Session | None = None) -> str:
    main = (
        f'<h1>{e(title)}</h1><p role="alert">{e(message)}</p>'
        '<p><a href="/console">返回预警列表</a></p>'
    )
    return layout(title, main, session=session)
