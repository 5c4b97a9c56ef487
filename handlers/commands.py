"""Officers answer in a word, privately: 收到 / 收到 12, 处理完毕 12 结果, 转 12 张三, 值班, 我的, 帮助;
and residents' inquiries: 答 35 答复, 反馈 35 进展, 结 35 结果 (numbers are shared with incidents, so "结 N"
closes whichever N is).

Only rostered officers can act, and only on their station's incidents; anyone else gets a polite
refusal and nothing changes. The parser tolerates full-width characters, extra spaces, a leading #,
trailing particles (收到了, 收到！) and a few common slips (收倒, 受到).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.schema import Config, OfficerConfig
from handlers import broadcasts, ticket_commands, tickets
from handlers.escalation import group_of, start_chain
from handlers.inbound import Inbound
from handlers.incidents import ack_already_text, acknowledge, resolve
from handlers.oncall import roster
from handlers.runtime import ConfigVersion
from handlers.texts import incident_context, local_time, say
from models.appends import add_incident_event
from models.outbox import PRIORITY_URGENT, enqueue
from models.tables import Broadcast, Incident, IncidentStatus

_ACK = r"(?:收到|收倒|受到|好的收到|收到收到|ok|1)"
_RESOLVE = r"(?:处理完毕|处理完了|处理完|已处理|已办结|办结|完毕|结案|结)"
_TRANSFER = r"(?:转交给|转交|转给|移交|转)"
_NUMBER = r"(?:#)?(?P<number>\d{1,9})"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ack", re.compile(rf"^{_ACK}(?:\s*{_NUMBER})?$", re.IGNORECASE)),
    ("resolve", re.compile(rf"^{_RESOLVE}(?:\s*{_NUMBER})?(?:\s+|[:：,，]\s*)?(?P<rest>.*)$")),
    ("transfer", re.compile(rf"^{_TRANSFER}\s*{_NUMBER}\s*(?:给)?\s*(?P<rest>.+)$")),
    ("warn_draft", re.compile(rf"^预警\s*草稿\s*{_NUMBER}$")),
    ("warn", re.compile(r"^预警\s*(?P<rest>.*)$", re.S)),
    ("confirm", re.compile(r"^(?:确认|确认发送|发送)$")),
    ("cancel", re.compile(rf"^(?:取消|取消发送|不发了)(?:\s*{_NUMBER})?$")),
    ("duty", re.compile(r"^(?:值班|谁值班|值班表|值班民警|今天谁值班)$")),
    ("mine", re.compile(r"^(?:我的|我的警情|我的任务|待办)$")),
    ("help", re.compile(r"^(?:帮助|help|菜单|指令|\?)$", re.IGNORECASE)),
)
Reply = Callable[[str], None]
_TRAILING = re.compile(r"[了啦哈呀吧的!！。.~～\s]+$")


@dataclass(frozen=True)
class Command:
    name: str  # ack, resolve, transfer, duty, mine, help, unknown
    number: int | None = None
    rest: str = ""


def parse_command(text: str) -> Command:
    # The text as typed first (so a result keeps its own punctuation), then full-width folded.
    typed = re.sub(r"\s+", " ", text.strip())
    folded = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).strip())
    for candidate in (typed, folded, _TRAILING.sub("", folded)):
        for name, pattern in _PATTERNS:
            found = pattern.match(candidate)
            if found:
                groups = found.groupdict()
                number = int(groups["number"]) if groups.get("number") else None
                return Command(name, number, (groups.get("rest") or "").strip())
    return Command("unknown")


def find_officer(config: Config, words: str) -> OfficerConfig | None:
    """An officer by id, full name, or surname ('张三', '张警官', '张', 'zhang')."""
    words = words.strip().removeprefix("@")
    for officer in config.officers:
        if words in (officer.id, officer.name):
            return officer
    surname = words[:1]
    matches = [o for o in config.officers if o.name.startswith(surname)] if surname else []
    return matches[0] if len(matches) == 1 else None


async def handle_private(session: AsyncSession, live: ConfigVersion, inbound: Inbound, now: datetime,
                         peers: dict[str, ConfigVersion] | None = None) -> str:
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

    ticket_command = ticket_commands.parse_ticket_command(inbound.text)
    if ticket_command is not None:  # 答 35 … / 反馈 35 …: residents' inquiries
        return await ticket_commands.handle_ticket_command(session, live, officer, ticket_command, now, answer)
    command = parse_command(inbound.text)
    peers = peers or {}
    if command.name == "ack":
        return await _ack(session, live, officer, command, now, answer)
    if command.name == "resolve":
        return await _resolve(session, live, officer, command, now, answer)
    if command.name == "transfer":
        return await _transfer(session, live, officer, command, now, answer)
    if command.name in ("warn", "warn_draft", "confirm", "cancel"):
        return await _broadcast_command(session, live, officer, command, now, answer, peers)
    if command.name == "duty":
        answer(_duty_text(config, now))
        return "duty"
    if command.name == "mine":
        answer(await _mine_text(session, config, officer))
        return "mine"
    answer(config.texts.help)
    return "help" if command.name == "help" else "unknown_command"


async def _ack(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, command: Command,
               now: datetime, answer: Reply) -> str:
    config = live.config
    ticket = await tickets.find_ticket(session, config.station.id, command.number)
    if ticket is not None:  # "收到 35" for an inquiry: say how to answer it instead
        answer(ticket_commands.ack_is_inquiry_text(live, ticket))
        return "ack_inquiry"
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


async def _latest_of(session: AsyncSession, config: Config, officer: OfficerConfig) -> Incident | None:
    """The officer's most recent unresolved incident: the one they acknowledged, else one assigned to them."""
    rows = (await session.scalars(
        select(Incident).where(Incident.station_id == config.station.id,
                               Incident.status != IncidentStatus.resolved)
        .order_by(Incident.id.desc()).limit(200))).all()
    mine = [i for i in rows if i.acknowledged_by == officer.id] or [
        i for i in rows if officer.id in (i.assigned_officers or [])]
    return mine[0] if mine else None


async def _resolve(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, command: Command,
                   now: datetime, answer: Reply) -> str:
    config = live.config
    number = command.number
    if number is None:
        latest = await _latest_of(session, config, officer)
        if latest is None:
            answer(config.texts.resolve_nothing_open)
            return "resolve_nothing_open"
        number = latest.id
    ticket = await tickets.find_ticket(session, config.station.id, number)
    if ticket is not None:  # 结 35 when 35 is an inquiry
        return await ticket_commands.close_command(session, live, officer, ticket, command.rest, now, answer)
    result_text = command.rest or config.texts.resolve_default_result
    outcome = await resolve(session, live, officer.id, officer.name, number, result_text, now)
    if outcome.outcome == "resolved" and outcome.incident is not None:
        context = incident_context(config, outcome.incident, officers=(officer,))
        context["result"] = result_text
        answer(say(config.texts.resolve_officer, context))
    elif outcome.outcome == "already" and outcome.incident is not None:
        answer(say(config.texts.resolve_already, incident_context(config, outcome.incident)))
    else:
        answer(say(config.texts.ack_unknown_incident, {"number": number}))
    return f"resolve_{outcome.outcome}"


async def _transfer(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, command: Command,
                    now: datetime, answer: Reply) -> str:
    config = live.config
    target = find_officer(config, command.rest)
    if target is None:
        answer(say(config.texts.transfer_unknown_officer, {"name": command.rest}))
        return "transfer_unknown_officer"
    ticket = await tickets.find_ticket(session, config.station.id, command.number)
    if ticket is not None:
        return await ticket_commands.transfer_command(session, live, officer, ticket, target, now, answer)
    incident = await session.get(Incident, command.number)
    if incident is None or incident.station_id != config.station.id:
        answer(say(config.texts.ack_unknown_incident, {"number": command.number}))
        return "transfer_not_found"
    if incident.status == IncidentStatus.resolved:
        answer(say(config.texts.resolve_already, incident_context(config, incident)))
        return "transfer_resolved"
    incident.assigned_officers = [target.id]
    incident.status = IncidentStatus.open
    incident.acknowledged_at = incident.acknowledged_by = None
    incident.reminder_at = incident.ack_deadline_at = None
    start_chain(config, incident, now)
    add_incident_event(session, incident, "transferred", now, officer.id, f"to {target.id}")
    group = group_of(config, incident)
    context = incident_context(config, incident, group=group, officers=(target,))
    context["by"] = officer.name
    enqueue(session, account=config.station.id, conversation_id=target.wechat_id, is_room=False,
            text=say(config.texts.transfer_ping, context), now=now, kind="ping", priority=PRIORITY_URGENT,
            incident_id=incident.id)
    add_incident_event(session, incident, "pinged", now, target.id, "transferred")
    answer(say(config.texts.transfer_officer, context))
    return "transferred"


async def _broadcast_command(session: AsyncSession, live: ConfigVersion, officer: OfficerConfig, command: Command,
                             now: datetime, answer: Reply, peers: dict[str, ConfigVersion]) -> str:
    config = live.config
    if not broadcasts.may_broadcast(config, officer):
        answer(config.texts.broadcast_refused)
        return "broadcast_refused"
    if command.name == "confirm":
        draft = await broadcasts.latest_draft(session, live, officer.id, now)
        if draft is None:
            answer(config.texts.broadcast_no_draft)
            return "broadcast_no_draft"
        count = await broadcasts.confirm(session, live, draft, now, peers)
        if count is None:  # another 确认 took the draft first: for this one there is no draft left
            answer(config.texts.broadcast_no_draft)
            return "broadcast_no_draft"
        answer(say(config.texts.broadcast_started, {"id": draft.id, "count": count}))
        return "broadcast_confirmed"
    if command.name == "cancel":
        target = (await session.get(Broadcast, command.number) if command.number
                  else await broadcasts.latest_draft(session, live, officer.id, now))
        if target is None or target.station_id != config.station.id:
            answer(config.texts.broadcast_no_draft)
            return "broadcast_no_draft"
        stopped = await broadcasts.cancel(session, live, target, now)
        answer(say(config.texts.broadcast_cancelled, {"id": target.id, "stopped": stopped}))
        return "broadcast_cancelled"
    district = False
    if command.name == "warn_draft":
        incident = await session.get(Incident, command.number)
        if incident is None or incident.station_id != config.station.id:
            answer(say(config.texts.ack_unknown_incident, {"number": command.number}))
            return "broadcast_not_found"
        text, groups = broadcasts.draft_from_incident(config, incident), broadcasts.resolve_scope(config, "")[0]
        source = incident.id
    else:
        scope, text = broadcasts.split_scope(command.rest)
        district = scope == broadcasts.DISTRICT
        if district and not broadcasts.may_broadcast_district(config, officer):
            answer(config.texts.broadcast_refused)
            return "broadcast_refused"
        groups, unknown = broadcasts.resolve_scope(config, "" if district else scope)
        if unknown:
            answer(say(config.texts.broadcast_unknown_groups, {"words": "、".join(unknown)}))
            return "broadcast_unknown_groups"
        if not text:
            answer(config.texts.broadcast_empty)
            return "broadcast_empty"
        source = None
    draft = await broadcasts.create_draft(session, live, officer.id, officer.wechat_id, text, groups, now, source,
                                          district=command.name == "warn" and district)
    answer(broadcasts.preview_text(live, draft, peers))
    return "broadcast_draft"


def _duty_text(config: Config, now: datetime) -> str:
    current = roster(config, now)
    lines = [f"{local_time(config, now)} 在班："]
    for officer in config.officers:
        if officer.id in current.on:
            phone = f" {officer.phone}" if officer.phone else ""
            lines.append(f"{officer.name}（{_ROLE_NAMES.get(officer.role.value, officer.role.value)}）{phone}")
    if len(lines) == 1:
        lines.append("无人在班，警情将转所领导。")
    return "\n".join(lines)


_ROLE_NAMES = {"community": "社区民警", "duty": "值班民警", "supervisor": "所领导", "antifraud": "反诈民警",
               "general": "综合民警", "public_order": "治安民警"}
_STATUS_NAMES = {"open": "待确认", "acknowledged": "处理中", "resolved": "已办结"}


async def _mine_text(session: AsyncSession, config: Config, officer: OfficerConfig) -> str:
    rows = (await session.scalars(
        select(Incident).where(Incident.station_id == config.station.id,
                               Incident.status != IncidentStatus.resolved,
                               or_(Incident.acknowledged_by == officer.id, Incident.acknowledged_by.is_(None)))
        .order_by(Incident.id.desc()).limit(200))).all()
    mine = [i for i in rows if i.acknowledged_by == officer.id or officer.id in (i.assigned_officers or [])]
    inquiries = await ticket_commands.mine_lines(session, config, officer)
    if not mine:
        return "\n".join(["您当前没有未办结的警情。", *inquiries])
    lines = ["您未办结的警情："]
    for incident in mine[:20]:
        label = config.categories.get(incident.category, incident.category)
        lines.append(f"#{incident.id} {label} {incident.severity} {incident.group_name} "
                     f"{_STATUS_NAMES.get(incident.status, incident.status)} {local_time(config, incident.created_at)}")
    return "\n".join(lines + inquiries)
