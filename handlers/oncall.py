"""Who covers a group at a given moment, and why.

The group's own community officer covers it while on shift; otherwise the station's duty officers on
shift; otherwise the supervisors, so that a report never goes to nobody. Weekly shifts are read in the
configured time zone; a shift whose end is earlier than its start runs past midnight and belongs to
the weekday it started on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.config.schema import Config, GroupConfig, OfficerConfig, Role


@dataclass(frozen=True)
class Coverage:
    officers: tuple[OfficerConfig, ...]
    reason: str  # English, for logs and the CLI
    own_officer_on_shift: bool


def on_shift(config: Config, officer_id: str, at: datetime) -> bool:
    local = at.astimezone(config.zone)
    return any(shift.officer == officer_id and shift.covers(local) for shift in config.shifts)


def coverage(config: Config, group: GroupConfig | None, at: datetime) -> Coverage:
    if group is not None and group.officer:
        own = config.officer(group.officer)
        if own is not None and on_shift(config, own.id, at):
            return Coverage((own,), f"{own.id} is the group's own officer and on shift", True)
    duty = tuple(o for o in config.officers if o.role == Role.duty and on_shift(config, o.id, at))
    if duty:
        return Coverage(duty, "group's own officer is off shift; duty officer(s) on shift", False)
    supervisors = tuple(o for o in config.officers if o.role == Role.supervisor)
    if supervisors:
        return Coverage(supervisors, "nobody on shift; falling back to the supervisor(s)", False)
    return Coverage(tuple(config.officers[:1]), "nobody on shift and no supervisor; first officer listed", False)
