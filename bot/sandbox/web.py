"""The sandbox web chat: pages where a person plays residents and officers, plus a JSON API.

Pages (Chinese UI, plain HTML + vanilla JS from ``static/``, no CDN):

* ``GET /``                   rooms and people of the station
* ``GET /room/{room_id}``     a room's conversation, speaking as any member
* ``GET /chat/{contact_id}``  the private chat between that contact and the bot

JSON API:

* ``POST /sandbox/api/say``        ``{"from", "room", "to", "text", "mentions"}`` → ``{"message_id"}``
* ``GET  /sandbox/api/messages``   ``?conversation=ID&after=SEQ[&wait=SECONDS]`` → ``{"messages": [...]}``
* ``GET  /sandbox/api/world``      bot, contacts, rooms with members, ``connected``
* ``POST /sandbox/api/join``       ``{"room", "contact", "inviter"?}``
* ``POST /sandbox/api/leave``      ``{"room", "contact", "remover"?}``
* ``POST /sandbox/api/topic``      ``{"room", "topic", "changer"}``

Errors are ``{"error": English, "error_zh": Chinese}`` with status 400 (404 for unknown pages).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.sandbox.world import SandboxError

if TYPE_CHECKING:
    from bot.sandbox import Sandbox

__all__ = ["MAX_WAIT_SECONDS", "STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).with_name("static")
MAX_WAIT_SECONDS = 60.0
SANDBOX_KEY: web.AppKey[Sandbox] = web.AppKey("sandbox")


class _BadRequest(Exception):
    def __init__(self, message: str, zh: str) -> None:
        super().__init__(message)
        self.zh = zh


def _error(message: str, zh: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "error_zh": zh}, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps)


def _sandbox(request: web.Request) -> Sandbox:
    return request.app[SANDBOX_KEY]


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest("the body must be a JSON object", "请求体必须是 JSON 对象") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object", "请求体必须是 JSON 对象")
    return data


def _str(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise _BadRequest(f"{key!r} is required", f"缺少参数 {key}")
        return None
    if not isinstance(value, str):
        raise _BadRequest(f"{key!r} must be a string", f"参数 {key} 必须是字符串")
    return value


def _api(handler: Any) -> Any:
    """Turn validation failures into JSON 400 answers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except _BadRequest as exc:
            return _error(str(exc), exc.zh)
        except SandboxError as exc:
            return _error(str(exc), exc.zh)

    return wrapped


# -- API -------------------------------------------------------------------------------
@_api
async def api_say(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    data = await _body(request)
    sender = _str(data, "from")
    room = _str(data, "room", required=False)
    to = _str(data, "to", required=False)
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _BadRequest("'text' must be a non-empty string", "消息内容不能为空")
    mentions = data.get("mentions") or []
    if not isinstance(mentions, list) or not all(isinstance(m, str) for m in mentions):
        raise _BadRequest("'mentions' must be a list of contact ids", "mentions 必须是联系人编号列表")
    assert sender is not None
    message_id = await sandbox.say(sender, text, room=room, to=to, mentions=mentions)
    return _json({"message_id": message_id})


@_api
async def api_messages(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    conversation = request.query.get("conversation", "")
    if not conversation:
        raise _BadRequest("'conversation' is required", "缺少参数 conversation")
    world = sandbox.world
    if world.find_room(conversation) is None and world.find_contact(conversation) is None:
        raise SandboxError(f"unknown conversation {conversation!r}", f"不存在的会话：{conversation}")
    try:
        after = int(request.query.get("after", "0"))
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise _BadRequest(
            "'after' must be an integer and 'wait' a number", "after 须为整数，wait 须为数字"
        ) from None
    if after < 0 or not math.isfinite(wait) or wait < 0:
        raise _BadRequest("'after' and 'wait' must not be negative", "after 和 wait 不能为负数")
    found = await sandbox.log.wait_newer(conversation, after, min(wait, MAX_WAIT_SECONDS))
    return _json({"messages": found, "connected": sandbox.connected})


async def api_world(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return _json({**sandbox.world.to_dict(), "connected": sandbox.connected})


@_api
async def api_join(request: web.Request) -> web.Response:
    data = await _body(request)
    room, contact = _str(data, "room"), _str(data, "contact")
    assert room is not None and contact is not None
    await _sandbox(request).join(room, contact, _str(data, "inviter", required=False))
    return _json({"ok": True})


@_api
async def api_leave(request: web.Request) -> web.Response:
    data = await _body(request)
    room, contact = _str(data, "room"), _str(data, "contact")
    assert room is not None and contact is not None
    await _sandbox(request).leave(room, contact, _str(data, "remover", required=False))
    return _json({"ok": True})


@_api
async def api_topic(request: web.Request) -> web.Response:
    data = await _body(request)
    room, topic, changer = _str(data, "room"), _str(data, "topic"), _str(data, "changer")
    assert room is not None and topic is not None and changer is not None
    await _sandbox(request).set_topic(room, topic, changer)
    return _json({"ok": True})


# -- pages ------------------------------------------------------------------------------
def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})


def _not_found(what: str) -> web.Response:
    body = (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>找不到</title>'
        '<link rel="stylesheet" href="/static/style.css"></head><body><main class="notfound">'
        f'<h1>找不到{html.escape(what)}</h1><p><a href="/">返回首页</a></p></main></body></html>'
    )
    return web.Response(text=body, status=404, content_type="text/html")


async def page_index(_: web.Request) -> web.StreamResponse:
    return _page("index.html")


async def page_room(request: web.Request) -> web.StreamResponse:
    room_id = request.match_info["room_id"]
    if _sandbox(request).world.find_room(room_id) is None:
        return _not_found(f"群聊「{room_id}」")
    return _page("conversation.html")


async def page_chat(request: web.Request) -> web.StreamResponse:
    contact_id = request.match_info["contact_id"]
    world = _sandbox(request).world
    if world.find_contact(contact_id) is None or contact_id == world.bot.id:
        return _not_found(f"联系人「{contact_id}」")
    return _page("conversation.html")


def create_app(sandbox: Sandbox) -> web.Application:
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    app.router.add_get("/", page_index)
    app.router.add_get("/room/{room_id}", page_room)
    app.router.add_get("/chat/{contact_id}", page_chat)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_post("/sandbox/api/say", api_say)
    app.router.add_get("/sandbox/api/messages", api_messages)
    app.router.add_get("/sandbox/api/world", api_world)
    app.router.add_post("/sandbox/api/join", api_join)
    app.router.add_post("/sandbox/api/leave", api_leave)
    app.router.add_post("/sandbox/api/topic", api_topic)
    return app
