"""Who is on duty, and who covers a group, at a given moment — and why.

Sources, weakest first: weekly shifts (paused on public holidays unless ``on_holidays``), rotations, then
overrides in file order (leave, training and swaps win over everything before them). A group's own
community officer covers it while on duty; otherwise the duty officers on duty do; otherwise the
supervisors on duty; otherwise every supervisor, so that a report never goes to nobody.
The same functions serve production, ``main.py oncall`` and the admin web.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.config.schema import Config, GroupConfig, OfficerConfig, Role, ShiftConfig


@dataclass(frozen=True)
class Roster:
    on: dict[str, str] = field(default_factory=dict)  # officer id -> why on duty
    off: dict[str, str] = field(default_factory=dict)  # officer id -> why taken off by an override


@dataclass(frozen=True)
class Coverage:
    officers: tuple[OfficerConfig, ...]
    reason: str  # English, for logs and the CLI
    own_officer_on_shift: bool


def _shift_start_day(shift: ShiftConfig, local: datetime) -> datetime:
    if shift.start > shift.end and local.time() < shift.end:
        return local - timedelta(days=1)
    return local


def roster(config: Config, at: datetime) -> Roster:
    local = at.astimezone(config.zone)
    holidays = set(config.holidays)
    on: dict[str, str] = {}
    off: dict[str, str] = {}
    for shift in config.shifts:
        if not shift.covers(local):
            continue
        if not shift.on_holidays and _shift_start_day(shift, local).date() in holidays:
            continue
        on.setdefault(shift.officer, f"weekly shift {','.join(shift.days)} {shift.start:%H:%M}-{shift.end:%H:%M}")
    for rotation in config.rotations:
        who = rotation.officer_at(local)
        if who:
            on[who] = f"rotation {rotation.id} ({rotation.start:%H:%M}-{rotation.end:%H:%M})"
    for override in config.overrides:
        if not override.covers(local):
            continue
        span = f"{override.start:%m-%d %H:%M}..{override.end:%m-%d %H:%M}"
        why = f" ({override.reason})" if override.reason else ""
        if override.away:
            on.pop(override.officer, None)
            off[override.officer] = f"override: away {span}{why}"
            continue
        on[override.officer] = f"override {span}{why}" + (f", covering for {override.replaces}"
                                                         if override.replaces else "")
        off.pop(override.officer, None)
        if override.replaces:
            on.pop(override.replaces, None)
            off[override.replaces] = f"override: replaced by {override.officer} {span}{why}"
    return Roster(on, off)


def on_shift(config: Config, officer_id: str, at: datetime) -> bool:
    return officer_id in roster(config, at).on


def coverage(config: Config, group: GroupConfig | None, at: datetime, current: Roster | None = None) -> Coverage:
    duty_now = current or roster(config, at)
    if group is not None and group.officer:
        own = config.officer(group.officer)
        if own is not None and own.id in duty_now.on:
            return Coverage((own,), f"{own.id} is the group's own officer and on duty: {duty_now.on[own.id]}", True)
    for role, label in ((Role.duty, "duty officer"), (Role.supervisor, "supervisor")):
        present = tuple(o for o in config.officers if o.role == role and o.id in duty_now.on)
        if present:
            whys = "; ".join(f"{o.id}: {duty_now.on[o.id]}" for o in present)
            prefix = "group's own officer is off duty; " if group is not None and group.officer else ""
            return Coverage(present, f"{prefix}{label}(s) on duty ({whys})", False)
    supervisors = tuple(o for o in config.officers if o.role == Role.supervisor)
    if supervisors:
        return Coverage(supervisors, "nobody on duty; falling back to every supervisor", False)
    return Coverage(tuple(config.officers[:1]), "nobody on duty and no supervisor; the first officer listed", False)


def officers_with_role(config: Config, role: Role, at: datetime, current: Roster | None = None,
                       *, on_duty_only: bool = True) -> tuple[OfficerConfig, ...]:
    duty_now = current or roster(config, at)
    return tuple(o for o in config.officers if o.role == role and (not on_duty_only or o.id in duty_now.on))


def describe(config: Config, at: datetime, group_id: str | None = None) -> str:
    """The text of ``main.py oncall``."""
    local = at.astimezone(config.zone)
    duty_now = roster(config, at)
    lines = [f"{local:%Y-%m-%d %H:%M %a} ({config.timezone})"
             + ("  public holiday" if local.date() in set(config.holidays) else "")]
    lines.append("on duty:")
    for officer in config.officers:
        if officer.id in duty_now.on:
            lines.append(f"  {officer.name} ({officer.id}, {officer.role.value}): {duty_now.on[officer.id]}")
    if not duty_now.on:
        lines.append("  nobody")
    for officer_id, why in duty_now.off.items():
        lines.append(f"off: {officer_id}: {why}")
    groups = [g for g in config.groups if group_id is None or g.id == group_id]
    if group_id is not None and not groups:
        lines.append(f"unknown group {group_id!r}")
    for group in groups:
        cover = coverage(config, group, at, duty_now)
        names = ", ".join(f"{o.name} ({o.id})" for o in cover.officers)
        lines.append(f"group {group.id} ({group.display_name}): {names} — {cover.reason}")
    return "\n".join(lines)
