"""A matched report becomes an incident: stored with its timeline, answered in the group, pinged to the
officer covering the group. All in the caller's transaction, so a crash loses none of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import GroupConfig, OfficerConfig, Role
from handlers.escalation import arm_acknowledged, start_chain
from handlers.inbound import Inbound
from handlers.oncall import coverage
from handlers.routing import RouteMatch
from handlers.runtime import ConfigVersion
from handlers.texts import incident_context, local_time, say
from models.appends import add_incident_event
from models.outbox import PRIORITY_URGENT, enqueue
from models.tables import Incident, IncidentEvent, IncidentStatus, allocate_case_number


async def report(
    session: AsyncSession,
    live: ConfigVersion,
    inbound: Inbound,
    group: GroupConfig | None,
    match: RouteMatch,
    now: datetime,
    source_message_row: int | None,
    reply_to_group: bool = True,
) -> tuple[Incident, bool]:
    """Join an open incident of the same route in the same group within its dedup window, or open one.

    Returns the incident and whether the report joined an existing one.
    """
    existing = await _joinable(session, live, inbound, match, now)
    if existing is None:
        incident = await open_incident(
            session, live, inbound, group, match, now, source_message_row, reply_to_group
        )
        return incident, False
    add_incident_event(session, existing, "reported", inbound.sent_at, inbound.sender_id, inbound.text)
    if reply_to_group:  # a flood of reports of one thing gets a bounded number of replies
        reply_to_group = not await _replied_recently(session, existing, now - live.config.intake.joined_reply_every)
    await session.execute(update(Incident).where(Incident.id == existing.id)
                          .values(report_count=Incident.report_count + 1).execution_options(synchronize_session=False))
    await session.refresh(existing)
    await _maybe_raise_severity(session, live, existing, group, now)
    if reply_to_group and inbound.room_id:
        context = incident_context(live.config, existing, group=group)
        reply = say(live.config.texts.joined_reply, context)
        enqueue(session, account=live.config.station.id, conversation_id=inbound.room_id, is_room=True,
                text=reply, now=now, kind="reply", priority=PRIORITY_URGENT, incident_id=existing.id,
                mentions=[inbound.sender_id])
        add_incident_event(session, existing, "replied", now, None, reply)
    return existing, True


async def _replied_recently(session: AsyncSession, incident: Incident, since: datetime) -> bool:
    found = await session.scalars(select(IncidentEvent.id).where(
        IncidentEvent.incident_id == incident.id, IncidentEvent.kind == "replied", IncidentEvent.at > since).limit(1))
    return found.first() is not None


_SEVERITY_ORDER = {"P1": 1, "P2": 2, "P3": 3}


async def _maybe_raise_severity(
    session: AsyncSession, live: ConfigVersion, incident: Incident, group: GroupConfig | None, now: datetime
) -> None:
    """Many residents reporting the same thing in a short time is itself a signal: raise the severity once
    and tell the covering officers how many have reported."""
    rule = live.config.escalation.raise_severity
    if rule is None or _SEVERITY_ORDER[incident.severity] <= _SEVERITY_ORDER[rule.to.value]:
        return
    recent = (await session.scalars(
        select(IncidentEvent.actor).where(IncidentEvent.incident_id == incident.id, IncidentEvent.kind == "reported",
                                          IncidentEvent.at >= now - rule.within))).all()
    if len(set(recent)) < rule.reports:
        return
    old = incident.severity
    incident.severity = rule.to.value
    add_incident_event(session, incident, "severity_raised", now, None,
                       f"{old} -> {incident.severity}: {len(set(recent))} residents within "
                       f"{int(rule.within.total_seconds() // 60)} min")
    start_chain(live.config, incident, now)  # the stricter chain now applies, from its first step
    cover = coverage(live.config, group, now)
    text = say(live.config.texts.severity_raised, incident_context(live.config, incident, group=group,
                                                                   officers=cover.officers))
    for officer in cover.officers:
        _ping(session, live, incident, officer, text, now, "severity raised")


async def _joinable(
    session: AsyncSession, live: ConfigVersion, inbound: Inbound, match: RouteMatch, now: datetime
) -> Incident | None:
    window = match.route.dedup_minutes
    if not window or not inbound.room_id:
        return None
    # Usually there is none: look for its id through Core (an ORM query cost ~1.5 ms of a report's CPU) and
    # load the incident only when there is one to join.
    found = (await session.execute(_JOINABLE, {
        "station_id": live.config.station.id, "room_id": inbound.room_id, "route_id": match.route.id,
        "since": now - timedelta(minutes=window)})).scalar()
    return None if found is None else await session.get(Incident, found)


_INCIDENTS = Incident.__table__
_JOINABLE = (
    select(_INCIDENTS.c.id)
    .where(_INCIDENTS.c.station_id == bindparam("station_id"), _INCIDENTS.c.room_id == bindparam("room_id"),
           _INCIDENTS.c.route_id == bindparam("route_id"), _INCIDENTS.c.status != IncidentStatus.resolved,
           _INCIDENTS.c.created_at >= bindparam("since"))
    .order_by(_INCIDENTS.c.id.desc())
    .limit(1)
)


async def open_incident(
    session: AsyncSession,
    live: ConfigVersion,
    inbound: Inbound,
    group: GroupConfig | None,
    match: RouteMatch,
    now: datetime,
    source_message_row: int | None,
    reply_to_group: bool = True,
) -> Incident:
    config = live.config
    route = match.route
    cover = coverage(config, group, now)
    incident = Incident(
        id=await allocate_case_number(session, "incident", config.station.id),
        station_id=config.station.id,
        group_id=group.id if group else None,
        room_id=inbound.room_id,
        group_name=group.display_name if group else (inbound.room_topic or inbound.room_id or ""),
        route_id=route.id,
        category=route.category,
        severity=route.severity.value,
        status=IncidentStatus.open,
        reporter_id=inbound.sender_id,
        reporter_name=inbound.sender_name,
        text=inbound.text,
        source_message_id=source_message_row,
        assigned_officers=[o.id for o in cover.officers],
        created_at=now,
        report_count=1,
    )
    start_chain(config, incident, now)
    session.add(incident)  # written with its events and messages at the next flush (its number is known)
    add_incident_event(session, incident, "reported", inbound.sent_at, inbound.sender_id, inbound.text)
    context = incident_context(config, incident, route=route, group=group, officers=cover.officers)

    if reply_to_group and inbound.room_id:
        reply = say(route.reply or config.texts.default_reply, context)
        own = config.officer(group.officer) if group and group.officer else None
        if own is not None and not cover.own_officer_on_shift:
            # Residents never wait on someone who is off duty: say who has it instead.
            context["own_officer"] = {"name": own.name, "id": own.id}
            context["covering"] = "值班民警" if config.backfill_by_role else "、".join(o.name for o in cover.officers)
            reply = reply + "\n" + say(config.texts.backfill_note, context)
        late = now - inbound.sent_at
        if late > config.intake.late_after:  # after an outage: answer, but do not pretend it is fresh
            context["minutes"] = int(late.total_seconds() // 60)
            reply = reply + "\n" + say(config.texts.late_note, context)
        enqueue(session, account=config.station.id, conversation_id=inbound.room_id, is_room=True, text=reply,
                now=now, kind="reply", priority=PRIORITY_URGENT, incident_id=incident.id,
                mentions=[inbound.sender_id])
        add_incident_event(session, incident, "replied", now, None, reply)

    ping = say(route.ping or config.texts.ping, context)
    for officer in cover.officers:
        _ping(session, live, incident, officer, ping, now, cover.reason)
    if incident.category == "scam" and config.broadcast.notify_scam_reports:
        _tell_antifraud(session, live, incident, context, now, already=cover.officers)
    return incident


def _tell_antifraud(session: AsyncSession, live: ConfigVersion, incident: Incident, context: dict[str, Any],
                    now: datetime, already: tuple[OfficerConfig, ...]) -> None:
    """The anti-fraud team hears of every scam report, with a one-word way to warn every group."""
    config = live.config
    team = [o for o in config.officers if o.role == Role.antifraud and o not in already]
    if not team:
        return
    text = say(config.texts.scam_summary, context)
    for officer in team:
        enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False, text=text,
                now=now, kind="scam_summary", priority=PRIORITY_URGENT, incident_id=incident.id)
    add_incident_event(session, incident, "antifraud_told", now, None, ", ".join(o.id for o in team))


def _ping(
    session: AsyncSession, live: ConfigVersion, incident: Incident, officer: OfficerConfig, text: str,
    now: datetime, reason: str,
) -> None:
    enqueue(session, account=live.config.station.id, conversation_id=officer.wechat_id, is_room=False, text=text,
            now=now, kind="ping", priority=PRIORITY_URGENT, incident_id=incident.id)
    add_incident_event(session, incident, "pinged", now, officer.id, reason)


@dataclass(frozen=True)
class AckResult:
    incident: Incident | None
    outcome: str  # "acknowledged", "already", "not_found", "nothing_open"


async def acknowledge(
    session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, number: int | None, now: datetime
) -> AckResult:
    """Acknowledge incident ``number``, or the officer's most recent unacknowledged one."""
    config = live.config
    station_id = config.station.id
    if number is not None:
        incident = await session.get(Incident, number)
        if incident is None or incident.station_id != station_id:
            return AckResult(None, "not_found")
    else:
        candidates = (
            await session.scalars(
                select(Incident)
                .where(Incident.station_id == station_id, Incident.status == IncidentStatus.open)
                .order_by(Incident.id.desc())
                .limit(200)
            )
        ).all()
        mine = [i for i in candidates if officer.id in (i.assigned_officers or [])]
        if not mine:
            return AckResult(None, "nothing_open")
        incident = mine[0]

    # Conditional update: two officers answering at once must not both acknowledge.
    result = await session.execute(
        update(Incident)
        .where(Incident.id == incident.id, Incident.status == IncidentStatus.open)
        .values(status=IncidentStatus.acknowledged, acknowledged_at=now, acknowledged_by=officer.id)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(incident)
    if result.rowcount == 0:  # type: ignore[attr-defined]
        return AckResult(incident, "already")

    arm_acknowledged(config, incident, now)
    add_incident_event(session, incident, "acknowledged", now, officer.id)
    group = next((g for g in config.groups if g.id == incident.group_id), None)
    context = incident_context(config, incident, group=group, officers=(officer,))
    if incident.room_id:
        text = say(config.texts.ack_group, context)
        enqueue(session, account=station_id, conversation_id=incident.room_id, is_room=True, text=text, now=now,
                kind="ack", priority=PRIORITY_URGENT, incident_id=incident.id)
        add_incident_event(session, incident, "group_told", now, None, text)
    return AckResult(incident, "acknowledged")


def ack_already_text(live: ConfigVersion, incident: Incident) -> str:
    config = live.config
    by = config.officer(incident.acknowledged_by or "")
    context = incident_context(config, incident)
    context["acked_by"] = by.name if by else (incident.acknowledged_by or "")
    context["acked_at"] = local_time(config, incident.acknowledged_at) if incident.acknowledged_at else ""
    return say(config.texts.ack_already, context)


@dataclass(frozen=True)
class ResolveResult:
    incident: Incident | None
    outcome: str  # "resolved", "already", "not_found"


async def resolve(
    session: AsyncSession, live: ConfigVersion, actor_id: str, actor_name: str, number: int, result_text: str,
    now: datetime,
) -> ResolveResult:
    """Close incident ``number`` with a result; the group hears the outcome. ``actor_id`` is an officer id or
    an admin web user, recorded on the timeline."""
    config = live.config
    incident = await session.get(Incident, number)
    if incident is None or incident.station_id != config.station.id:
        return ResolveResult(None, "not_found")
    changed = await session.execute(
        update(Incident)
        .where(Incident.id == number, Incident.status != IncidentStatus.resolved)
        .values(status=IncidentStatus.resolved, resolved_at=now, resolved_by=actor_id, result=result_text,
                next_step_at=None, reminder_at=None, ack_deadline_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(incident)
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        return ResolveResult(incident, "already")
    if incident.acknowledged_at is None:  # resolving implies it was taken in hand
        incident.acknowledged_at, incident.acknowledged_by = now, actor_id
    add_incident_event(session, incident, "resolved", now, actor_id, result_text)
    if incident.room_id:
        group = next((g for g in config.groups if g.id == incident.group_id), None)
        context = incident_context(config, incident, group=group)
        context["officer"] = {"name": actor_name, "id": actor_id}
        context["result"] = result_text
        text = say(config.texts.resolved_group, context)
        enqueue(session, account=config.station.id, conversation_id=incident.room_id, is_room=True, text=text,
                now=now, kind="result", priority=PRIORITY_URGENT, incident_id=incident.id)
        add_incident_event(session, incident, "group_told", now, None, text)
    return ResolveResult(incident, "resolved")
