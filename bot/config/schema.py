"""The shape of ``config.yaml``: pydantic models, validation only, no runtime state.

Runtime objects (the compiled router, the roster) are built from a validated
:class:`Config` elsewhere, so that validation errors can name a line before
anything runs.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bot.config.checks import compiling
from bot.config.inquiry_schema import InquirySettings
from bot.config.report_schema import WeeklyReportConfig

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    community = "community"  # 社区民警: owns groups
    duty = "duty"  # 值班民警
    supervisor = "supervisor"  # 所领导
    antifraud = "antifraud"  # 反诈民警
    general = "general"  # 综合民警 (back office)
    public_order = "public_order"  # 治安民警 (back office)


class Severity(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DatabaseConfig(Strict):
    url: str = "sqlite+aiosqlite:///data/gonghao.db"
    # SQLite only. full: nothing is sent before what caused it is on disk; normal: sends do not wait, commits
    # reach the disk within about half a second. Either way the loop never waits on the disk
    # (models/wal_checkpoint.py).
    sqlite_sync: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
            raise ValueError(
                "expected an async SQLAlchemy URL: 'sqlite+aiosqlite:///path/to/file.db' "
                "or 'postgresql+asyncpg://user@host:5432/dbname'"
            )
        return url


class StationConfig(Strict):
    id: Identifier
    name: str = Field(min_length=1)


class PuppetConfig(Strict):
    """This station's own bot account: a Wechaty puppet service. The token stays out of the file: it is read
    from the environment variable named here. Without a `puppet` section the process-wide
    WECHATY_PUPPET_SERVICE_TOKEN / _ENDPOINT are used (or, with no token, the built-in sandbox)."""

    endpoint: str = Field(pattern=r"^[^\s:]+:\d+$", description="host:port of the puppet service")
    token_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$", description="environment variable holding the token")


class OfficerConfig(Strict):
    id: Identifier
    name: str = Field(min_length=1)
    wechat_id: str = Field(min_length=1, description="the officer's WeChat contact id")
    role: Role
    phone: str | None = None


class GroupConfig(Strict):
    id: Identifier
    name: str | None = None
    room_id: str | None = None
    topic: str | None = None
    officer: Identifier | None = Field(None, description="id of the group's own community officer")

    @model_validator(mode="after")
    def _matched_somehow(self) -> GroupConfig:
        if not self.room_id and not self.topic:
            raise ValueError("a group needs room_id or topic (the exact room name) to be recognised")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.topic or self.id


def _parse_hhmm(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int):  # YAML 1.1 reads unquoted 08:30 as a sexagesimal int
        value = f"{value // 60:02d}:{value % 60:02d}"
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        raise ValueError(f"expected a time as 'HH:MM', got {value!r}")
    hours, minutes = (int(part) for part in value.strip().split(":"))
    if hours == 24 and minutes == 0:
        return time(23, 59, 59, 999999)
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"expected a time between 00:00 and 24:00, got {value!r}")
    return time(hours, minutes)


class WeeklyWindow(Strict):
    """Weekdays and a time range; ``end`` earlier than ``start`` means it runs past midnight."""

    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))
    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, value: Any) -> time:
        return _parse_hhmm(value)

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        days: list[str] = []
        for day in value:
            day = str(day).strip().lower()[:3]
            if day in ("dai", "all", "eve"):
                days.extend(WEEKDAYS)
            elif day in WEEKDAYS:
                days.append(day)
            else:
                raise ValueError(f"expected weekdays among {', '.join(WEEKDAYS)} or 'daily', got {day!r}")
        return days

    def covers(self, local: datetime) -> bool:
        """Whether a local time falls in the window; past-midnight hours belong to the day they started."""
        now = local.time()
        today = WEEKDAYS[local.weekday()]
        if self.start <= self.end:
            return today in self.days and self.start <= now < self.end
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return (today in self.days and now >= self.start) or (yesterday in self.days and now < self.end)


class ShiftConfig(WeeklyWindow):
    officer: Identifier
    on_holidays: bool = Field(False, description="whether this weekly shift also runs on public holidays")


def _parse_local_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    text = str(value).strip()
    for layout in ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, layout)
        except ValueError:
            continue
    raise ValueError(f"expected a local date and time like '2026-11-28 08:00' (or a date), got {value!r}")


class RotationConfig(Strict):
    """Officers taking turns: each serves ``days_each`` consecutive days in the daily window, in list order,
    starting with the first officer on ``start_date``. Rotations run on holidays too."""

    id: Identifier
    officers: list[Identifier] = Field(min_length=1)
    start_date: date
    days_each: int = Field(1, ge=1, le=31)
    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, value: Any) -> time:
        return _parse_hhmm(value)

    def officer_at(self, local: datetime) -> str | None:
        """Who is on this rotation at a local (naive or aware) time, or None outside its window."""
        window = WeeklyWindow(start=self.start, end=self.end)
        if not window.covers(local):
            return None
        day = local.date()
        if self.start > self.end and local.time() < self.end:
            day -= timedelta(days=1)  # past midnight: the shift that started yesterday
        offset = (day - self.start_date).days
        if offset < 0:
            return None
        return self.officers[(offset // self.days_each) % len(self.officers)]


class OverrideConfig(Strict):
    """Wins over shifts and rotations in [from, to): ``officer`` is on duty (covering for ``replaces`` if
    given), or, with ``away: true``, ``officer`` is unavailable (leave, training). (Not ``off``: YAML reads
    that key as a boolean.)"""

    officer: Identifier
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    replaces: Identifier | None = None
    away: bool = False
    reason: str = ""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _when(cls, value: Any) -> datetime:
        return _parse_local_datetime(value)

    @model_validator(mode="after")
    def _ordered(self) -> OverrideConfig:
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        if self.away and self.replaces:
            raise ValueError("an override either takes an officer away (away: true) or replaces someone, not both")
        return self

    def covers(self, local: datetime) -> bool:
        naive = local.replace(tzinfo=None)
        return self.start <= naive < self.end


class MatchConfig(Strict):
    any: list[str] = Field(default_factory=list)
    all: list[list[str]] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("any", "exclude")
    @classmethod
    def _non_empty_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not str(word).strip():
                raise ValueError("keywords must not be empty")
        return words

    @field_validator("all")
    @classmethod
    def _groups(cls, groups: list[list[str]]) -> list[list[str]]:
        for group in groups:
            if not group or any(not str(word).strip() for word in group):
                raise ValueError("each all-of group is a non-empty list of non-empty keywords")
        return groups

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return compiling(patterns)

    @property
    def is_empty(self) -> bool:
        return not (self.any or self.all or self.regex)


class RouteConfig(Strict):
    id: Identifier
    category: Identifier | None = None
    severity: Severity | None = None
    match: MatchConfig = Field(default_factory=MatchConfig)
    groups: list[Identifier] = Field(default_factory=list, description="limit to these groups; empty = all")
    active: list[WeeklyWindow] = Field(default_factory=list, description="only at these times; empty = always")
    dedup_minutes: int = Field(
        30, ge=0, le=7 * 24 * 60,
        description="a report in the same group and route within this many minutes of an open incident joins it",
    )
    reply: str | None = None
    ping: str | None = None
    continue_: bool = Field(False, alias="continue")
    routes: list[RouteConfig] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _matches_something(self) -> RouteConfig:
        if self.match.is_empty and not self.routes:
            raise ValueError("a route needs match.any, match.all or match.regex (or child routes)")
        return self


def parse_duration(value: Any) -> timedelta:
    """'90s', '3m', '2h', '1d', or a number of minutes."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(minutes=value)
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not found:
        raise ValueError(f"expected a duration like '90s', '3m', '2h' or '1d', got {value!r}")
    number, unit = float(found.group(1)), found.group(2) or "m"
    seconds_per_unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return timedelta(seconds=number * seconds_per_unit)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
NOTIFY_ROLES = ("covering", "own", "duty", "supervisor", "antifraud", "general", "public_order")


class EscalationStep(Strict):
    after: Duration = Field(description="time since the incident was opened (or reopened)")
    notify: list[str] = Field(min_length=1, description=f"any of {', '.join(NOTIFY_ROLES)} or officer ids")
    overdue: bool = Field(False, description="mark the incident overdue at this step")


class EscalationChain(Strict):
    id: Identifier
    severities: list[Severity] = Field(default_factory=list, description="empty = any")
    categories: list[Identifier] = Field(default_factory=list, description="empty = any")
    steps: list[EscalationStep] = Field(min_length=1)
    repeat_every: Duration | None = Field(None, description="after the last step, repeat it this often")
    max_repeats: int = Field(3, ge=0, le=100)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[EscalationStep]) -> list[EscalationStep]:
        for earlier, later in pairwise(steps):
            if later.after <= earlier.after:
                raise ValueError("steps must come in increasing order of 'after'")
        return steps


class RaiseSeverity(Strict):
    reports: int = Field(3, ge=2)
    within: Duration = timedelta(minutes=10)
    to: Severity = Severity.P1


class EscalationConfig(Strict):
    chains: list[EscalationChain] = Field(default_factory=list)
    ack_reminder: Duration | None = Field(
        timedelta(minutes=30), description="acknowledged but not resolved: remind the officer after this")
    ack_timeout: Duration | None = Field(
        timedelta(hours=2), description="acknowledged but not resolved this long: unacknowledged again")
    raise_severity: RaiseSeverity | None = None
    tick_seconds: float = Field(5.0, gt=0, le=60, description="how often due timers are checked")

    def chain_for(self, severity: str, category: str) -> EscalationChain | None:
        for chain in self.chains:
            if chain.severities and severity not in chain.severities:
                continue
            if chain.categories and category not in chain.categories:
                continue
            return chain
        return None


class OutboxConfig(Strict):
    """How fast this account may send. WeChat blocks accounts that send bursts ("发送消息过于频繁")."""

    group_interval: Duration = Field(timedelta(seconds=2.5), description="at least this between group messages")
    group_jitter: Duration = Field(timedelta(seconds=1), description="plus a random extra up to this")
    private_interval: Duration = Field(timedelta(seconds=0.3), description="between private messages")
    group_per_minute: int = Field(20, ge=1)
    group_per_day: int = Field(3000, ge=1, description="urgent replies to reports are exempt")


def _helper_mode(value: Any) -> Any:
    # YAML reads on/off/yes/no/true/false as booleans
    return ("on" if value else "off") if isinstance(value, bool) else value


HelperMode = Annotated[Literal["off", "on", "auto"], BeforeValidator(_helper_mode)]


class IntakeConfig(Strict):
    """How inbound chat is filtered before routing."""

    duplicate_window: Duration = Field(
        timedelta(minutes=2), description="same sender, same room, same text within this: a duplicate (WeChat "
        "sometimes delivers one message twice under new ids)")
    late_after: Duration = Field(
        timedelta(minutes=10), description="a message older than this when seen is answered as seen late")
    joined_reply_every: Duration = Field(
        timedelta(minutes=5), description="while an incident is open, at most one 'already reported' reply to "
        "its group per this interval, however many residents report it")
    payload_helper: HelperMode = Field(
        "auto", description="fetch message payloads from the puppet service in a helper process, so that a "
        "second CPU core does that gRPC work: on, off, or auto (only while loads queue up, on a machine with "
        "two cores or more); the bot falls back to fetching them itself")


class BroadcastConfig(Strict):
    roles: list[Role] = Field(default_factory=lambda: [Role.antifraud, Role.supervisor],
                              description="who may send warnings")
    district_roles: list[Role] = Field(default_factory=lambda: [Role.supervisor, Role.antifraud],
                                       description="who may send a warning to every station of the district "
                                       "(“预警 全区 …”, when several stations run together)")
    notify_scam_reports: bool = Field(True, description="send the anti-fraud team a summary of scam reports")
    draft_expires: Duration = Field(timedelta(hours=1), description="an unconfirmed draft expires after this")


class TextsConfig(Strict):
    """Everything the bot says that is not a route's own reply; Jinja2 templates."""

    ping: str = (
        "【警情 #{{ incident.id }}】{{ route.category_label }} {{ incident.severity }}\n"
        "群：{{ group.name }}\n"
        "居民：{{ resident.name }}\n"
        "时间：{{ message.time }}\n"
        "内容：{{ message.text }}\n"
        "请回复“收到 {{ incident.id }}”确认接警，办结后回复“处理完毕 {{ incident.id }} 处理结果”。"
    )
    default_reply: str = "【{{ station.name }}】已收到您的报告，值班民警已接报，请保持电话畅通。"
    backfill_note: str = "（本群社区民警{{ own_officer.name }}当前不在班，已通知{{ covering }}，请放心。）"
    digest: str = (
        "【离岗期间简报】{{ since }}以来您负责的群共有{{ incidents|length }}起警情：\n"
        "{% for i in incidents %}#{{ i.id }} {{ i.group }} {{ i.category }} {{ i.severity }} {{ i.status }}"
        "{% if i.by %}（{{ i.by }}）{% endif %} {{ i.time }}\n{% endfor %}"
        "详情回复“我的”，或在管理后台查看。"
    )
    late_note: str = "（公号{{ minutes }}分钟后才看到这条消息，已立即转告民警。）"
    joined_reply: str = (
        "【{{ station.name }}】收到，这件事已有居民报告（#{{ incident.id }}），民警已接报在处理，"
        "请注意安全，有新情况请继续在群里说。"
    )
    ack_group: str = "【{{ station.name }}】{{ officer.name }}已接警（#{{ incident.id }}），正在处理，请大家注意安全。"
    escalation_ping: str = (
        "【警情升级 #{{ incident.id }}】{{ route.category_label }} {{ incident.severity }}"
        "{% if incident.overdue %}（已超时）{% endif %}\n"
        "已{{ minutes }}分钟无人确认"
        "{% if incident.report_count > 1 %}，共{{ incident.report_count }}位居民报告{% endif %}。\n"
        "群：{{ group.name }}\n居民：{{ resident.name }}\n内容：{{ message.text }}\n"
        "请回复“收到 {{ incident.id }}”确认接警。"
    )
    ack_reminder: str = (
        "【提醒】警情 #{{ incident.id }}（{{ group.name }}，{{ route.category_label }}）"
        "已确认{{ minutes }}分钟，尚未办结。"
        "办结请回复“处理完毕 {{ incident.id }} 处理结果”。"
    )
    ack_expired: str = (
        "【提醒】警情 #{{ incident.id }} 确认后{{ minutes }}分钟仍未办结，已重新转为待确认并升级。"
    )
    severity_raised: str = (
        "【警情升级 #{{ incident.id }}】{{ group.name }}已有{{ incident.report_count }}位居民报告"
        "{{ route.category_label }}，等级升为{{ incident.severity }}。内容：{{ message.text }}\n"
        "请回复“收到 {{ incident.id }}”确认接警。"
    )
    broadcast_message: str = "【{{ station.name }}·反诈预警】{{ text }}"
    broadcast_preview: str = (
        "【预警草稿 #{{ id }}】将发送到{{ count }}个群：{{ groups }}\n——\n{{ text }}\n——\n"
        "回复“确认”发送，回复“取消”放弃。"
    )
    broadcast_started: str = "预警 #{{ id }} 开始发送，共{{ count }}个群，发完会告诉您结果。"
    broadcast_done: str = (
        "预警 #{{ id }} 发送完成：成功{{ sent }}个群{% if failed %}，失败{{ failed }}个{% endif %}"
        "{% if skipped %}，跳过{{ skipped }}个（公号已不在群内）{% endif %}。"
    )
    broadcast_cancelled: str = "预警 #{{ id }} 已取消{% if stopped %}，{{ stopped }}个群未发送{% endif %}。"
    broadcast_refused: str = "只有反诈民警和所领导可以发送预警。"
    broadcast_no_draft: str = "没有待确认的预警草稿。发送预警请回复“预警 预警内容”。"
    broadcast_unknown_groups: str = "没有找到这些群：{{ words }}。请写群名的一部分，例如“预警【锦绣,联洋】内容”。"
    broadcast_empty: str = "预警内容不能为空。请回复“预警 预警内容”。"
    broadcast_from_incident: str = (
        "近期有居民收到这样的信息：“{{ message.text }}”。这是诈骗！千万不要转账，不要点链接，"
        "不要把验证码告诉任何人。拿不准请拨打96110或110。"
    )
    scam_summary: str = (
        "【诈骗线索 #{{ incident.id }}】{{ group.name }} {{ resident.name }}（{{ message.time }}）："
        "{{ message.text }}\n"
        "回复“预警 草稿 {{ incident.id }}”可生成面向全所各群的预警草稿。"
    )
    resolved_group: str = "【{{ station.name }}】#{{ incident.id }} 已处理完毕：{{ result }}（{{ officer.name }}）"
    ack_officer: str = "已确认接警 #{{ incident.id }}（{{ group.name }}）。"
    ack_nothing_open: str = "您当前没有待确认的警情。"
    ack_unknown_incident: str = "没有找到警情 #{{ number }}，或它不属于本所。"
    ack_already: str = "警情 #{{ incident.id }} 已由{{ acked_by }}于{{ acked_at }}确认。"
    not_an_officer: str = "您好，此账号仅用于接收民警指令。如需报警请拨打110，或在所在小区群里说明情况。"
    help: str = (
        "可用指令（私聊发给我）：\n"
        "收到 —— 确认最近一条待确认警情；收到 12 —— 确认12号警情\n"
        "处理完毕 12 处理结果 —— 办结12号警情，结果会告知群里居民（也可写“结 12 …”）\n"
        "转 12 张警官 —— 把12号警情转给其他民警\n"
        "值班 —— 现在谁在班\n"
        "我的 —— 我未办结的警情\n"
        "预警 内容 —— 给全所各群发反诈预警（反诈民警、所领导）；预警【锦绣,联洋】内容 —— 只发这些群；"
        "预警 草稿 12 —— 用12号诈骗警情生成草稿；确认 / 取消 —— 发送或放弃草稿\n"
        "帮助 —— 显示本说明"
    )
    resolve_officer: str = "已办结警情 #{{ incident.id }}，结果已告知群里居民：{{ result }}"
    resolve_already: str = "警情 #{{ incident.id }} 已经办结。"
    resolve_nothing_open: str = "您当前没有未办结的警情。办结指定警情请回复“处理完毕 编号 处理结果”。"
    resolve_default_result: str = "民警已处理完毕"
    transfer_ping: str = (
        "【警情转交 #{{ incident.id }}】{{ by }}把这起警情转给您：{{ route.category_label }} {{ incident.severity }}\n"
        "群：{{ group.name }}\n居民：{{ resident.name }}\n时间：{{ message.time }}\n内容：{{ message.text }}\n"
        "请回复“收到 {{ incident.id }}”确认接警。"
    )
    transfer_officer: str = "警情 #{{ incident.id }} 已转给{{ officer.name }}。"
    transfer_unknown_officer: str = "没有找到民警“{{ name }}”。请写民警的姓名或编号，例如“转 12 王警官”。"
    no_one_on_duty: str = "【{{ station.name }}】当前没有排班民警，已转所领导。"


class WebRole(StrEnum):
    viewer = "viewer"  # sees everything, changes nothing
    officer = "officer"  # also resolves incidents and (later) sends broadcasts
    admin = "admin"  # also reloads the config


class WebUserConfig(Strict):
    username: Identifier
    password_hash: str = Field(
        pattern=r"^pbkdf2_sha256\$\d+\$[^$]+\$[^$]+$",
        description="made by `python main.py hash-password`; never the password itself",
    )
    role: WebRole = WebRole.viewer
    officer: Identifier | None = Field(None, description="the officer this login acts as, if any")


class WebConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8780, ge=0, le=65535)
    session_hours: int = Field(12, ge=1, le=24 * 30)
    secure_cookies: bool = Field(False, description="true when served over HTTPS (behind a proxy)")
    users: list[WebUserConfig] = Field(default_factory=list)


class Config(Strict):
    timezone: str = "Asia/Shanghai"
    data_dir: str = "data"
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    station: StationConfig
    puppet: PuppetConfig | None = None
    officers: list[OfficerConfig] = Field(min_length=1)
    groups: list[GroupConfig] = Field(default_factory=list)
    shifts: list[ShiftConfig] = Field(default_factory=list)
    rotations: list[RotationConfig] = Field(default_factory=list)
    overrides: list[OverrideConfig] = Field(default_factory=list)
    holidays: list[date] = Field(default_factory=list, description="public holidays (weekly shifts pause)")
    backfill_by_role: bool = Field(
        False, description="tell residents 'the duty officer' rather than the officer's name when backfilling"
    )
    categories: dict[Identifier, str] = Field(default_factory=dict, description="category id -> Chinese label")
    routes: list[RouteConfig] = Field(default_factory=list)
    texts: TextsConfig = Field(default_factory=TextsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    broadcast: BroadcastConfig = Field(default_factory=BroadcastConfig)
    inquiries: InquirySettings = Field(default_factory=InquirySettings)
    weekly_report: WeeklyReportConfig = Field(default_factory=WeeklyReportConfig)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"expected an IANA time zone such as 'Asia/Shanghai', got {zone!r}") from exc
        return zone

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def officer(self, officer_id: str) -> OfficerConfig | None:
        return next((officer for officer in self.officers if officer.id == officer_id), None)


def iter_routes(
    routes: list[RouteConfig], prefix: tuple[str | int, ...] = ("routes",)
) -> list[tuple[tuple[str | int, ...], RouteConfig]]:
    """Every route in the tree with its path in the YAML, depth first."""
    found: list[tuple[tuple[str | int, ...], RouteConfig]] = []
    for index, route in enumerate(routes):
        path = (*prefix, index)
        found.append((path, route))
        found.extend(iter_routes(route.routes, (*path, "routes")))
    return found


Path = tuple[str | int, ...]


def reference_errors(config: Config) -> list[tuple[Path, str]]:
    """Cross-references pydantic cannot check field by field: ids that must exist or be unique."""
    errors: list[tuple[Path, str]] = []
    errors += _duplicates([officer.id for officer in config.officers], "officers", "id")
    errors += _duplicates([officer.wechat_id for officer in config.officers], "officers", "wechat_id")
    errors += _duplicates([group.id for group in config.groups], "groups", "id")
    known_officers = {officer.id for officer in config.officers}
    known_groups = {group.id for group in config.groups}
    for index, group in enumerate(config.groups):
        if group.officer and group.officer not in known_officers:
            errors.append(_unknown(("groups", index, "officer"), group.officer, "officer", known_officers))
    errors += _duplicates([user.username for user in config.web.users], "web.users", "username")
    for index, user in enumerate(config.web.users):
        if user.officer and user.officer not in known_officers:
            errors.append(_unknown(("web", "users", index, "officer"), user.officer, "officer", known_officers))
    for index, shift in enumerate(config.shifts):
        if shift.officer not in known_officers:
            errors.append(_unknown(("shifts", index, "officer"), shift.officer, "officer", known_officers))
    errors += _duplicates([rotation.id for rotation in config.rotations], "rotations", "id")
    for index, rotation in enumerate(config.rotations):
        for o_index, officer_id in enumerate(rotation.officers):
            if officer_id not in known_officers:
                errors.append(_unknown(("rotations", index, "officers", o_index), officer_id, "officer",
                                       known_officers))
    for c_index, chain in enumerate(config.escalation.chains):
        for s_index, step in enumerate(chain.steps):
            for n_index, target in enumerate(step.notify):
                if target not in NOTIFY_ROLES and target not in known_officers:
                    errors.append(_unknown(("escalation", "chains", c_index, "steps", s_index, "notify", n_index),
                                           target, "role or officer", set(NOTIFY_ROLES) | known_officers))
    for index, override in enumerate(config.overrides):
        for field in ("officer", "replaces"):
            value = getattr(override, field)
            if value and value not in known_officers:
                errors.append(_unknown(("overrides", index, field), value, "officer", known_officers))
    seen_routes: set[str] = set()
    for path, route in iter_routes(config.routes):
        if route.id in seen_routes:
            errors.append(((*path, "id"), f"duplicate route id {route.id!r}"))
        seen_routes.add(route.id)
        for g_index, group_id in enumerate(route.groups):
            if group_id not in known_groups:
                errors.append(_unknown((*path, "groups", g_index), group_id, "group", known_groups))
    return errors


def _duplicates(values: list[str], section: str, field: str) -> list[tuple[Path, str]]:
    seen: set[str] = set()
    errors: list[tuple[Path, str]] = []
    for index, value in enumerate(values):
        if value in seen:
            errors.append(((section, index, field), f"duplicate {field} {value!r}"))
        seen.add(value)
    return errors


def _unknown(path: Path, value: str, kind: str, known: set[str]) -> tuple[Path, str]:
    choices = ", ".join(sorted(known)) or "(none defined)"
    return path, f"unknown {kind} {value!r}; expected one of: {choices}"
