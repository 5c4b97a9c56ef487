"""Officers' private commands on inquiry tickets: "答 35 …" (answer), "反馈 35 …" (feedback), and the parts of
"结 35", "转 35" and "我的" that concern inquiries (``handlers/commands.py`` parses those and asks here)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import Config, OfficerConfig
from handlers.runtime import ConfigVersion
from handlers.texts import local_time, say
from handlers.tickets import (
    answer_ticket,
    close_ticket,
    feedback_ticket,
    find_ticket,
    group_of,
    settings_of,
    ticket_context,
    to_officer,
)
from models.appends import add_ticket_event
from models.tickets import Ticket, TicketStatus

Reply = Callable[[str], None]
_STATUS_NAMES = {"open": "待答复", "responded": "已答复", "feedback": "已反馈", "closed": "已办结"}


@dataclass(frozen=True)
class TicketCommand:
    name: str  # answer, feedback
    number: int
    rest: str = ""


_NUMBER = r"\s*#?(?P<number>\d{1,9})(?:\s+|\s*[:：,，]\s*|(?=\D)|$)(?P<rest>.*)$"
_TICKET_PATTERNS = (
    ("answer", re.compile(r"^(?:答复|回复|答)" + _NUMBER, re.DOTALL)),
    ("feedback", re.compile(r"^(?:反馈|进展)" + _NUMBER, re.DOTALL)),
)


def parse_ticket_command(text: str) -> TicketCommand | None:
    """"答 35 内容" / "答复35：内容" / "反馈 35 内容"; None for anything else (other commands, chat)."""
    typed = text.strip()
    folded = unicodedata.normalize("NFKC", typed)
    for candidate in (typed, folded):
        for name, pattern in _TICKET_PATTERNS:
            found = pattern.match(candidate)
            if found:
                return TicketCommand(name, int(found.group("number")), found.group("rest").strip())
    return None


def not_found_text(live: ConfigVersion, number: int | None) -> str:
    return say(settings_of(live.config).texts.not_found, {"number": number})


async def handle_ticket_command(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig,
                                command: TicketCommand, now: datetime, reply: Reply) -> str:
    """答 / 反馈 from an officer in private; ``reply`` answers the officer. Returns the outcome."""
    config = live.config
    settings = settings_of(config)
    ticket = await find_ticket(session, config.station.id, command.number)
    if ticket is None:
        reply(not_found_text(live, command.number))
        return f"inquiry_{command.name}_not_found"
    context = ticket_context(config, ticket, group=group_of(config, ticket))
    if not command.rest:
        reply(say(settings.texts.empty_text, context))
        return f"inquiry_{command.name}_empty"
    if command.name == "answer":
        outcome = await answer_ticket(session, live, ticket, officer, command.rest, now)
        template = settings.texts.answer_officer
    else:
        outcome = await feedback_ticket(session, live, ticket, officer, command.rest, now)
        template = settings.texts.feedback_officer
    reply(say(settings.texts.already_closed if outcome == "closed" else template, context))
    return f"inquiry_{outcome}" if outcome != "closed" else f"inquiry_{command.name}_closed"


async def close_command(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, ticket: Ticket,
                        result_text: str, now: datetime, reply: Reply) -> str:
    """"结 35 结果" / "处理完毕 35 结果" when 35 is an inquiry."""
    settings = settings_of(live.config)
    outcome = await close_ticket(session, live, ticket, officer.id, officer.name, result_text, now)
    context = ticket_context(live.config, ticket, group=group_of(live.config, ticket), result=ticket.result)
    template = settings.texts.closed_officer if outcome == "closed" else settings.texts.already_closed
    reply(say(template, context))
    return f"inquiry_{outcome}" if outcome == "closed" else "inquiry_close_already"


async def transfer_command(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, ticket: Ticket,
                           target: OfficerConfig, now: datetime, reply: Reply) -> str:
    """"转 35 陈警官" when 35 is an inquiry: the new assignee is pinged; the clock does not restart (the
    promise was made to the resident)."""
    config = live.config
    settings = settings_of(config)
    if ticket.status == TicketStatus.closed:
        reply(say(settings.texts.already_closed, ticket_context(config, ticket)))
        return "inquiry_transfer_closed"
    previous = ticket.assignee
    ticket.assignee = target.id
    ticket.assignee_reason = f"transferred by {officer.id}"
    add_ticket_event(session, ticket, "transferred", now, officer.id, f"{previous} -> {target.id}")
    context = ticket_context(config, ticket, group=group_of(config, ticket), officer=target, by=officer.name)
    to_officer(session, config, target, say(settings.texts.transfer_ping, context), now, "inquiry_ping")
    add_ticket_event(session, ticket, "pinged", now, target.id, "transferred")
    reply(say(settings.texts.transfer_officer, context))
    return "inquiry_transferred"


def ack_is_inquiry_text(live: ConfigVersion, ticket: Ticket) -> str:
    """For "收到 35" when 35 is an inquiry: tell the officer how to answer it instead."""
    return say(settings_of(live.config).texts.ack_is_inquiry, ticket_context(live.config, ticket))


async def mine_lines(session: AsyncSession, config: Config, officer: OfficerConfig) -> list[str]:
    """The officer's unclosed inquiries, for "我的"."""
    rows = (await session.scalars(
        select(Ticket).where(Ticket.station_id == config.station.id, Ticket.assignee == officer.id,
                             Ticket.status != TicketStatus.closed).order_by(Ticket.id).limit(20))).all()
    if not rows:
        return []
    settings = settings_of(config)
    lines = ["您未办结的居民咨询："]
    for ticket in rows:
        category = settings.categories.get(ticket.category)
        deadline = f" 截止 {local_time(config, ticket.due_at)}" if ticket.status == TicketStatus.open else ""
        lines.append(f"#{ticket.id} {category.label if category else ticket.category} {ticket.group_name} "
                     f"{ticket.resident_name} {_STATUS_NAMES.get(ticket.status, ticket.status)}{deadline}")
    return lines
