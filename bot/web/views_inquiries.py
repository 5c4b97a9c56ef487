"""Residents' inquiries: the list with their 24-hour clocks, and one inquiry with its full timeline."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from bot.web.views_base import render, station
from bot.web.views_incidents import actor_name
from models.tickets import Ticket, TicketEvent, TicketStatus

STATUS_ZH = {TicketStatus.open: "待答复", TicketStatus.responded: "已答复", TicketStatus.feedback: "已反馈进展",
             TicketStatus.closed: "已办结"}
EVENT_ZH = {"opened": "居民提问", "kb_answered": "知识库答复", "acknowledged": "公号回执", "pinged": "私信民警",
            "responded": "民警答复", "answered": "民警答复", "feedback": "反馈进展", "closed": "办结",
            "reminded": "提醒民警", "breached": "超过24小时", "escalated": "报告所领导", "asked_again": "再次提问",
            "transferred": "转交"}


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/inquiries", inquiry_list)
    router.add_get(r"/inquiries/{number:\d+}", inquiry_page)


async def inquiry_list(request: web.Request) -> web.StreamResponse:
    st = station(request)
    status = request.query.get("status", "open")
    async with st.db.session() as session:
        query = select(Ticket).where(Ticket.station_id == st.id).order_by(Ticket.id.desc()).limit(200)
        if status in {s.value for s in TicketStatus}:
            query = query.where(Ticket.status == status)
        tickets = (await session.scalars(query)).all()
    now = st.now()
    rows = [{"id": t.id, "group": t.group_name, "resident": t.resident_name, "text": t.text[:80],
             "status": STATUS_ZH.get(t.status, t.status), "created_at": t.created_at, "due_at": t.due_at,
             "overdue": t.status == TicketStatus.open and t.due_at <= now, "breached": t.breached} for t in tickets]
    filters = [(s.value, STATUS_ZH[s]) for s in TicketStatus] + [("all", "全部")]
    return render(request, "inquiries.html", nav="inquiries", title="居民咨询", rows=rows, filters=filters,
                  current_status=status)


async def inquiry_page(request: web.Request) -> web.StreamResponse:
    st = station(request)
    config = st.current.config
    number = int(request.match_info["number"])
    async with st.db.session() as session:
        ticket = await session.get(Ticket, number)
        if ticket is None or ticket.station_id != st.id:
            raise web.HTTPNotFound(text=f"没有咨询 #{number}")
        events = (await session.scalars(
            select(TicketEvent).where(TicketEvent.ticket_id == number).order_by(TicketEvent.id))).all()
    residents = {ticket.resident_id: ticket.resident_name or ticket.resident_id}
    timeline = [{"at": e.at, "kind": EVENT_ZH.get(e.kind, e.kind), "actor": actor_name(config, e.actor, residents),
                 "detail": e.detail} for e in events]
    assignee = config.officer(ticket.assignee)
    return render(request, "inquiry.html", nav="inquiries", title=f"咨询 #{ticket.id}", ticket=ticket,
                  status_zh=STATUS_ZH.get(ticket.status, ticket.status), timeline=timeline,
                  assignee=assignee.name if assignee else ticket.assignee)
