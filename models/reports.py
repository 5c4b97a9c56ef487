"""Weekly reports as they were sent: one row per station and week, claimed with INSERT … ON CONFLICT DO
NOTHING so that a restart or a second process sharing the database never sends a week twice."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime
from models.tables import BigId


class WeeklyReport(Base):
    __tablename__ = "weekly_reports"
    __table_args__ = (
        UniqueConstraint("station_id", "week_start"),
        Index("ix_weekly_reports_station_created", "station_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(String(64))
    week_start: Mapped[date] = mapped_column(Date)  # the local Monday the report's week begins on
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)  # that Monday 00:00 local, as UTC
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)  # the next Monday 00:00 local (exclusive)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text)  # the private message, exactly as queued
    # {"groups": [...], "total": {...}, "by_hour": [...], "inquiries_available": bool}
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)  # officer ids it was queued for
