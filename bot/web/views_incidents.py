"""Dashboard, incident list, one incident with its timeline, and resolving from the web."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from aiohttp import web
from sqlalchemy import func, select

from bot.config.schema import Config, WebRole
from bot.web.views_base import (
    STATUS_LABELS,
    category_label,
    coverage_reason,
    ping_reason_zh,
    redirect,
    render,
    requires,
    session_of,
    station,
)
from handlers.broadcasts import progress as broadcast_progress
from handlers.incidents import resolve
from handlers.oncall import coverage
from handlers.texts import local_time
from models.tables import (
    Broadcast,
    BroadcastStatus,
    InboundMessage,
    Incident,
    IncidentEvent,
    IncidentStatus,
    OutboxMessage,
    OutboxStatus,
)
from models.tickets import Ticket, TicketStatus

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_RESULT_CHARS = 500
STATUS_FILTERS = {
    "all": ("全部", None),
    "active": ("未结", (IncidentStatus.open, IncidentStatus.acknowledged)),
    "open": ("待接警", (IncidentStatus.open,)),
    "acknowledged": ("处理中", (IncidentStatus.acknowledged,)),
    "resolved": ("已处理", (IncidentStatus.resolved,)),
}
NOTICES = {
    "resolved": ("ok", "已标记为处理完毕，处理结果正在发送到群里。"),
    "already": ("warn", "这起警情此前已经处理完毕，未重复发送。"),
}


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/", dashboard)
    router.add_get("/incidents", incident_list)
    router.add_get(r"/incidents/{number:\d+}", incident_page)
    router.add_post(r"/incidents/{number:\d+}/resolve", resolve_incident)


def local_midnight(config: Config, now: datetime) -> datetime:
    local = now.astimezone(config.zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


async def dashboard(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    now = st.now()
    since = local_midnight(config, now)
    async with st.db.session() as s:
        unresolved = (await s.scalars(
            select(Incident)
            .where(Incident.station_id == st.id, Incident.status != IncidentStatus.resolved)
            .order_by(Incident.severity, Incident.created_at)
            .limit(500)
        )).all()

        async def count(query: object) -> int:
            return int(await s.scalar(query) or 0)  # type: ignore[call-overload]

        figures = {
            "opened_today": await count(select(func.count()).select_from(Incident).where(
                Incident.station_id == st.id, Incident.created_at >= since)),
            "resolved_today": await count(select(func.count()).select_from(Incident).where(
                Incident.station_id == st.id, Incident.resolved_at >= since)),
            "messages_today": await count(select(func.count()).select_from(InboundMessage).where(
                InboundMessage.account == st.id, InboundMessage.received_at >= since)),
            "outbox_pending": await count(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.account == st.id, OutboxMessage.status == OutboxStatus.pending)),
            "outbox_failed": await count(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.account == st.id, OutboxMessage.status == OutboxStatus.failed)),
        }
        # inquiries whose 24-hour clock is running out (within 4 hours) or has run out, still unanswered
        inquiries = (await s.scalars(
            select(Ticket).where(Ticket.station_id == st.id, Ticket.status == TicketStatus.open,
                                 Ticket.due_at <= now + timedelta(hours=4))
            .order_by(Ticket.due_at).limit(100))).all()
        sending = (await s.scalars(select(Broadcast).where(Broadcast.station_id == st.id,
                                                           Broadcast.status == BroadcastStatus.sending)
                                   .order_by(Broadcast.id))).all()
        broadcasts_running = [(b, await broadcast_progress(s, b.id)) for b in sending]
    by_severity = Counter(i.severity for i in unresolved)
    rows = [_row(config, i, now) for i in unresolved]
    duty = []
    for group in config.groups:
        cover = coverage(config, group, now)
        duty.append({"group": group.display_name, "group_id": group.id,
                     "reason": coverage_reason(config, cover, now),
                     "officers": [(o.name, o.role) for o in cover.officers]})
    return render(request, "dashboard.html", nav="dashboard", title="总览", rows=rows, figures=figures,
                  by_severity=sorted(by_severity.items()), open_count=len(unresolved), duty=duty, now=now,
                  inquiries=[{"id": t.id, "group": t.group_name, "resident": t.resident_name, "text": t.text[:60],
                              "due": local_time(config, t.due_at), "overdue": t.due_at <= now}
                             for t in inquiries],
                  broadcasts=broadcasts_running)


def _row(config: Config, incident: Incident, now: datetime) -> dict[str, object]:
    assigned = [config.officer(o) for o in incident.assigned_officers or []]
    return {
        "id": incident.id,
        "severity": incident.severity,
        "category": category_label(config, incident.category),
        "group": incident.group_name,
        "reporter": incident.reporter_name or incident.reporter_id,
        "text": incident.text,
        "status": incident.status,
        "status_label": STATUS_LABELS.get(incident.status, incident.status),
        "created_at": incident.created_at,
        "age": now - incident.created_at,
        "officers": "、".join(o.name for o in assigned if o is not None),
    }


async def incident_list(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    status = request.query.get("status", "all")
    if status not in STATUS_FILTERS:
        status = "all"
    try:
        page = max(1, min(int(request.query.get("page", "1")), 10_000))
    except ValueError:
        page = 1
    query = select(Incident).where(Incident.station_id == st.id)
    wanted = STATUS_FILTERS[status][1]
    if wanted is not None:
        query = query.where(Incident.status.in_([str(w) for w in wanted]))
    async with st.db.session() as s:
        found = (await s.scalars(
            query.order_by(Incident.id.desc()).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1))).all()
    now = st.now()
    rows = [_row(config, i, now) for i in found[:PAGE_SIZE]]
    return render(request, "incidents.html", nav="incidents", title="警情", rows=rows, current_status=status,
                  filters=[(key, label) for key, (label, _) in STATUS_FILTERS.items()], page=page,
                  has_next=len(found) > PAGE_SIZE)


Loaded = tuple[Incident, list[IncidentEvent], list[OutboxMessage], dict[str, str]]


async def _load(request: web.Request) -> Loaded:
    st = station(request)
    number = int(request.match_info["number"])
    async with st.db.session() as s:
        incident = await s.get(Incident, number)
        if incident is None or incident.station_id != st.id:
            raise web.HTTPNotFound()
        events = list((await s.scalars(
            # insertion order is causal order; "at" mixes WeChat's timestamps with the server clock
            select(IncidentEvent).where(IncidentEvent.incident_id == number).order_by(IncidentEvent.id)
        )).all())
        deliveries = list((await s.scalars(
            select(OutboxMessage).where(OutboxMessage.incident_id == number).order_by(OutboxMessage.id)
        )).all())
        senders = {e.actor for e in events if e.kind == "reported" and e.actor}
        names: dict[str, str] = {}
        if senders:
            for sender_id, sender_name in (await s.execute(
                select(InboundMessage.sender_id, InboundMessage.sender_name)
                .where(InboundMessage.account == st.id, InboundMessage.sender_id.in_(senders))
                .distinct()
            )).all():
                if sender_name:
                    names[sender_id] = sender_name
    return incident, events, deliveries, names


def actor_name(config: Config, actor: str | None, residents: dict[str, str]) -> str:
    if not actor:
        return "公号"
    officer = config.officer(actor)
    if officer is not None:
        return officer.name
    if actor.startswith("web:"):
        return f"网页账号 {actor.removeprefix('web:')}"
    return residents.get(actor, actor)


def _conversation_name(config: Config, conversation_id: str, incident: Incident) -> str:
    if conversation_id == incident.room_id:
        return incident.group_name or conversation_id
    officer = next((o for o in config.officers if o.wechat_id == conversation_id), None)
    return officer.name if officer else conversation_id


async def incident_page(request: web.Request) -> web.StreamResponse:
    return await _render_incident(request)


async def _render_incident(request: web.Request, *, error: str = "", result_text: str = "",
                           status: int = 200) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    incident, events, deliveries, residents = await _load(request)
    residents.setdefault(incident.reporter_id, incident.reporter_name or incident.reporter_id)
    timeline = []
    for event in events:
        pinged = event.kind in ("pinged", "reminded")
        timeline.append({
            "at": event.at, "kind": event.kind, "actor": actor_name(config, event.actor, residents),
            "role": ping_reason_zh(config, incident.group_id, event.actor) if pinged else "",
            "detail": "" if pinged else event.detail, "note": event.detail if pinged else "",
        })
    sends = [{"kind": d.kind, "to": _conversation_name(config, d.conversation_id, incident),
              "status": d.status, "created_at": d.created_at, "sent_at": d.sent_at, "attempts": d.attempts,
              "error": d.last_error} for d in deliveries]
    notice = NOTICES.get(request.query.get("notice", ""))
    return render(
        request, "incident.html", status=status, nav="incidents", title=f"警情 #{incident.id}",
        incident=incident, row=_row(config, incident, st.now()), timeline=timeline, sends=sends,
        notice=notice,
        acknowledged_by=actor_name(config, incident.acknowledged_by, residents) if incident.acknowledged_by
        else "",
        resolved_by=actor_name(config, incident.resolved_by, residents) if incident.resolved_by else "",
        max_result=MAX_RESULT_CHARS, error=error, result_text=result_text,
    )


@requires(WebRole.officer)
async def resolve_incident(request: web.Request) -> web.StreamResponse:
    st = station(request)
    session = session_of(request)
    number = int(request.match_info["number"])
    form = await request.post()
    result_text = " ".join(str(form.get("result", "")).split())  # one line, as the group will read it
    if not result_text or len(result_text) > MAX_RESULT_CHARS:
        error = "请填写处理结果。" if not result_text else f"处理结果最多 {MAX_RESULT_CHARS} 个字。"
        return await _render_incident(request, error=error, result_text=result_text[:MAX_RESULT_CHARS * 2],
                                      status=400)
    live = st.current
    officer = live.config.officer(session.officer) if session.officer else None
    if officer is not None:
        actor_id, actor = officer.id, officer.name
    else:  # a login not tied to an officer: the group hears the station's name, not a username
        actor_id, actor = f"web:{session.username}"[:64], live.config.station.name
    async with st.db.session() as s, s.begin():
        outcome = await resolve(s, live, actor_id, actor, number, result_text, st.now())
    if outcome.outcome == "not_found":
        raise web.HTTPNotFound()
    if outcome.outcome == "resolved":
        st.outbox_ready.set()
        log.info("web: %s resolved incident #%s", session.username, number)
    return redirect(f"/incidents/{number}?notice={outcome.outcome}")
