"""The sandbox world: who exists, which rooms there are, and what was said.

The world is loaded from YAML (see ``world.yaml`` next to this file)::

    bot: {id: wxid_gonghao_bot, name: 花木派出所公号}
    contacts:                       # everyone except the bot
      - {id: wxid_officer_wang, name: 王警官, role: officer, title: 锦绣、联洋社区民警}
      - {id: wxid_res_01, name: 张阿姨}
    rooms:
      - id: "jinxiu@chatroom"       # room ids contain '@'
        topic: 锦绣小区平安群
        owner: wxid_officer_wang
        members: [wxid_officer_wang, wxid_res_01]   # the bot is always added

``role`` is ``officer`` or ``resident``; when omitted, ids starting with
``wxid_officer_`` are officers and everyone else is a resident. ``alias`` and
``title`` are optional free text.

:class:`ChatLog` is the in-memory message history shared by the gRPC puppet
service and the web chat; waiting on it is event-driven.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_WORLD_PATH",
    "ChatLog",
    "Contact",
    "Room",
    "SandboxError",
    "World",
    "WorldError",
    "load_world",
    "parse_world",
]

DEFAULT_WORLD_PATH = Path(__file__).with_name("world.yaml")
ROLES = ("officer", "resident", "bot")
MESSAGE_TYPE_TEXT = 7  # the Node puppet numbering used on the wire

Entry = dict[str, Any]


class WorldError(ValueError):
    """The world YAML is malformed or inconsistent."""


class SandboxError(ValueError):
    """A sandbox operation was refused (unknown contact/room, non-member, empty text, ...).

    ``str(err)`` is English (for developers and logs); ``err.zh`` is the Chinese
    text shown to the person using the web chat.
    """

    def __init__(self, message: str, zh: str | None = None) -> None:
        super().__init__(message)
        self.zh = zh or message


@dataclass(frozen=True)
class Contact:
    id: str
    name: str
    role: str = "resident"
    alias: str = ""
    title: str = ""

    @property
    def is_officer(self) -> bool:
        return self.role == "officer"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role, "alias": self.alias, "title": self.title}


@dataclass
class Room:
    id: str
    topic: str
    owner: str
    members: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "topic": self.topic, "owner": self.owner, "members": list(self.members)}


@dataclass
class World:
    bot: Contact
    contacts: list[Contact]
    rooms: list[Room]

    def __post_init__(self) -> None:
        self._contacts: dict[str, Contact] = {c.id: c for c in [self.bot, *self.contacts]}
        self._rooms: dict[str, Room] = {r.id: r for r in self.rooms}

    # -- lookups -------------------------------------------------------------
    def find_contact(self, contact_id: str) -> Contact | None:
        """The contact (the bot included) with this id, or None."""
        return self._contacts.get(contact_id)

    def find_room(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def contact(self, contact_id: str) -> Contact:
        found = self._contacts.get(contact_id)
        if found is None:
            raise SandboxError(f"unknown contact {contact_id!r}", f"不存在的联系人：{contact_id}")
        return found

    def room(self, room_id: str) -> Room:
        found = self._rooms.get(room_id)
        if found is None:
            raise SandboxError(f"unknown room {room_id!r}", f"不存在的群聊：{room_id}")
        return found

    def name_of(self, contact_id: str) -> str:
        found = self._contacts.get(contact_id)
        return found.name if found else contact_id

    @property
    def officers(self) -> list[Contact]:
        return [c for c in self.contacts if c.is_officer]

    @property
    def residents(self) -> list[Contact]:
        return [c for c in self.contacts if c.role == "resident"]

    def rooms_of(self, contact_id: str) -> list[Room]:
        return [r for r in self.rooms if contact_id in r.members]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bot": self.bot.to_dict(),
            "contacts": [c.to_dict() for c in self.contacts],
            "rooms": [r.to_dict() for r in self.rooms],
        }


# -- loading -----------------------------------------------------------------
def _fail(where: str, problem: str) -> WorldError:
    return WorldError(f"{where}: {problem}")


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise _fail(where, f"missing required key(s) {missing}")


def _text(where: str, data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise _fail(where, f"{key!r} is required")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _fail(where, f"{key!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text and default is None:
        raise _fail(where, f"{key!r} must not be empty")
    return text


def _parse_contact(where: str, raw: Any, *, is_bot: bool = False) -> Contact:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"expected a mapping like {{id: ..., name: ...}}, got {type(raw).__name__}")
    _check_keys(where, raw, {"id", "name", "role", "alias", "title"}, {"id", "name"})
    cid = _text(where, raw, "id")
    if "@" in cid:
        raise _fail(where, f"contact id {cid!r} must not contain '@' (that marks room ids)")
    default_role = "bot" if is_bot else ("officer" if cid.startswith("wxid_officer_") else "resident")
    role = _text(where, raw, "role", default_role) or default_role
    if is_bot and role != "bot":
        raise _fail(where, "the bot's role cannot be changed")
    if not is_bot and role not in ("officer", "resident"):
        raise _fail(where, f"role must be 'officer' or 'resident', got {role!r}")
    return Contact(
        id=cid,
        name=_text(where, raw, "name"),
        role=role,
        alias=_text(where, raw, "alias", ""),
        title=_text(where, raw, "title", ""),
    )


def parse_world(data: Any, *, source: str = "world") -> World:
    """Build and validate a :class:`World` from already-parsed YAML data."""
    if not isinstance(data, Mapping):
        raise _fail(source, "the top level must be a mapping with keys bot, contacts, rooms")
    _check_keys(source, data, {"bot", "contacts", "rooms"}, {"bot", "contacts", "rooms"})
    bot = _parse_contact(f"{source}: bot", data["bot"], is_bot=True)

    raw_contacts = data["contacts"]
    if not isinstance(raw_contacts, list) or not raw_contacts:
        raise _fail(source, "'contacts' must be a non-empty list")
    contacts: list[Contact] = []
    seen: set[str] = {bot.id}
    for i, raw in enumerate(raw_contacts):
        contact = _parse_contact(f"{source}: contacts[{i}]", raw)
        if contact.id in seen:
            raise _fail(f"{source}: contacts[{i}]", f"duplicate contact id {contact.id!r}")
        seen.add(contact.id)
        contacts.append(contact)

    raw_rooms = data["rooms"]
    if not isinstance(raw_rooms, list):
        raise _fail(source, "'rooms' must be a list")
    rooms: list[Room] = []
    room_ids: set[str] = set()
    for i, raw in enumerate(raw_rooms):
        where = f"{source}: rooms[{i}]"
        if not isinstance(raw, Mapping):
            raise _fail(where, f"expected a mapping, got {type(raw).__name__}")
        _check_keys(where, raw, {"id", "topic", "owner", "members"}, {"id", "topic", "owner", "members"})
        rid = _text(where, raw, "id")
        if "@" not in rid:
            raise _fail(where, f"room id {rid!r} must contain '@' (e.g. 'name@chatroom')")
        if rid in room_ids:
            raise _fail(where, f"duplicate room id {rid!r}")
        room_ids.add(rid)
        members_raw = raw["members"]
        if not isinstance(members_raw, list) or not all(isinstance(m, str) for m in members_raw):
            raise _fail(where, "'members' must be a list of contact ids")
        members: list[str] = []
        for member in members_raw:
            if member not in seen:
                raise _fail(where, f"member {member!r} is not a known contact")
            if member not in members:
                members.append(member)
        if bot.id not in members:
            members.append(bot.id)
        owner = _text(where, raw, "owner")
        if owner not in seen:
            raise _fail(where, f"owner {owner!r} is not a known contact")
        if owner not in members:
            raise _fail(where, f"owner {owner!r} must be listed in members")
        rooms.append(Room(id=rid, topic=_text(where, raw, "topic"), owner=owner, members=members))
    return World(bot=bot, contacts=contacts, rooms=rooms)


def load_world(path: str | Path | None = None) -> World:
    """Load a world YAML file; ``None`` loads the default world shipped with the sandbox."""
    file = Path(path) if path is not None else DEFAULT_WORLD_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorldError(f"cannot read world file {file}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorldError(f"{file}: invalid YAML: {exc}") from exc
    return parse_world(data, source=str(file))


# -- the message log -----------------------------------------------------------
def _copy(entry: Entry) -> Entry:
    """A reader's copy of a log entry. Entries are flat but for the mentions list; ``copy.deepcopy`` was 6% of
    the sandbox's CPU in the district benchmark (every MessagePayload reads one)."""
    return {**entry, "mentions": list(entry["mentions"])}


class ChatLog:
    """Every message said in the sandbox, in order, with event-driven waiting.

    Entries are plain dicts (see :meth:`append`); readers always get copies.
    """

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._by_id: dict[str, Entry] = {}
        self._seq = 0
        self._closed = False
        self._changed = asyncio.Condition()

    @property
    def last_seq(self) -> int:
        return self._seq

    def get(self, message_id: str) -> Entry | None:
        entry = self._by_id.get(message_id)
        return _copy(entry) if entry is not None else None

    async def append(
        self,
        *,
        message_id: str,
        conversation: str,
        room: str | None,
        sender: Contact,
        to: str | None,
        text: str,
        mentions: list[str],
        timestamp: int,
    ) -> Entry:
        if message_id in self._by_id:
            raise SandboxError(f"message id {message_id!r} already exists", f"消息编号重复：{message_id}")
        self._seq += 1
        entry: Entry = {
            "seq": self._seq,
            "id": message_id,
            "conversation": conversation,
            "room": room,
            "from": sender.id,
            "from_name": sender.name,
            "to": to,
            "text": text,
            "type": MESSAGE_TYPE_TEXT,
            "mentions": list(mentions),
            "timestamp": timestamp,
        }
        self._entries.append(entry)
        self._by_id[message_id] = entry
        async with self._changed:
            self._changed.notify_all()
        return _copy(entry)

    def messages(self, conversation: str, after: int = 0) -> list[Entry]:
        return [
            _copy(e) for e in self._entries if e["conversation"] == conversation and e["seq"] > after
        ]

    async def close(self) -> None:
        """Wake every waiter; long-polls return at once from now on."""
        self._closed = True
        async with self._changed:
            self._changed.notify_all()

    async def wait_newer(self, conversation: str, after: int, timeout: float) -> list[Entry]:
        """Messages newer than ``after``, waiting up to ``timeout`` seconds for the first one."""
        found = self.messages(conversation, after)
        if found or timeout <= 0 or self._closed:
            return found
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(
                    lambda: (
                        self._closed
                        or any(
                            e["conversation"] == conversation and e["seq"] > after
                            for e in reversed(self._entries)
                        )
                    )
                )
        except TimeoutError:
            pass
        return self.messages(conversation, after)

    async def wait_for(
        self,
        conversation: str,
        predicate: Callable[[Entry], bool],
        *,
        after: int = 0,
        timeout: float = 10,
        describe: Callable[[Entry], str] | None = None,
    ) -> Entry:
        """The first message in ``conversation`` newer than ``after`` that satisfies ``predicate``."""
        checked = after

        def scan() -> Entry | None:
            nonlocal checked
            for entry in self._entries:
                if entry["seq"] <= checked:
                    continue
                checked = entry["seq"]
                if entry["conversation"] == conversation and predicate(_copy(entry)):
                    return entry
            return None

        hit: Entry | None = scan()
        if hit is None and not self._closed:
            try:
                async with asyncio.timeout(timeout), self._changed:
                    hit = scan()  # re-check: a message may have landed while acquiring the lock
                    while hit is None and not self._closed:
                        await self._changed.wait()
                        hit = scan()
            except TimeoutError:
                pass
        if hit is not None:
            return _copy(hit)
        said = self.messages(conversation, after)
        fmt = describe or (lambda e: f"#{e['seq']} {e['from_name']}({e['from']}): {e['text']!r}")
        listing = "\n".join(f"  {fmt(e)}" for e in said[-30:]) or "  (nothing)"
        state = "the sandbox was stopped" if self._closed else f"no match within {timeout}s"
        raise TimeoutError(
            f"wait_for({conversation!r}, after={after}): {state}; "
            f"{len(said)} message(s) were said there after seq {after}:\n{listing}"
        )
