"""A message as the handlers see it: plain and typed, independent of python-wechaty."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Inbound:
    account: str  # the station whose bot account received it
    message_id: str
    sender_id: str
    sender_name: str
    room_id: str | None
    room_topic: str | None
    text: str
    kind: str  # "text", "image", "audio", … (only text is routed)
    mentions: tuple[str, ...]
    mentions_bot: bool
    sent_at: datetime  # aware
    is_self: bool = False
    to_id: str | None = None  # private messages: the recipient

    @property
    def is_private(self) -> bool:
        return self.room_id is None
