"""The rows that must survive a crash: messages, incidents with their timelines, and the outbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime

# SQLite autoincrements only INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class InboundMessage(Base):
    """Every message the bot saw in a group or in private, once per (account, WeChat message id)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("account", "message_id"),
        # the duplicate-text check on every message: what this sender said lately
        Index("ix_inbound_messages_sender_sent", "account", "sender_id", "sent_at"),
        # the dashboard's and the evaluation's counts over a period
        Index("ix_inbound_messages_received", "account", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(128))
    room_id: Mapped[str | None] = mapped_column(String(128))
    group_id: Mapped[str | None] = mapped_column(String(64))
    sender_id: Mapped[str] = mapped_column(String(128))
    sender_name: Mapped[str] = mapped_column(String(256), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16), default="text")
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(64))


class IncidentStatus(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_station_status", "station_id", "status"),
                      Index("ix_incidents_room_route", "station_id", "room_id", "route_id", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str | None] = mapped_column(String(64))
    room_id: Mapped[str | None] = mapped_column(String(128))
    group_name: Mapped[str] = mapped_column(String(256), default="")
    route_id: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.open)
    reporter_id: Mapped[str] = mapped_column(String(128))
    reporter_name: Mapped[str] = mapped_column(String(256), default="")
    text: Mapped[str] = mapped_column(Text)
    source_message_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    assigned_officers: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str | None] = mapped_column(Text)
    report_count: Mapped[int] = mapped_column(Integer, default=1)
    # Escalation state: the chain's next step and when it is due; cleared by acknowledgement.
    chain_id: Mapped[str | None] = mapped_column(String(64))
    chain_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    next_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    overdue: Mapped[bool] = mapped_column(default=False)
    # Acknowledged but unresolved: when to remind, and when the acknowledgement lapses.
    reminder_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    events: Mapped[list[IncidentEvent]] = relationship(
        back_populates="incident", order_by="IncidentEvent.id", cascade="all, delete-orphan"
    )


class IncidentEvent(Base):
    """One line of an incident's timeline: reported, replied, pinged, acknowledged, …"""

    __tablename__ = "incident_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")

    incident: Mapped[Incident] = relationship(back_populates="events")


class OutboxStatus(StrEnum):
    pending = "pending"
    sending = "sending"  # claimed by a sender; if that process died, reconciled against echo receipts
    sent = "sent"
    failed = "failed"


class OutboxMessage(Base):
    """Every message the bot sends is written here first (in the transaction that decided it), then sent."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_account_status", "account", "status", "priority", "id"),
                      Index("ix_outbox_sent", "account", "status", "is_room", "sent_at"),
                      Index("ix_outbox_sent_message", "account", "sent_message_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(String(128))
    is_room: Mapped[bool] = mapped_column(default=False)
    text: Mapped[str] = mapped_column(Text)
    mentions: Mapped[list[str]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # lower goes first
    kind: Mapped[str] = mapped_column(String(32), default="reply")
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)  # retry backoff
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    broadcast_id: Mapped[int | None] = mapped_column(BigId, index=True)  # no FK: broadcasts reference outbox rows
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_message_id: Mapped[str | None] = mapped_column(String(128))


class OfficerPresence(Base):
    """When each officer was last seen on duty: a return after a gap triggers the digest of what happened."""

    __tablename__ = "officer_presence"
    __table_args__ = (UniqueConstraint("station_id", "officer_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(String(64))
    officer_id: Mapped[str] = mapped_column(String(64))
    last_on_duty_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CaseNumber(Base):
    """One sequence of case numbers shared by incidents and inquiries, so that "结 12" names one thing."""

    __tablename__ = "case_numbers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    station_id: Mapped[str] = mapped_column(String(64))


async def allocate_case_number(session: AsyncSession, kind: str, station_id: str) -> int:
    """The next case number, taken at once (a plain INSERT … RETURNING: the incident or ticket it numbers is
    then written with the rest of the transaction in one flush)."""
    numbers = CaseNumber.__table__
    taken = await session.execute(insert(numbers).values(kind=kind, station_id=station_id).returning(numbers.c.id))
    return int(taken.scalar_one())


class EchoReceipt(Base):
    """The bot's own messages as they come back from the puppet service: proof that a send went out,
    used to settle outbox rows whose sender died between sending and recording it."""

    __tablename__ = "echo_receipts"
    __table_args__ = (UniqueConstraint("account", "message_id"),
                      Index("ix_echo_receipts_lookup", "account", "conversation_id", "text_hash"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[str] = mapped_column(String(128))
    text_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class BroadcastStatus(StrEnum):
    draft = "draft"
    sending = "sending"
    done = "done"
    cancelled = "cancelled"


class Broadcast(Base):
    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))  # officer id or web user
    creator_wechat_id: Mapped[str | None] = mapped_column(String(128))  # told of progress
    text: Mapped[str] = mapped_column(Text)
    scope: Mapped[list[str]] = mapped_column(JSON, default=list)  # group ids
    source_incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"))
    district: Mapped[bool] = mapped_column(default=False)  # every station's groups, each through its own account
    status: Mapped[str] = mapped_column(String(16), default=BroadcastStatus.draft)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    deliveries: Mapped[list[BroadcastDelivery]] = relationship(
        back_populates="broadcast", order_by="BroadcastDelivery.id", cascade="all, delete-orphan"
    )


class BroadcastDelivery(Base):
    """One group's copy of a broadcast: at most one per group, ever."""

    __tablename__ = "broadcast_deliveries"
    __table_args__ = (UniqueConstraint("broadcast_id", "station_id", "group_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    broadcast_id: Mapped[int] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"), index=True)
    station_id: Mapped[str] = mapped_column(String(64))  # whose account sends this copy
    group_id: Mapped[str] = mapped_column(String(64))
    room_id: Mapped[str] = mapped_column(String(128))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, sent, failed, skipped, cancelled
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    broadcast: Mapped[Broadcast] = relationship(back_populates="deliveries")
