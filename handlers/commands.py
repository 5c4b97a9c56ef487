"""Officers' one-word answers in private chat with the bot.

Only rostered officers can act; anyone else gets a polite refusal and nothing changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.inbound import Inbound
from handlers.incidents import ack_already_text, acknowledge
from handlers.runtime import ConfigVersion
from handlers.texts import incident_context, say
from models.outbox import PRIORITY_URGENT, enqueue

_ACK_WORDS = ("收到", "收倒", "好的收到", "ok", "1")
_COMMAND = re.compile(r"^\s*(?P<word>[^\d#＃\s]+|1)\s*[#＃]?\s*(?P<number>\d+)?\s*$")


@dataclass(frozen=True)
class Command:
    name: str  # "ack" or "unknown"
    number: int | None = None


def parse_command(text: str) -> Command:
    found = _COMMAND.match(text.strip().rstrip("。.!！"))
    if not found:
        return Command("unknown")
    word = found.group("word").strip().lower()
    number = int(found.group("number")) if found.group("number") else None
    if word in _ACK_WORDS:
        return Command("ack", number)
    return Command("unknown")


async def handle_private(session: AsyncSession, live: ConfigVersion, inbound: Inbound, now: datetime) -> str:
    """Handle one private message; returns the outcome recorded on the stored message."""
    config = live.config
    station = config.station.id
    officer = live.officers_by_wechat.get(inbound.sender_id)

    def answer(text: str) -> None:
        enqueue(session, account=station, conversation_id=inbound.sender_id, is_room=False, text=text, now=now,
                kind="command_reply", priority=PRIORITY_URGENT)

    if officer is None:
        answer(config.texts.not_an_officer)
        return "refused_not_officer"

    command = parse_command(inbound.text)
    if command.name != "ack":
        answer(config.texts.unknown_command)
        return "unknown_command"

    result = await acknowledge(session, live, officer, command.number, now)
    if result.outcome == "acknowledged" and result.incident is not None:
        answer(say(config.texts.ack_officer, incident_context(config, result.incident, officers=(officer,))))
    elif result.outcome == "already" and result.incident is not None:
        answer(ack_already_text(live, result.incident))
    elif result.outcome == "not_found":
        answer(say(config.texts.ack_unknown_incident, {"number": command.number}))
    else:
        answer(config.texts.ack_nothing_open)
    return f"ack_{result.outcome}"
