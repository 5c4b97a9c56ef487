"""When a community officer comes back on duty, a private digest of what happened in their groups while
they were away (answered by colleagues, or still open)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot.config.schema import Role
from handlers.oncall import roster
from handlers.runtime import Station
from handlers.texts import local_time, say
from models.outbox import PRIORITY_NORMAL, enqueue
from models.tables import Incident, OfficerPresence

_STATUS_NAMES = {"open": "待确认", "acknowledged": "处理中", "resolved": "已办结"}


def away_gap(station: Station) -> timedelta:
    """Longer than this between two sightings on duty means the officer was away."""
    return max(timedelta(minutes=10), timedelta(seconds=3 * station.current.config.escalation.tick_seconds))


async def send_digests(station: Station) -> int:
    config = station.current.config
    now = station.now()
    current = roster(config, now)
    sent = 0
    for officer in config.officers:
        if officer.role != Role.community or officer.id not in current.on:
            continue
        groups = [g for g in config.groups if g.officer == officer.id]
        if not groups:
            continue
        async with station.db.session() as session, session.begin():
            row = (await session.scalars(select(OfficerPresence).where(
                OfficerPresence.station_id == config.station.id, OfficerPresence.officer_id == officer.id))).first()
            if row is None:
                insert = sqlite_insert if station.db.is_sqlite else pg_insert
                await session.execute(insert(OfficerPresence).values(
                    station_id=config.station.id, officer_id=officer.id, last_on_duty_at=now,
                ).on_conflict_do_nothing(index_elements=["station_id", "officer_id"]))
                continue
            last_seen = row.last_on_duty_at
            claimed = await session.execute(
                update(OfficerPresence).where(OfficerPresence.id == row.id,
                                              OfficerPresence.last_on_duty_at == last_seen)
                .values(last_on_duty_at=now).execution_options(synchronize_session=False))
            if claimed.rowcount != 1 or now - last_seen <= away_gap(station):  # type: ignore[attr-defined]
                continue
            incidents = (await session.scalars(
                select(Incident).where(Incident.station_id == config.station.id,
                                       Incident.group_id.in_([g.id for g in groups]),
                                       Incident.created_at > last_seen, Incident.created_at <= now)
                .order_by(Incident.id))).all()
            if not incidents:
                continue
            items = [{
                "id": i.id, "group": i.group_name, "category": config.categories.get(i.category, i.category),
                "severity": i.severity, "status": _STATUS_NAMES.get(i.status, i.status),
                "by": (config.officer(i.acknowledged_by).name if i.acknowledged_by and config.officer(i.acknowledged_by)
                       else ""),
                "time": local_time(config, i.created_at),
            } for i in incidents]
            text = say(config.texts.digest, {"since": local_time(config, last_seen), "incidents": items,
                                              "officer": {"name": officer.name}})
            enqueue(session, account=config.station.id, conversation_id=officer.wechat_id, is_room=False, text=text,
                    now=now, kind="digest", priority=PRIORITY_NORMAL)
            sent += 1
    if sent:
        station.outbox_ready.set()
    return sent
