"""What every admin page shares: the app keys, rendering with the session's context, role checks, and the
Chinese labels and time formats used across pages."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from bot.config.schema import Config, WebRole
from bot.web.auth import CSRF_FIELD, ROLE_LABELS, LoginLimiter, SessionStore, WebSession, has_role
from handlers.metrics import Metrics
from handlers.oncall import Coverage, on_shift
from handlers.runtime import Station

if TYPE_CHECKING:
    from bot.app import App

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")

APP_KEY: web.AppKey[App] = web.AppKey("gonghao_app")
SESSIONS_KEY: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
LIMITER_KEY: web.AppKey[LoginLimiter] = web.AppKey("login_limiter", LoginLimiter)
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
JINJA_KEY: web.AppKey[jinja2.Environment] = web.AppKey("jinja", jinja2.Environment)
# aiohttp ≥ 3.14 wants typed request keys; older versions take a plain string.
SESSION_REQUEST_KEY: Any = (web.RequestKey("gonghao_session", WebSession) if hasattr(web, "RequestKey")
                            else "gonghao_session")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_LABELS = {"open": "待接警", "acknowledged": "处理中", "resolved": "已处理"}
EVENT_LABELS = {
    "reported": "居民报告",
    "replied": "群内回复",
    "pinged": "私信民警",
    "reminded": "提醒民警",
    "acknowledged": "民警接警",
    "ack_lapsed": "接警未处理，重新派警",
    "group_told": "告知群内",
    "escalated": "升级通知",
    "escalation_stopped": "停止升级",
    "overdue": "超时未处理",
    "severity_raised": "级别提升",
    "transferred": "转交",
    "resolved": "处理完毕",
}
ROLE_ZH = {"community": "社区民警", "duty": "值班民警", "supervisor": "所领导", "antifraud": "反诈民警",
           "general": "综合民警", "public_order": "治安民警"}
OUTBOX_STATUS = {"pending": "待发送", "sending": "发送中", "sent": "已发送", "failed": "发送失败"}
OUTBOX_KINDS = {"reply": "群内回复", "ping": "私信民警", "ack": "接警告知", "result": "处理结果",
                "reminder": "提醒", "escalation": "升级通知", "command_reply": "指令回复", "digest": "汇总"}


def gonghao(request: web.Request) -> App:
    return request.app[APP_KEY]


def station(request: web.Request) -> Station:
    app = gonghao(request)
    if app.station is None:
        raise web.HTTPServiceUnavailable(text="the bot is not started")
    return app.station


def session_of(request: web.Request) -> WebSession:
    return request[SESSION_REQUEST_KEY]  # type: ignore[no-any-return]


def requires(role: WebRole) -> Callable[[Handler], Handler]:
    """Refuse (403, Chinese page) unless the session's role is at least ``role``."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            if not has_role(session_of(request).role, role):
                return render(request, "error.html", status=403, title="无权访问",
                              message=f"此操作需要“{ROLE_LABELS[role]}”或更高权限。")
            return await handler(request)

        return checked

    return wrap


# -- formatting -------------------------------------------------------------------------------------
def local(config: Config, at: datetime | None, seconds: bool = False) -> str:
    if at is None:
        return ""
    return at.astimezone(config.zone).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def duration(delta: timedelta | float | None) -> str:
    """A span in Chinese: 45秒, 3分钟, 2小时5分, 1天3小时."""
    if delta is None:
        return "—"
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds < 0:
        seconds = 0
    if seconds < 60:
        return f"{seconds}秒"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}分{rest}秒" if rest and minutes < 10 else f"{minutes}分钟"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}小时{minutes}分" if minutes else f"{hours}小时"
    days, hours = divmod(hours, 24)
    return f"{days}天{hours}小时" if hours else f"{days}天"


def role_zh(role: object) -> str:
    return ROLE_ZH.get(str(role), str(role))


def coverage_reason(config: Config, cover: Coverage, at: datetime) -> str:
    """Why these officers cover the group now, in Chinese, from the same roster production uses."""
    if cover.own_officer_on_shift:
        return "本群社区民警在班"
    if not cover.officers:
        return "无人在班"
    if not any(on_shift(config, o.id, at) for o in cover.officers):
        return "无人在班，转" + "、".join(sorted({role_zh(o.role) for o in cover.officers}))
    return "本群社区民警不在班，由" + "、".join(sorted({role_zh(o.role) for o in cover.officers})) + "负责"


def ping_reason_zh(config: Config, group_id: str | None, officer_id: str | None) -> str:
    """Why an officer was pinged, in Chinese (the stored reason is English, for logs: shown as a tooltip)."""
    officer = config.officer(officer_id or "")
    if officer is None:
        return ""
    group = next((g for g in config.groups if g.id == group_id), None)
    if group is not None and group.officer == officer.id:
        return "本群社区民警"
    return role_zh(officer.role)


def category_label(config: Config, category: str) -> str:
    return config.categories.get(category, category)


def redirect(location: str, status: int = 303) -> web.Response:
    """A redirect returned (not raised), so that the middlewares still add their headers."""
    return web.Response(status=status, headers={"Location": location})


# -- rendering --------------------------------------------------------------------------------------
def make_jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["role_zh"] = role_zh
    env.globals.update(STATUS_LABELS=STATUS_LABELS, EVENT_LABELS=EVENT_LABELS, ROLE_ZH=ROLE_ZH,
                       OUTBOX_STATUS=OUTBOX_STATUS, OUTBOX_KINDS=OUTBOX_KINDS, CSRF_FIELD=CSRF_FIELD)
    return env


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    app = gonghao(request)
    config = app.station.current.config if app.station is not None else None
    session: WebSession | None = request.get(SESSION_REQUEST_KEY)
    base = {
        "station_name": config.station.name if config else "公号",
        "session": session,
        "csrf": session.csrf if session else "",
        "role_label": ROLE_LABELS[session.role] if session else "",
        "can_resolve": bool(session and has_role(session.role, WebRole.officer)),
        "is_admin": bool(session and has_role(session.role, WebRole.admin)),
        "path": request.path,
        "nav": context.pop("nav", ""),
        "title": context.pop("title", ""),
        "local": (lambda at, seconds=False: local(config, at, seconds)) if config else str,
        "category_label": (lambda c: category_label(config, c)) if config else str,
    }
    html = request.app[JINJA_KEY].get_template(template).render(**base, **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
