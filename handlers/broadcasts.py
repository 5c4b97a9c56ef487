"""Warnings to every group of a station: a draft, a preview, one confirmation, then one delivery per group.

Every group's copy is a ``broadcast_deliveries`` row (unique per broadcast and group) tied to an outbox row
written in the confirming transaction, so a crash before, during or after sending neither loses a group nor
sends one twice; the sender paces them behind urgent traffic. When the last delivery settles, the officer
who sent it is told how it went.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import Config, GroupConfig, OfficerConfig
from handlers.runtime import ConfigVersion, Station
from handlers.texts import incident_context, say
from models.outbox import PRIORITY_BULK, PRIORITY_NORMAL, enqueue, enqueue_row
from models.tables import Broadcast, BroadcastDelivery, BroadcastStatus, Incident, OutboxMessage, OutboxStatus

_ALL = {"", "全部", "所有", "全部群", "所有群", "all"}
DISTRICT = "全区"
_SCOPE = re.compile(r"^[\[【(（](?P<scope>[^\]】)）]*)[\]】)）]\s*(?P<text>.*)$", re.S)


def may_broadcast(config: Config, officer: OfficerConfig) -> bool:
    return officer.role in config.broadcast.roles


def split_scope(words: str) -> tuple[str, str]:
    """"【锦绣,联洋】文本" -> ("锦绣,联洋", "文本"); "全区 文本" -> ("全区", "文本"); otherwise every group."""
    if words.strip().startswith(DISTRICT):
        return DISTRICT, words.strip()[len(DISTRICT):].strip()
    found = _SCOPE.match(words.strip())
    if found:
        return found.group("scope").strip(), found.group("text").strip()
    return "", words.strip()


def resolve_scope(config: Config, scope: str) -> tuple[list[GroupConfig], list[str]]:
    """Groups named by ids, names or parts of names (comma/space separated); returns (groups, unknown words)."""
    if scope.strip().lower() in _ALL:
        return [g for g in config.groups if g.room_id or g.topic], []
    chosen: list[GroupConfig] = []
    unknown: list[str] = []
    for word in filter(None, re.split(r"[,，、\s]+", scope)):
        found = [g for g in config.groups if word == g.id or word in g.display_name]
        if not found:
            unknown.append(word)
        chosen.extend(g for g in found if g not in chosen)
    return chosen, unknown


def _group_names(config: Config, group_ids: list[str]) -> str:
    names = [g.display_name for g in config.groups if g.id in group_ids]
    return "、".join(names[:10]) + (f" 等{len(names)}个群" if len(names) > 10 else "")


def may_broadcast_district(config: Config, officer: OfficerConfig) -> bool:
    return officer.role in config.broadcast.district_roles


def targets(live: ConfigVersion, broadcast: Broadcast,
            peers: dict[str, ConfigVersion]) -> list[tuple[str, GroupConfig]]:
    """(sending station, group) for every copy: the own station's groups in scope, and for a district-wide
    warning every group of every other station, sent through that station's own account."""
    chosen = [(live.config.station.id, g) for g in live.config.groups if g.id in broadcast.scope]
    if broadcast.district:
        for station_id, peer in sorted(peers.items()):
            if station_id != live.config.station.id:
                chosen.extend((station_id, g) for g in peer.config.groups if g.room_id or g.topic)
    return chosen


async def create_draft(session: AsyncSession, live: ConfigVersion, created_by: str, creator_wechat_id: str | None,
                       text: str, groups: list[GroupConfig], now: datetime,
                       source_incident_id: int | None = None, district: bool = False) -> Broadcast:
    broadcast = Broadcast(station_id=live.config.station.id, created_by=created_by,
                          creator_wechat_id=creator_wechat_id, text=text, scope=[g.id for g in groups],
                          source_incident_id=source_incident_id, status=BroadcastStatus.draft, created_at=now,
                          district=district)
    session.add(broadcast)
    await session.flush()
    return broadcast


def preview_text(live: ConfigVersion, broadcast: Broadcast, peers: dict[str, ConfigVersion]) -> str:
    config = live.config
    copies = targets(live, broadcast, peers)
    stations = sorted({station for station, _ in copies})
    names = _group_names(config, broadcast.scope)
    if broadcast.district:
        names = f"全区{len(stations)}个派出所的所有群"
    return say(config.texts.broadcast_preview, {
        "id": broadcast.id, "count": len(copies), "groups": names,
        "text": group_text(config, broadcast), "station": {"name": config.station.name}})


def group_text(config: Config, broadcast: Broadcast) -> str:
    return say(config.texts.broadcast_message, {"text": broadcast.text, "station": {"name": config.station.name}})


def draft_from_incident(config: Config, incident: Incident) -> str:
    return say(config.texts.broadcast_from_incident, incident_context(config, incident))


async def latest_draft(session: AsyncSession, live: ConfigVersion, created_by: str, now: datetime) -> Broadcast | None:
    config = live.config
    return (await session.scalars(
        select(Broadcast).where(Broadcast.station_id == config.station.id, Broadcast.created_by == created_by,
                                Broadcast.status == BroadcastStatus.draft,
                                Broadcast.created_at >= now - config.broadcast.draft_expires)
        .order_by(Broadcast.id.desc()).limit(1))).first()


async def confirm(session: AsyncSession, live: ConfigVersion, broadcast: Broadcast, now: datetime,
                  peers: dict[str, ConfigVersion] | None = None) -> int | None:
    """Queue one delivery per group; returns how many. Conditional on the draft still being a draft: None if
    it no longer is (confirmed or cancelled meanwhile, e.g. by a double-tapped 确认), so that the caller can
    tell that apart from a confirmed warning with no group to go to."""
    config = live.config
    claimed = await session.execute(
        update(Broadcast).where(Broadcast.id == broadcast.id, Broadcast.status == BroadcastStatus.draft)
        .values(status=BroadcastStatus.sending, confirmed_at=now).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    text = group_text(config, broadcast)
    copies = []
    for station_id, group in targets(live, broadcast, peers or {}):
        room_id = group.room_id or group.topic or ""
        copies.append((station_id, group, room_id, enqueue_row(
            session, account=station_id, conversation_id=room_id, is_room=True, text=text, now=now,
            kind="broadcast", priority=PRIORITY_BULK, broadcast_id=broadcast.id)))
    await session.flush()  # the copies' ids, for their deliveries
    for station_id, group, room_id, row in copies:
        session.add(BroadcastDelivery(broadcast_id=broadcast.id, station_id=station_id, group_id=group.id,
                                      room_id=room_id, outbox_id=row.id, status="queued"))
    count = len(copies)
    if count == 0:
        await finish_if_done(session, None, broadcast.id, live=live, now=now)
    return count


async def cancel(session: AsyncSession, live: ConfigVersion, broadcast: Broadcast, now: datetime) -> int:
    """Cancel a draft, or the deliveries of a running broadcast that have not gone out; returns how many
    deliveries were stopped."""
    if broadcast.status == BroadcastStatus.draft:
        broadcast.status = BroadcastStatus.cancelled
        broadcast.finished_at = now
        return 0
    if broadcast.status != BroadcastStatus.sending:
        return 0
    pending = (await session.scalars(
        select(OutboxMessage.id).where(OutboxMessage.broadcast_id == broadcast.id,
                                       OutboxMessage.status == OutboxStatus.pending))).all()
    if pending:
        await session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(pending),
                                                          OutboxMessage.status == OutboxStatus.pending)
                              .values(status=OutboxStatus.failed, last_error="cancelled")
                              .execution_options(synchronize_session=False))
        await session.execute(update(BroadcastDelivery).where(BroadcastDelivery.outbox_id.in_(pending))
                              .values(status="cancelled").execution_options(synchronize_session=False))
    await session.execute(update(Broadcast).where(Broadcast.id == broadcast.id)
                          .values(status=BroadcastStatus.cancelled, finished_at=now)
                          .execution_options(synchronize_session=False))
    return len(pending)


@dataclass(frozen=True)
class Progress:
    total: int
    queued: int
    sent: int
    failed: int
    skipped: int
    cancelled: int


async def progress(session: AsyncSession, broadcast_id: int) -> Progress:
    counts = dict((await session.execute(
        select(BroadcastDelivery.status, func.count()).where(BroadcastDelivery.broadcast_id == broadcast_id)
        .group_by(BroadcastDelivery.status))).all())
    return Progress(total=sum(counts.values()), queued=counts.get("queued", 0), sent=counts.get("sent", 0),
                    failed=counts.get("failed", 0), skipped=counts.get("skipped", 0),
                    cancelled=counts.get("cancelled", 0))


async def finish_if_done(session: AsyncSession, station: Station | None, broadcast_id: int, *,
                         live: ConfigVersion | None = None, now: datetime | None = None) -> bool:
    """Close a sending broadcast whose deliveries have all settled, and tell its sender (once)."""
    live = live or (station.current if station else None)
    now = now or (station.now() if station else None)
    assert live is not None and now is not None
    # Take the broadcast's row lock before counting: the last deliveries settled by several senders at once
    # would otherwise each count the others' (uncommitted) deliveries as queued, and nobody would finish it.
    await session.execute(select(Broadcast.id).where(Broadcast.id == broadcast_id).with_for_update())
    done = await progress(session, broadcast_id)
    if done.queued:
        return False
    claimed = await session.execute(
        update(Broadcast).where(Broadcast.id == broadcast_id, Broadcast.status == BroadcastStatus.sending)
        .values(status=BroadcastStatus.done, finished_at=now).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    broadcast = await session.get(Broadcast, broadcast_id)
    if broadcast is not None and broadcast.creator_wechat_id:
        text = say(live.config.texts.broadcast_done, {"id": broadcast_id, "sent": done.sent, "failed": done.failed,
                                                      "skipped": done.skipped, "total": done.total})
        # through the sender's own station account, whichever station's delivery happened to settle last
        enqueue(session, account=broadcast.station_id, conversation_id=broadcast.creator_wechat_id, is_room=False,
                text=text, now=now, kind="command_reply", priority=PRIORITY_NORMAL)
    if station is not None:
        station.outbox_ready.set()
    return True


async def list_broadcasts(session: AsyncSession, station_id: str | None, limit: int = 50
                          ) -> list[tuple[Broadcast, Progress]]:
    query = select(Broadcast).order_by(Broadcast.id.desc()).limit(limit)
    if station_id:
        query = query.where(Broadcast.station_id == station_id)
    rows = (await session.scalars(query)).all()
    return [(row, await progress(session, row.id)) for row in rows]
