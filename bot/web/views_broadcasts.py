"""The broadcast console: warnings to the residents' groups from the web, with the same steps and the same
functions (``handlers.broadcasts``) as the private-chat command 预警 / 确认 / 取消.

Everyone logged in sees the list and each warning's progress. Writing, confirming and cancelling need the
officer or admin role *and* a linked officer (``web.users[].officer``) whose role may broadcast
(``broadcast.roles``); the warning is then that officer's, who is also told privately when it has gone out.
Only the officer who wrote a draft confirms it, before it expires (``broadcast.draft_expires``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.config.schema import Config, OfficerConfig, WebRole
from bot.web.auth import has_role
from bot.web.views_base import ROLE_ZH, redirect, render, session_of, station
from handlers import broadcasts
from handlers.runtime import ConfigVersion, Station
from models.tables import Broadcast, BroadcastDelivery, BroadcastStatus

log = logging.getLogger(__name__)

MAX_TEXT = 1000
PAGE_SIZE = 50
REFRESH_SECONDS = 3
STATUS_ZH = {"draft": "草稿（未发送）", "sending": "发送中", "done": "已发完", "cancelled": "已取消"}
DELIVERY_ZH = {"queued": "待发送", "sent": "已送达", "failed": "发送失败", "skipped": "已跳过",
               "cancelled": "已取消"}
NOTICES = {
    "draft": ("ok", "草稿已保存，尚未发送。请核对下面的预览，确认后才会发到各群。"),
    "started": ("ok", "已确认，正在逐个群发送（紧急消息优先，预警按节奏发出）。"),
    "cancelled": ("ok", "已取消。"),
    "already": ("warn", "这条预警已经不是草稿，没有重复发送。"),
    "expired": ("warn", "这份草稿已过期，没有发送。请重新编写。"),
    "not_yours": ("warn", "只有起草人本人可以确认发送这份草稿。"),
    "finished": ("warn", "这条预警已经结束，无需取消。"),
}

BroadcasterHandler = Callable[[web.Request, OfficerConfig], Awaitable[web.StreamResponse]]


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/broadcasts", broadcast_list)
    router.add_get("/broadcasts/new", new_form)
    router.add_post("/broadcasts", create)
    router.add_get(r"/broadcasts/{number:\d+}", broadcast_page)
    router.add_post(r"/broadcasts/{number:\d+}/confirm", confirm_broadcast)
    router.add_post(r"/broadcasts/{number:\d+}/cancel", cancel_broadcast)


# -- who may --------------------------------------------------------------------------------------------
def broadcaster(request: web.Request) -> OfficerConfig | None:
    """The officer this login broadcasts as, or None when it may not."""
    session = session_of(request)
    if not has_role(session.role, WebRole.officer) or not session.officer:
        return None
    config = station(request).current.config
    officer = config.officer(session.officer)
    return officer if officer is not None and broadcasts.may_broadcast(config, officer) else None


def _refusal(request: web.Request) -> web.Response:
    session = session_of(request)
    config = station(request).current.config
    roles = "、".join(ROLE_ZH.get(str(r), str(r)) for r in config.broadcast.roles)
    if not has_role(session.role, WebRole.officer):
        message = "此操作需要“民警”或更高权限。"
    elif not session.officer:
        message = "您的网页账号没有关联民警，不能发送预警（请管理员在 web.users 里为账号设置 officer）。"
    else:
        message = f"只有{roles}可以发送预警。"
    return render(request, "error.html", status=403, title="无权访问", message=message)


def broadcasters_only(handler: BroadcasterHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        officer = broadcaster(request)
        if officer is None:
            return _refusal(request)
        return await handler(request, officer)

    return checked


# -- helpers --------------------------------------------------------------------------------------------
def _peers(st: Station) -> dict[str, ConfigVersion]:
    return dict(getattr(st, "peers", None) or {})


def may_district(st: Station, officer: OfficerConfig) -> bool:
    check = getattr(broadcasts, "may_broadcast_district", None)
    return bool(_peers(st)) and check is not None and check(st.current.config, officer)


def _scope_text(config: Config, broadcast: Broadcast) -> str:
    if getattr(broadcast, "district", False):
        return "全区所有派出所的群"
    chosen = [g.display_name for g in config.groups if g.id in (broadcast.scope or [])]
    if chosen and len(chosen) == len(config.groups):
        return f"全部{len(chosen)}个群"
    return "、".join(chosen) or "（无）"


def _creator(config: Config, broadcast: Broadcast) -> str:
    officer = config.officer(broadcast.created_by)
    return officer.name if officer else broadcast.created_by


def _expired(config: Config, broadcast: Broadcast, now: datetime) -> bool:
    return bool(broadcast.created_at < now - config.broadcast.draft_expires)


async def _load(st: Station, number: int) -> Broadcast:
    async with st.db.session() as s:
        found = await s.get(Broadcast, number)
    if found is None or found.station_id != st.id:
        raise web.HTTPNotFound()
    return found


# -- pages ----------------------------------------------------------------------------------------------
async def broadcast_list(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    async with st.db.session() as s:
        found = await broadcasts.list_broadcasts(s, st.id, limit=PAGE_SIZE)
    rows = [{"id": b.id, "status": b.status, "status_label": STATUS_ZH.get(b.status, b.status),
             "text": b.text, "scope": _scope_text(config, b), "creator": _creator(config, b),
             "created_at": b.created_at, "progress": p} for b, p in found]
    active = any(b.status == BroadcastStatus.sending for b, _ in found)
    return render(request, "broadcasts.html", nav="broadcasts", title="预警", rows=rows,
                  can_write=broadcaster(request) is not None, refresh=REFRESH_SECONDS if active else 0)


def _form_page(request: web.Request, officer: OfficerConfig, *, form: dict[str, Any] | None = None,
               error: str = "", status: int = 200) -> web.Response:
    st = station(request)
    config = st.current.config
    form = form or {"text": "", "scope": "all", "groups": []}
    return render(request, "broadcast_new.html", status=status, nav="broadcasts", title="编写预警",
                  groups=[(g.id, g.display_name) for g in config.groups], form=form, error=error,
                  officer=officer, max_text=MAX_TEXT, district=may_district(st, officer),
                  expires=config.broadcast.draft_expires)


@broadcasters_only
async def new_form(request: web.Request, officer: OfficerConfig) -> web.StreamResponse:
    return _form_page(request, officer)


@broadcasters_only
async def create(request: web.Request, officer: OfficerConfig) -> web.StreamResponse:
    st = station(request)
    live = st.current
    config = live.config
    data = await request.post()
    text = str(data.get("text", "")).replace("\r\n", "\n").replace("\r", "\n").strip()
    scope = str(data.get("scope", "all"))
    wanted = [str(v) for v in data.getall("group", [])]
    form = {"text": text[:MAX_TEXT * 2], "scope": scope, "groups": wanted}
    district = scope == "district"
    if scope not in ("all", "some", "district") or (district and not may_district(st, officer)):
        return _form_page(request, officer, form=form, error="请选择发送范围。", status=400)
    if not text:
        return _form_page(request, officer, form=form, error="请填写预警内容。", status=400)
    if len(text) > MAX_TEXT:
        return _form_page(request, officer, form=form, error=f"预警内容最多 {MAX_TEXT} 个字。", status=400)
    if scope == "some":
        unknown = [w for w in wanted if w not in {g.id for g in config.groups}]
        groups = [g for g in config.groups if g.id in wanted]
        if unknown or not groups:
            error = "所选的群不存在，请刷新页面后重选。" if unknown else "请至少选择一个群。"
            return _form_page(request, officer, form=form, status=400, error=error)
    else:
        groups = broadcasts.resolve_scope(config, "")[0]
    extra = {"district": True} if district else {}
    async with st.db.session() as s, s.begin():
        draft = await broadcasts.create_draft(s, live, officer.id, officer.wechat_id, text, groups, st.now(),
                                              **extra)
    log.info("web: %s drafted warning #%s for %s groups", session_of(request).username, draft.id, len(groups))
    return redirect(f"/broadcasts/{draft.id}?notice=draft")


async def broadcast_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    live = st.current
    config = live.config
    number = int(request.match_info["number"])
    now = st.now()
    async with st.db.session() as s:
        found = await s.get(Broadcast, number)
        if found is None or found.station_id != st.id:
            raise web.HTTPNotFound()
        progress = await broadcasts.progress(s, number)
        deliveries = (await s.scalars(
            select(BroadcastDelivery).where(BroadcastDelivery.broadcast_id == number)
            .order_by(BroadcastDelivery.id))).all()
    names = {(config.station.id, g.id): g.display_name for g in config.groups}
    for station_id, peer in _peers(st).items():
        names.update({(station_id, g.id): f"{peer.config.station.name} · {g.display_name}"
                      for g in peer.config.groups})
    rows = [{"group": names.get((getattr(d, "station_id", None) or config.station.id, d.group_id),
                                d.group_id),
             "group_id": d.group_id, "status": d.status, "status_label": DELIVERY_ZH.get(d.status, d.status),
             "sent_at": d.sent_at, "reason": d.reason or "", "attempts": d.attempts} for d in deliveries]
    officer = broadcaster(request)
    is_draft = found.status == BroadcastStatus.draft
    expired = is_draft and _expired(config, found, now)
    notice = NOTICES.get(request.query.get("notice", ""))
    stopped = request.query.get("stopped", "")
    if notice and request.query.get("notice") == "cancelled" and stopped.isdigit() and int(stopped):
        notice = (notice[0], f"已取消，{int(stopped)}个群未发送。")
    return render(
        request, "broadcast.html", nav="broadcasts", title=f"预警 #{found.id}", broadcast=found, rows=rows,
        progress=progress, status_label=STATUS_ZH.get(found.status, found.status),
        scope=_scope_text(config, found), creator=_creator(config, found), notice=notice,
        preview=broadcasts.preview_text(live, found, _peers(st)) if is_draft else "",
        group_text=broadcasts.group_text(config, found), expired=expired,
        expires_at=found.created_at + config.broadcast.draft_expires,
        can_confirm=bool(officer and is_draft and not expired and found.created_by == officer.id),
        can_cancel=bool(officer and found.status in (BroadcastStatus.draft, BroadcastStatus.sending)),
        can_write=officer is not None,
        others_draft=bool(officer and is_draft and found.created_by != officer.id),
        refresh=REFRESH_SECONDS if found.status == BroadcastStatus.sending else 0,
    )


@broadcasters_only
async def confirm_broadcast(request: web.Request, officer: OfficerConfig) -> web.StreamResponse:
    st = station(request)
    live = st.current
    number = int(request.match_info["number"])
    await _load(st, number)
    now = st.now()
    async with st.db.session() as s, s.begin():
        found = await s.get(Broadcast, number)
        assert found is not None
        if found.status != BroadcastStatus.draft:
            outcome = "already"
        elif found.created_by != officer.id:
            outcome = "not_yours"
        elif _expired(live.config, found, now):
            outcome = "expired"
        else:
            # None: another request confirmed or cancelled it since it was read above (a double tap)
            count = await broadcasts.confirm(s, live, found, now, _peers(st))
            outcome = "already" if count is None else "started"
    if outcome == "started":
        st.outbox_ready.set()
        log.info("web: %s confirmed warning #%s", session_of(request).username, number)
    return redirect(f"/broadcasts/{number}?notice={outcome}")


@broadcasters_only
async def cancel_broadcast(request: web.Request, officer: OfficerConfig) -> web.StreamResponse:
    st = station(request)
    number = int(request.match_info["number"])
    await _load(st, number)
    stopped = 0
    async with st.db.session() as s, s.begin():
        found = await s.get(Broadcast, number)
        assert found is not None
        if found.status in (BroadcastStatus.draft, BroadcastStatus.sending):
            stopped = await broadcasts.cancel(s, st.current, found, st.now())
            outcome = "cancelled"
        else:
            outcome = "finished"
    if outcome == "cancelled":
        log.info("web: %s (%s) cancelled warning #%s (%s deliveries stopped)", session_of(request).username,
                 officer.id, number, stopped)
    return redirect(f"/broadcasts/{number}?notice={outcome}&stopped={stopped}")
