"""Residents' questions for the police: recognise them, answer the common ones at once, open a ticket.

The pipeline calls :func:`on_room_message` for a group message no routing rule matched (a report is an
incident, never an inquiry) and :func:`on_officer_room_message` for an officer's group message first (an
officer answering a resident in the group is the ticket's response).

Recognising an inquiry (precision first: neighbours chatting must not become tickets):

* an @-mention of the public account, or of an officer, is an inquiry, unless it is only thanks or a
  greeting ("@王警官 辛苦了");
* otherwise a message needs a police topic (派出所, 民警, 户口, 身份证, 居住证, 开…证明, 档案, 案件…)
  and a question signal (a question mark, 吗, 请问, 怎么, 哪里, 几点, 能不能…, or a request like 想办/要开),
  and no chatter pattern (the station as a landmark, whether the police came, someone else's papers).

"明天几点停水？" and "谁家的快递？" have no police topic; "派出所旁边的面馆还开吗？" is a landmark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config.inquiry_schema import DetectionSettings, InquirySettings
from bot.config.schema import GroupConfig
from handlers import tickets
from handlers.inbound import Inbound
from handlers.knowledge import knowledge_for
from handlers.normalize import normalize
from handlers.runtime import ConfigVersion

_MENTION = re.compile(r"@[^\s\u2005@]{1,40}(?:[\s\u2005]|$)")
_QUESTION_MARK = re.compile(r"[?？]")
_THANKS = re.compile("谢谢|感谢|多谢|辛苦|点赞|给力|威武")


@dataclass(frozen=True)
class Detection:
    is_inquiry: bool
    # why: mentions_bot, mentions_officer, question; or why not: empty, courtesy, thanks, no_topic,
    # no_question, chatter
    reason: str


class Detector:
    """The detection settings compiled once per config version."""

    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        self.topics = tuple(dict.fromkeys(normalize(w) for w in settings.topics if normalize(w)))
        self.topic_patterns = tuple(re.compile(p) for p in settings.topic_patterns)
        self.question_words = tuple(dict.fromkeys(
            normalize(w) for w in settings.question_words if normalize(w)))
        self.request_patterns = tuple(re.compile(p) for p in settings.request_patterns)
        self.chatter_patterns = tuple(re.compile(p) for p in settings.chatter_patterns)
        self.courtesy_patterns = tuple(re.compile(p) for p in settings.courtesy_patterns)

    def has_topic(self, folded: str) -> bool:
        return any(w in folded for w in self.topics) or any(p.search(folded) for p in self.topic_patterns)

    def has_question(self, raw: str, folded: str) -> bool:
        return (bool(_QUESTION_MARK.search(raw)) or folded.endswith(("么", "呢", "嘛"))
                or any(w in folded for w in self.question_words)
                or any(p.search(folded) for p in self.request_patterns))

    def is_chatter(self, folded: str) -> bool:
        return any(p.search(folded) for p in self.chatter_patterns)

    def detect(self, text: str, *, mentions_bot: bool = False, mentions_officer: bool = False) -> Detection:
        raw = _MENTION.sub(" ", text).strip()
        folded = normalize(raw)
        if not folded:
            return Detection(False, "empty")
        addressed = mentions_bot or (mentions_officer and self.settings.officer_mentions)
        if addressed:
            if any(p.search(folded) for p in self.courtesy_patterns):
                return Detection(False, "courtesy")
            asks = self.has_question(raw, folded)
            if _THANKS.search(folded) and not asks:
                return Detection(False, "thanks")
            return Detection(True, "mentions_bot" if mentions_bot else "mentions_officer")
        if not self.has_topic(folded):
            return Detection(False, "no_topic")
        if not self.has_question(raw, folded):
            return Detection(False, "no_question")
        if self.is_chatter(folded):
            return Detection(False, "chatter")
        return Detection(True, "question")


_detectors: dict[int, tuple[DetectionSettings, Detector]] = {}


def detector_for(settings: DetectionSettings) -> Detector:
    cached = _detectors.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    if len(_detectors) > 16:  # old config versions
        _detectors.clear()
    detector = Detector(settings)
    _detectors[id(settings)] = (settings, detector)
    return detector


def detect(text: str, settings: InquirySettings, *, mentions_bot: bool = False,
           mentions_officer: bool = False) -> Detection:
    return detector_for(settings.detection).detect(text, mentions_bot=mentions_bot,
                                                   mentions_officer=mentions_officer)


def settings_of(live: ConfigVersion) -> InquirySettings:
    return tickets.settings_of(live.config)


def room_inquiry(live: ConfigVersion, inbound: Inbound, group: GroupConfig | None) -> Detection | None:
    """Whether a resident's group message no route matched asks the police something (no database: the
    pipeline decides with it, before storing, that most chat needs nothing more)."""
    settings = settings_of(live)
    if not settings.enabled or group is None or not inbound.room_id:
        return None
    if inbound.sender_id in live.officers_by_wechat:
        return None  # officers answer questions, they do not open tickets
    detection = detect(inbound.text, settings, mentions_bot=inbound.mentions_bot,
                       mentions_officer=any(m in live.officers_by_wechat for m in inbound.mentions))
    return detection if detection.is_inquiry else None


async def on_room_message(
    session: AsyncSession, live: ConfigVersion, inbound: Inbound, group: GroupConfig | None, now: datetime,
    row_id: int | None, detection: Detection | None = None,
) -> str | None:
    """A resident's group message no route matched: an inquiry (answered or acknowledged in the group, a
    ticket opened and its officer pinged, all in the caller's transaction) or ``None`` (stay quiet).
    ``detection``: :func:`room_inquiry`'s answer when the caller has it already."""
    detection = detection or room_inquiry(live, inbound, group)
    if detection is None or group is None:
        return None
    settings = settings_of(live)
    match = knowledge_for(settings.knowledge_base).match(inbound.text, settings.match_threshold)
    opened = await tickets.open_ticket(session, live, inbound, group, now, row_id,
                                       detected_by=detection.reason, match=match)
    if opened.joined:
        return f"inquiry_repeated:{opened.ticket.id}"
    if match is not None:
        return f"inquiry_answered:{opened.ticket.id}:{match.entry.id}"
    return f"inquiry_acknowledged:{opened.ticket.id}"


async def on_officer_room_message(
    session: AsyncSession, live: ConfigVersion, inbound: Inbound, group: GroupConfig | None, now: datetime,
) -> str | None:
    """An officer's group message that answers a resident with an open ticket (quoting them, or
    @-mentioning them) is that ticket's response; returns ``None`` when it answers no ticket."""
    if not settings_of(live).enabled or not inbound.room_id:
        return None
    if inbound.sender_id not in live.officers_by_wechat:
        return None
    responded = await tickets.record_group_response(session, live, inbound, group, now)
    if not responded:
        return None
    return "inquiry_responded:" + ",".join(str(t.id) for t in responded)
