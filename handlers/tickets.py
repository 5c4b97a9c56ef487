"""Inquiry tickets with a clock: every resident's question gets a response within the SLA (24 hours by
default) and ends with a result (件件有回应、事事有结果).

Lifecycle: ``open`` (asked; the clock runs) → ``responded`` (an officer answered: in the group by quoting or
@-mentioning the resident, or privately through the bot with "答 35 …") → optionally ``feedback`` ("反馈 35
…", progress on something that takes days) → ``closed`` ("结 35 结果", the group hears the result). Closing
or giving feedback also counts as the first response. Every step is a line on the ticket's timeline.

Timers (run by the scheduler, :func:`run_due_tickets`): reminders to the assignee at the configured points
while nobody has responded, and at the SLA a breach: recorded on the ticket and escalated (by default to the
supervisor) once. As in ``handlers/escalation.py`` the due times live on the row and every transition is a
conditional UPDATE on the state it read, so a restart loses nothing and two processes never take one twice.
A response that comes after the deadline records the breach too, even if no timer ran meanwhile.

Everything here works in the caller's transaction except the timer job, which opens its own per ticket.
Officers' private commands on tickets are in ``handlers/ticket_commands.py``, the SLA report in
``handlers/sla.py``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from difflib import SequenceMatcher
from typing import Any

from sqlalchemy import bindparam, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.inquiry_schema import InquirySettings
from bot.config.schema import Config, GroupConfig, OfficerConfig, Role
from handlers.inbound import Inbound
from handlers.knowledge import Entry, Match, render_answer
from handlers.normalize import normalize
from handlers.oncall import coverage, roster
from handlers.runtime import ConfigVersion, Station
from handlers.texts import local_time, say
from models.appends import add_ticket_event
from models.base import UTCDateTime
from models.outbox import PRIORITY_NORMAL, enqueue
from models.tables import allocate_case_number
from models.tickets import Ticket, TicketStatus

log = logging.getLogger(__name__)

BATCH = 50
_DEFAULT_SETTINGS = InquirySettings()
_ROLES = {"duty": Role.duty, "supervisor": Role.supervisor, "antifraud": Role.antifraud,
          "general": Role.general, "public_order": Role.public_order, "community": Role.community}


def settings_of(config: Config) -> InquirySettings:
    """The config's inquiry settings (the defaults until ``Config.inquiries`` exists)."""
    found = getattr(config, "inquiries", None)
    return found if found is not None else _DEFAULT_SETTINGS


def group_of(config: Config, ticket: Ticket) -> GroupConfig | None:
    return next((g for g in config.groups if g.id == ticket.group_id), None)


def _at(value: datetime) -> Any:
    """A datetime as a bound SQL value of the column type (aware in, UTC stored, on both databases)."""
    return literal(value, UTCDateTime())


# -- who answers -----------------------------------------------------------------------------------------
def resolve_target(config: Config, group: GroupConfig | None, target: str, now: datetime
                   ) -> tuple[OfficerConfig, ...]:
    """Officers a target names: own (the group's community officer), covering (who covers the group now),
    a role (its members on duty, else those not away, else all of them), or an officer id."""
    if target == "own":
        own = config.officer(group.officer) if group and group.officer else None
        return (own,) if own else ()
    if target == "covering":
        return coverage(config, group, now).officers
    if target in _ROLES:
        members = [o for o in config.officers if o.role == _ROLES[target]]
        current = roster(config, now)
        on_duty = [o for o in members if o.id in current.on]
        not_away = [o for o in members if o.id not in current.off]
        return tuple(on_duty or not_away or members)
    officer = config.officer(target)
    return (officer,) if officer else ()


def categorize(settings: InquirySettings, text: str, match: Match | None) -> str:
    """The knowledge-base entry's category, else the first category with a keyword in the text."""
    if match is not None and match.entry.category in settings.categories:
        return match.entry.category
    folded = normalize(text)
    for category_id, category in settings.categories.items():
        if any(normalize(word) in folded for word in category.keywords if normalize(word)):
            return category_id
    return settings.default_category


def assign(config: Config, settings: InquirySettings, group: GroupConfig | None, category: str, now: datetime
           ) -> tuple[OfficerConfig, str]:
    """One officer answers for a ticket: the category's role or officer; failing that the group's own
    officer, then a supervisor, so that a question never belongs to nobody."""
    target = settings.categories[category].assign if category in settings.categories else "own"
    chosen = resolve_target(config, group, target, now)
    if chosen:
        return chosen[0], f"category {category} -> {target}"
    for fallback in ("own", "supervisor"):
        chosen = resolve_target(config, group, fallback, now)
        if chosen:
            return chosen[0], f"category {category} -> {target}: nobody; fell back to {fallback}"
    return config.officers[0], f"category {category} -> {target}: nobody; the first officer listed"


# -- texts -----------------------------------------------------------------------------------------------
def ticket_context(config: Config, ticket: Ticket, *, group: GroupConfig | None = None,
                   officer: OfficerConfig | None = None, entry: Entry | None = None,
                   **extra: Any) -> dict[str, Any]:
    settings = settings_of(config)
    category = settings.categories.get(ticket.category)
    assignee = officer or config.officer(ticket.assignee)
    context: dict[str, Any] = {
        "station": {"id": config.station.id, "name": config.station.name},
        "group": {"id": ticket.group_id, "name": group.display_name if group else ticket.group_name,
                  "room_id": ticket.room_id},
        "resident": {"id": ticket.resident_id, "name": ticket.resident_name},
        "ticket": {
            "id": ticket.id, "category": ticket.category, "category_label": category.label if category else
            ticket.category, "text": ticket.text, "time": local_time(config, ticket.created_at),
            "deadline": local_time(config, ticket.due_at), "status": ticket.status,
        },
        "officer": {"name": assignee.name, "id": assignee.id} if assignee else {"name": "民警", "id": ""},
        "sla_hours": settings.sla_hours,
        "entry": None,
    }
    if entry is not None:
        answer = render_answer(entry.answer, context)
        context["entry"] = {"id": entry.id, "title": entry.title, "answer": answer}
    context.update(extra)
    return context


def _to_group(session: AsyncSession, config: Config, ticket: Ticket, text: str, now: datetime,
              kind: str) -> None:
    if ticket.room_id:
        enqueue(session, account=config.station.id, conversation_id=ticket.room_id, is_room=True, text=text,
                now=now, kind=kind, priority=PRIORITY_NORMAL, mentions=[ticket.resident_id])


def to_officer(session: AsyncSession, config: Config, officer: OfficerConfig, text: str, now: datetime,
                kind: str) -> None:
    enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False, text=text,
            now=now, kind=kind, priority=PRIORITY_NORMAL)


# -- opening ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opened:
    ticket: Ticket
    joined: bool  # the same resident asked the same thing again: no new ticket


def _similar(a: str, b: str) -> float:
    return SequenceMatcher(None, normalize(a), normalize(b), autojunk=False).ratio()


async def _repeat_of(session: AsyncSession, config: Config, settings: InquirySettings, inbound: Inbound,
                     match: Match | None, now: datetime) -> Ticket | None:
    # Usually there is none: compare through Core (an ORM query cost ~1.5 ms of a question's CPU) and load
    # the ticket only when it is a repeat.
    recent = (await session.execute(_RECENT_OPEN, {
        "station_id": config.station.id, "room_id": inbound.room_id, "resident_id": inbound.sender_id,
        "since": now - settings.repeat_window})).all()
    for ticket_id, kb_entry, text in recent:
        same_entry = match is not None and kb_entry == match.entry.id
        if same_entry or _similar(text, inbound.text) >= 0.6:
            return await session.get(Ticket, ticket_id)
    return None


_TICKETS = Ticket.__table__
_RECENT_OPEN = (
    select(_TICKETS.c.id, _TICKETS.c.kb_entry, _TICKETS.c.text)
    .where(_TICKETS.c.station_id == bindparam("station_id"), _TICKETS.c.room_id == bindparam("room_id"),
           _TICKETS.c.resident_id == bindparam("resident_id"), _TICKETS.c.status == TicketStatus.open,
           _TICKETS.c.created_at >= bindparam("since"))
    .order_by(_TICKETS.c.id.desc()).limit(5)
)


def _next_reminder(settings: InquirySettings, created: datetime, now: datetime
                   ) -> tuple[int, datetime | None]:
    """The first reminder point still ahead (its index, and when), or (len, None) when none is."""
    for index, offset in enumerate(settings.reminders):
        if created + offset > now:
            return index, created + offset
    return len(settings.reminders), None


def on_shift(config: Config, officer: OfficerConfig, now: datetime) -> bool:
    return officer.id in roster(config, now).on


async def open_ticket(
    session: AsyncSession, live: ConfigVersion, inbound: Inbound, group: GroupConfig | None, now: datetime,
    source_message_row: int | None, *, detected_by: str, match: Match | None,
) -> Opened:
    """Open a ticket for a resident's question (or join the one they asked moments ago), answer or
    acknowledge in the group at once, and ping the officer who answers for it."""
    config = live.config
    settings = settings_of(config)
    repeat = await _repeat_of(session, config, settings, inbound, match, now)
    if repeat is not None:
        add_ticket_event(session, repeat, "asked_again", now, inbound.sender_id, inbound.text)
        text = say(settings.texts.asked_again, ticket_context(config, repeat, group=group))
        _to_group(session, config, repeat, text, now, "inquiry_reply")
        add_ticket_event(session, repeat, "acknowledged", now, None, text)
        return Opened(repeat, True)

    category = categorize(settings, inbound.text, match)
    officer, reason = assign(config, settings, group, category, now)
    kb_settles = match is not None and settings.kb_answer_counts_as_response
    first_reminder, reminder_at = _next_reminder(settings, now, now)
    ticket = Ticket(
        id=await allocate_case_number(session, "inquiry", config.station.id),
        station_id=config.station.id,
        group_id=group.id if group else None,
        room_id=inbound.room_id,
        group_name=group.display_name if group else (inbound.room_topic or inbound.room_id or ""),
        resident_id=inbound.sender_id,
        resident_name=inbound.sender_name,
        text=inbound.text,
        source_message_id=source_message_row,
        detected_by=detected_by,
        category=category,
        kb_entry=match.entry.id if match else None,
        kb_score=round(match.score, 3) if match else None,
        assignee=officer.id,
        assignee_reason=reason[:256],
        status=TicketStatus.responded if kb_settles else TicketStatus.open,
        created_at=now,
        due_at=now + settings.sla,
        responded_at=now if kb_settles else None,
        responded_by="kb" if kb_settles else None,
        responded_via="kb" if kb_settles else None,
        next_reminder=first_reminder,
        reminder_at=None if kb_settles else reminder_at,
        breach_at=None if kb_settles else now + settings.sla,
        breached=False,
    )
    session.add(ticket)  # written with its events and messages at the next flush (its number is known)
    add_ticket_event(session, ticket, "opened", now, inbound.sender_id, inbound.text)
    add_ticket_event(session, ticket, "assigned", now, officer.id, reason)

    entry = match.entry if match else None
    context = ticket_context(config, ticket, group=group, officer=officer, entry=entry)
    reply = say(settings.texts.kb_answer if entry else settings.texts.acknowledged, context)
    if not on_shift(config, officer, now) and settings.texts.off_shift_note:
        reply += "\n" + say(settings.texts.off_shift_note, context)
    _to_group(session, config, ticket, reply, now, "inquiry_reply")
    add_ticket_event(session, ticket, "kb_answered" if entry else "acknowledged", now, None,
                     f"{entry.id} ({match.score:.2f})" if entry and match else reply)
    if kb_settles:
        add_ticket_event(session, ticket, "responded", now, "kb", "knowledge-base answer")
    to_officer(session, config, officer, say(settings.texts.ping, context), now, "inquiry_ping")
    add_ticket_event(session, ticket, "pinged", now, officer.id, reason)
    log.info("inquiry #%s opened in %s (%s, %s) for %s%s", ticket.id, ticket.group_name, detected_by,
             category, officer.id, f", answered from the knowledge base: {entry.id}" if entry else "")
    return Opened(ticket, False)


# -- responses -------------------------------------------------------------------------------------------
async def _respond(session: AsyncSession, ticket: Ticket, actor: str, via: str, now: datetime,
                   status: TicketStatus = TicketStatus.responded, **values: Any) -> bool:
    """The first response: open → ``status``, once (conditional on still being open). Late: a breach."""
    late = now > ticket.due_at
    changes: dict[str, Any] = {"status": status, "responded_at": now, "responded_by": actor,
                               "responded_via": via, "reminder_at": None, "breach_at": None, **values}
    if late:
        changes["breached"] = True
        changes["breached_at"] = func.coalesce(Ticket.breached_at, _at(ticket.due_at))
    result = await session.execute(
        update(Ticket).where(Ticket.id == ticket.id, Ticket.status == TicketStatus.open).values(**changes)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        await session.refresh(ticket)
        return False
    was_breached = ticket.breached
    await session.refresh(ticket)
    add_ticket_event(session, ticket, "responded", now, actor, via)
    if late and not was_breached:
        minutes_late = int((now - ticket.due_at).total_seconds() // 60)
        add_ticket_event(session, ticket, "breached", now, None,
                         f"first response after the deadline ({minutes_late} min late)")
    return True


_QUOTE = re.compile(r"「\s*(?P<name>[^：:」\n]{1,40})\s*[：:](?P<quoted>[^」]*)」")
_AT_NAME = re.compile(r"@(?P<name>[^\s\u2005@「」:：,，]{1,40})")


async def record_group_response(session: AsyncSession, live: ConfigVersion, inbound: Inbound,
                                group: GroupConfig | None, now: datetime) -> list[Ticket]:
    """An officer's group message quoting or @-mentioning residents with open tickets here responds to
    them. With a quote and several open tickets of that resident, the one quoted (by similarity)."""
    config = live.config
    officer = live.officers_by_wechat.get(inbound.sender_id)
    if officer is None or not inbound.room_id:
        return []
    ids = set(inbound.mentions)
    names = {m.group("name") for m in _AT_NAME.finditer(inbound.text)}
    quote = _QUOTE.search(inbound.text)
    if quote:
        names.add(quote.group("name").strip())
    if not ids and not names:
        return []
    candidates = (await session.scalars(
        select(Ticket).where(Ticket.station_id == config.station.id, Ticket.room_id == inbound.room_id,
                             Ticket.status == TicketStatus.open).order_by(Ticket.id))).all()
    chosen = [t for t in candidates if t.resident_id in ids or t.resident_name in names]
    if quote and quote.group("quoted").strip():
        quoted = quote.group("quoted")
        by_resident: dict[str, list[Ticket]] = {}
        for ticket in chosen:
            by_resident.setdefault(ticket.resident_id, []).append(ticket)
        narrowed: list[Ticket] = []
        for tickets_of_one in by_resident.values():
            scored = sorted(tickets_of_one, key=lambda t: _similar(t.text, quoted), reverse=True)
            best = scored[0]
            narrowed.extend([best] if len(scored) > 1 and _similar(best.text, quoted) >= 0.5 else scored)
        chosen = narrowed
    responded = []
    for ticket in chosen:
        if await _respond(session, ticket, officer.id, "group", now):
            add_ticket_event(session, ticket, "answered", now, officer.id, inbound.text)
            responded.append(ticket)
            log.info("inquiry #%s responded by %s in the group", ticket.id, officer.id)
    return responded


async def find_ticket(session: AsyncSession, station_id: str, number: int | None) -> Ticket | None:
    """The ticket with this case number, if it is one of this station's (numbers are shared with
    incidents)."""
    if number is None:
        return None
    ticket = await session.get(Ticket, number)
    return ticket if ticket is not None and ticket.station_id == station_id else None


async def answer_ticket(session: AsyncSession, live: ConfigVersion, ticket: Ticket, actor: OfficerConfig,
                        text: str, now: datetime) -> str:
    """An officer's answer, posted to the group addressed to the resident. Returns answered / closed."""
    config = live.config
    settings = settings_of(config)
    if ticket.status == TicketStatus.closed:
        return "closed"
    await _respond(session, ticket, actor.id, "private", now)
    context = ticket_context(config, ticket, group=group_of(config, ticket), by=actor.name, text=text)
    _to_group(session, config, ticket, say(settings.texts.answer_group, context), now, "inquiry_answer")
    add_ticket_event(session, ticket, "answered", now, actor.id, text)
    return "answered"


async def feedback_ticket(session: AsyncSession, live: ConfigVersion, ticket: Ticket, actor: OfficerConfig,
                          text: str, now: datetime) -> str:
    """Progress told to the resident ("已联系户籍科，下周一可以办"). Returns feedback / closed."""
    config = live.config
    settings = settings_of(config)
    if ticket.status == TicketStatus.closed:
        return "closed"
    if not await _respond(session, ticket, actor.id, "feedback", now, status=TicketStatus.feedback,
                          feedback_at=now, feedback_by=actor.id):
        changed = await session.execute(
            update(Ticket).where(Ticket.id == ticket.id, Ticket.status != TicketStatus.closed)
            .values(status=TicketStatus.feedback, feedback_at=now, feedback_by=actor.id)
            .execution_options(synchronize_session=False))
        await session.refresh(ticket)
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return "closed"
    context = ticket_context(config, ticket, group=group_of(config, ticket), by=actor.name, text=text)
    _to_group(session, config, ticket, say(settings.texts.feedback_group, context), now, "inquiry_feedback")
    add_ticket_event(session, ticket, "feedback", now, actor.id, text)
    return "feedback"


async def close_ticket(session: AsyncSession, live: ConfigVersion, ticket: Ticket, actor_id: str,
                       actor_name: str, result_text: str, now: datetime) -> str:
    """Close with a result the group hears. A ticket nobody had responded to is responded to by this.
    Returns closed / already."""
    config = live.config
    settings = settings_of(config)
    result_text = result_text.strip() or settings.texts.default_result
    was_open = ticket.status == TicketStatus.open
    late = was_open and now > ticket.due_at
    changes: dict[str, Any] = {
        "status": TicketStatus.closed, "closed_at": now, "closed_by": actor_id, "result": result_text,
        "reminder_at": None, "breach_at": None,
        "responded_at": func.coalesce(Ticket.responded_at, _at(now)),
        "responded_by": func.coalesce(Ticket.responded_by, actor_id),
        "responded_via": func.coalesce(Ticket.responded_via, "close"),
    }
    if late:
        changes["breached"] = True
        changes["breached_at"] = func.coalesce(Ticket.breached_at, _at(ticket.due_at))
    changed = await session.execute(
        update(Ticket).where(Ticket.id == ticket.id, Ticket.status != TicketStatus.closed).values(**changes)
        .execution_options(synchronize_session=False))
    was_breached = ticket.breached
    await session.refresh(ticket)
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        return "already"
    if ticket.responded_at == now and ticket.responded_via == "close":
        add_ticket_event(session, ticket, "responded", now, actor_id, "close")
    if late and not was_breached and ticket.breached:
        add_ticket_event(session, ticket, "breached", now, None,
                         "closed after the deadline without an earlier response")
    add_ticket_event(session, ticket, "closed", now, actor_id, result_text)
    context = ticket_context(config, ticket, group=group_of(config, ticket), by=actor_name,
                             result=result_text)
    _to_group(session, config, ticket, say(settings.texts.closed_group, context), now, "inquiry_result")
    log.info("inquiry #%s closed by %s", ticket.id, actor_id)
    return "closed"


# -- the clock -------------------------------------------------------------------------------------------
@dataclass
class TicketTick:
    reminders: int = 0
    breaches: int = 0


async def run_due_tickets(station: Station) -> TicketTick:
    """Send every reminder and take every breach that is due now. Safe to run from several processes."""
    live = station.current
    now = station.now()
    station_id = live.config.station.id
    result = TicketTick()
    async with station.db.session() as session:
        breaches = (await session.scalars(
            select(Ticket.id).where(Ticket.station_id == station_id, Ticket.status == TicketStatus.open,
                                    Ticket.breach_at <= now).order_by(Ticket.breach_at).limit(BATCH))).all()
        reminders = (await session.scalars(
            select(Ticket.id).where(Ticket.station_id == station_id, Ticket.status == TicketStatus.open,
                                    Ticket.reminder_at <= now)
            .order_by(Ticket.reminder_at).limit(BATCH))).all()
    for ticket_id in breaches:  # first: a ticket past its deadline gets the breach, not a late reminder
        result.breaches += await _breach(station, live, ticket_id, now)
    for ticket_id in reminders:
        result.reminders += await _remind(station, live, ticket_id, now)
    if result.reminders or result.breaches:
        station.outbox_ready.set()
    return result


async def _remind(station: Station, live: ConfigVersion, ticket_id: int, now: datetime) -> int:
    config = live.config
    settings = settings_of(config)
    async with station.db.session() as session, session.begin():
        ticket = await session.get(Ticket, ticket_id)
        if (ticket is None or ticket.status != TicketStatus.open or ticket.reminder_at is None
                or ticket.reminder_at > now or (ticket.breach_at is not None and ticket.breach_at <= now)):
            return 0
        index, due = ticket.next_reminder, ticket.reminder_at
        # After downtime several points may have passed: one reminder now, and the next point still ahead.
        following_index, following = _next_reminder(settings, ticket.created_at, now)
        claimed = await session.execute(
            update(Ticket).where(Ticket.id == ticket_id, Ticket.status == TicketStatus.open,
                                 Ticket.next_reminder == index, Ticket.reminder_at == due)
            .values(next_reminder=following_index, reminder_at=following)
            .execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return 0  # another process took it, or the ticket was answered meanwhile
        await session.refresh(ticket)
        group = group_of(config, ticket)
        officer = config.officer(ticket.assignee) or assign(config, settings, group, ticket.category, now)[0]
        hours = int((now - ticket.created_at).total_seconds() // 3600)
        context = ticket_context(config, ticket, group=group, officer=officer, hours=hours)
        text = say(settings.texts.reminder, context)
        to_officer(session, config, officer, text, now, "inquiry_reminder")
        add_ticket_event(session, ticket, "reminded", now, officer.id, f"{hours} h after the question")
        log.info("inquiry #%s: reminded %s (%s h)", ticket.id, officer.id, hours)
        return 1


async def _breach(station: Station, live: ConfigVersion, ticket_id: int, now: datetime) -> int:
    config = live.config
    settings = settings_of(config)
    async with station.db.session() as session, session.begin():
        ticket = await session.get(Ticket, ticket_id)
        if (ticket is None or ticket.status != TicketStatus.open or ticket.breach_at is None
                or ticket.breach_at > now or ticket.breached):
            return 0
        claimed = await session.execute(
            update(Ticket).where(Ticket.id == ticket_id, Ticket.status == TicketStatus.open,
                                 Ticket.breached.is_(False), Ticket.breach_at == ticket.breach_at)
            .values(breached=True, breached_at=now, breach_at=None, reminder_at=None,
                    next_reminder=len(settings.reminders))
            .execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return 0
        await session.refresh(ticket)
        group = group_of(config, ticket)
        assignee = config.officer(ticket.assignee)
        add_ticket_event(session, ticket, "breached", now, None, f"no response within {settings.sla_hours} h")
        targets: list[OfficerConfig] = []
        for target in settings.escalate_to:
            targets.extend(o for o in resolve_target(config, group, target, now) if o not in targets)
        context = ticket_context(config, ticket, group=group, officer=assignee)
        text = say(settings.texts.breach_supervisor, context)
        for officer in targets:
            to_officer(session, config, officer, text, now, "inquiry_breach")
        add_ticket_event(session, ticket, "escalated", now, None, ", ".join(o.id for o in targets))
        if assignee is not None and assignee not in targets:
            to_officer(session, config, assignee, say(settings.texts.breach_assignee, context), now,
                        "inquiry_reminder")
        log.warning("inquiry #%s breached its %s h promise; escalated to %s", ticket.id, settings.sla_hours,
                    ", ".join(o.id for o in targets))
        return 1
