"""Escalation on a clock: chains of wait/notify steps until someone acknowledges, reminders for
acknowledged-but-unresolved incidents, and lapsed acknowledgements.

State lives on the incident row (``next_step``, ``next_step_at``, ``reminder_at``, ``ack_deadline_at``), so a
restart continues where it was. Every transition is a conditional UPDATE on the state it read: a step is
taken once even with several processes on one database, and a step that came due during downtime is taken
(late) rather than skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from bot.config.schema import Config, EscalationChain, GroupConfig, OfficerConfig, Role
from handlers.oncall import coverage, roster
from handlers.runtime import ConfigVersion, Station
from handlers.texts import incident_context, say
from models.appends import add_incident_event
from models.outbox import PRIORITY_URGENT, enqueue
from models.tables import Incident, IncidentStatus

log = logging.getLogger(__name__)

BATCH = 50
_ROLE_TARGETS = {"duty": Role.duty, "supervisor": Role.supervisor, "antifraud": Role.antifraud,
                 "general": Role.general, "public_order": Role.public_order}


def group_of(config: Config, incident: Incident) -> GroupConfig | None:
    return next((g for g in config.groups if g.id == incident.group_id), None)


def resolve_targets(config: Config, group: GroupConfig | None, targets: list[str], at: datetime
                    ) -> tuple[OfficerConfig, ...]:
    """Officers named by a step's ``notify`` list, in order, each once. A role means its members on duty,
    or all of them when none is (a step must reach someone)."""
    current = roster(config, at)
    found: list[OfficerConfig] = []
    for target in targets:
        if target == "covering":
            chosen: tuple[OfficerConfig, ...] = coverage(config, group, at, current).officers
        elif target == "own":
            own = config.officer(group.officer) if group and group.officer else None
            chosen = (own,) if own else ()
        elif target in _ROLE_TARGETS:
            role = _ROLE_TARGETS[target]
            members = tuple(o for o in config.officers if o.role == role)
            chosen = tuple(o for o in members if o.id in current.on) or members
        else:
            officer = config.officer(target)
            chosen = (officer,) if officer else ()
        found.extend(o for o in chosen if o not in found)
    return tuple(found)


def start_chain(config: Config, incident: Incident, now: datetime) -> None:
    """Arm the incident's chain (at opening, and again when an acknowledgement lapses)."""
    chain = config.escalation.chain_for(incident.severity, incident.category)
    incident.chain_id = chain.id if chain else None
    incident.chain_started_at = now
    incident.next_step = 0
    incident.next_step_at = now + chain.steps[0].after if chain else None


def _due_at(chain: EscalationChain, started: datetime, step: int) -> datetime | None:
    """When step ``step`` (0-based; past the last one: repeats of it) is due, or None when the chain is done."""
    if step < len(chain.steps):
        return started + chain.steps[step].after
    repeat = step - len(chain.steps) + 1
    if chain.repeat_every is None or repeat > chain.max_repeats:
        return None
    return started + chain.steps[-1].after + chain.repeat_every * repeat


def arm_acknowledged(config: Config, incident: Incident, now: datetime) -> None:
    incident.next_step_at = None
    reminder, timeout = config.escalation.ack_reminder, config.escalation.ack_timeout
    incident.reminder_at = now + reminder if reminder else None
    incident.ack_deadline_at = now + timeout if timeout else None


@dataclass
class TickResult:
    steps: int = 0
    reminders: int = 0
    lapsed: int = 0


async def run_due(station: Station) -> TickResult:
    """Take every transition that is due now. Safe to run from several processes at once."""
    live = station.current
    now = station.now()
    result = TickResult()
    async with station.db.session() as session:
        due = (await session.scalars(
            select(Incident.id).where(Incident.station_id == live.config.station.id,
                                      Incident.status == IncidentStatus.open,
                                      Incident.next_step_at <= now)
            .order_by(Incident.next_step_at).limit(BATCH))).all()
        reminders = (await session.scalars(
            select(Incident.id).where(Incident.station_id == live.config.station.id,
                                      Incident.status == IncidentStatus.acknowledged,
                                      Incident.reminder_at <= now).limit(BATCH))).all()
        lapsed = (await session.scalars(
            select(Incident.id).where(Incident.station_id == live.config.station.id,
                                      Incident.status == IncidentStatus.acknowledged,
                                      Incident.ack_deadline_at <= now).limit(BATCH))).all()
    for incident_id in due:
        # A long outage can leave several steps due: take them in order, each once.
        while True:
            taken, more_due = await _take_step(station, live, incident_id, now)
            result.steps += taken
            if not (taken and more_due):
                break
    for incident_id in reminders:
        result.reminders += await _remind(station, live, incident_id, now)
    for incident_id in lapsed:
        result.lapsed += await _lapse(station, live, incident_id, now)
    if result.steps:
        station.metrics.escalations.inc(result.steps)
    if result.steps or result.reminders or result.lapsed:
        station.outbox_ready.set()
    return result


async def _take_step(station: Station, live: ConfigVersion, incident_id: int, now: datetime) -> tuple[bool, bool]:
    """Take the incident's due step if nobody else has; returns (taken, another step is due already)."""
    config = live.config
    async with station.db.session() as session, session.begin():
        incident = await session.get(Incident, incident_id)
        if (incident is None or incident.status != IncidentStatus.open or incident.next_step_at is None
                or incident.next_step_at > now):
            return False, False
        chain = next((c for c in config.escalation.chains if c.id == incident.chain_id), None)
        step_index, due_at = incident.next_step, incident.next_step_at
        started = incident.chain_started_at or incident.created_at
        following = _due_at(chain, started, step_index + 1) if chain else None
        claimed = await session.execute(
            update(Incident)
            .where(Incident.id == incident_id, Incident.next_step == step_index, Incident.next_step_at == due_at,
                   Incident.status == IncidentStatus.open)
            .values(next_step=step_index + 1, next_step_at=following)
            .execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return False, False  # another process took it, or it was acknowledged meanwhile
        if chain is None:  # the chain was removed from the config: stop escalating, keep a trace
            add_incident_event(session, incident, "escalation_stopped", now, None,
                               f"chain {incident.chain_id!r} not in config")
            return False, False
        await session.refresh(incident)
        step = chain.steps[min(step_index, len(chain.steps) - 1)]
        if step.overdue and not incident.overdue:
            incident.overdue = True
            add_incident_event(session, incident, "overdue", now)
        group = group_of(config, incident)
        officers = resolve_targets(config, group, step.notify, now)
        context = incident_context(config, incident, group=group, officers=officers)
        context["minutes"] = int((now - started).total_seconds() // 60)
        text = say(config.texts.escalation_ping, context)
        for officer in officers:
            enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False, text=text,
                    now=now, kind="escalation", priority=PRIORITY_URGENT, incident_id=incident.id)
        add_incident_event(session, incident, "escalated", now, None,
                           f"step {step_index + 1} of chain {chain.id}: " + ", ".join(o.id for o in officers))
        log.info("incident #%s escalated (chain %s step %s) to %s", incident.id, chain.id, step_index + 1,
                 ", ".join(o.id for o in officers))
        return True, following is not None and following <= now


async def _remind(station: Station, live: ConfigVersion, incident_id: int, now: datetime) -> int:
    config = live.config
    async with station.db.session() as session, session.begin():
        claimed = await session.execute(
            update(Incident).where(Incident.id == incident_id, Incident.status == IncidentStatus.acknowledged,
                                   Incident.reminder_at <= now)
            .values(reminder_at=None).execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return 0
        incident = await session.get(Incident, incident_id)
        assert incident is not None
        officer = config.officer(incident.acknowledged_by or "")
        if officer is None:
            return 0
        context = incident_context(config, incident, group=group_of(config, incident), officers=(officer,))
        context["minutes"] = int((now - (incident.acknowledged_at or now)).total_seconds() // 60)
        enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False,
                text=say(config.texts.ack_reminder, context), now=now, kind="reminder", priority=PRIORITY_URGENT,
                incident_id=incident.id)
        add_incident_event(session, incident, "reminded", now, officer.id)
        return 1


async def _lapse(station: Station, live: ConfigVersion, incident_id: int, now: datetime) -> int:
    """Acknowledged long ago and still not resolved: unacknowledged again, and the chain starts over."""
    config = live.config
    async with station.db.session() as session, session.begin():
        incident = await session.get(Incident, incident_id)
        if incident is None:
            return 0
        acknowledged_by, acknowledged_at = incident.acknowledged_by, incident.acknowledged_at
        claimed = await session.execute(
            update(Incident).where(Incident.id == incident_id, Incident.status == IncidentStatus.acknowledged,
                                   Incident.ack_deadline_at <= now)
            .values(status=IncidentStatus.open, acknowledged_at=None, acknowledged_by=None, reminder_at=None,
                    ack_deadline_at=None)
            .execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return 0
        await session.refresh(incident)
        start_chain(config, incident, now)
        incident.next_step_at = now  # escalate at once: it has waited long enough
        officer = config.officer(acknowledged_by or "")
        add_incident_event(session, incident, "ack_lapsed", now, acknowledged_by)
        if officer is not None:
            context = incident_context(config, incident, group=group_of(config, incident), officers=(officer,))
            context["minutes"] = int((now - (acknowledged_at or now)).total_seconds() // 60)
            enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False,
                    text=say(config.texts.ack_expired, context), now=now, kind="reminder",
                    priority=PRIORITY_URGENT, incident_id=incident.id)
        return 1


