"""The broadcast console of the admin web against the real bot and the sandbox: who may write, preview,
confirm and cancel; CSRF on every form; a confirmed warning reaching every chosen group once; cancelling a
draft and a running warning; and one pass in a real browser (Chromium through Playwright)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.web.auth import hash_password
from models import wal_checkpoint
from models.tables import Broadcast, BroadcastDelivery, OutboxMessage
from tests.conftest import BOT, FANGDIAN, JINXIU
from tests.test_web import Client, Page, WebEnv, edit_config, web, web_users  # noqa: F401  (``web``: fixture)

LIANYANG = "lianyang@chatroom"
ROOMS = [JINXIU, LIANYANG, FANGDIAN]
ZHOU = "wxid_officer_zhou"
WARNING = "近期有人冒充“市场监管局”发短信说营业执照要注销，这是诈骗"
MORE_PASSWORDS = {"zhou_web": "antifraud-pass-辛壬-04", "zhao_admin": "head-pass-癸子-05"}


@cache
def console_users() -> list[dict[str, str]]:
    """An anti-fraud officer's login and the station head's admin login, both allowed to broadcast."""
    return [
        {"username": "zhou_web", "password_hash": hash_password(MORE_PASSWORDS["zhou_web"]),
         "role": "officer", "officer": "zhou"},
        {"username": "zhao_admin", "password_hash": hash_password(MORE_PASSWORDS["zhao_admin"]),
         "role": "admin", "officer": "zhao"},
    ]


@pytest.fixture
async def console(web: WebEnv) -> AsyncIterator[WebEnv]:  # noqa: F811
    edit_config(web.env.config_path, lambda data: data["web"].update(users=web_users() + console_users()))
    assert web.app.reload() == []
    yield web


async def login(state: WebEnv, username: str) -> Client:
    client = state.client()
    page = await client.login(username, MORE_PASSWORDS.get(username))
    assert page.status == 303, page.text
    return client


async def draft(client: Client, text: str = WARNING, scope: str = "all",
                groups: tuple[str, ...] = ()) -> Page:
    form = await client.get("/broadcasts/new")
    assert form.status == 200, form.text
    data: list[tuple[str, str]] = [("csrf_token", form.csrf()), ("text", text), ("scope", scope)]
    data += [("group", g) for g in groups]
    async with client.http.post("/broadcasts", data=data, allow_redirects=False) as response:
        return Page(response.status, await response.text(), response.headers, response.cookies)


def number_of(page: Page) -> int:
    found = re.fullmatch(r"/broadcasts/(\d+)\?notice=draft", page.location)
    assert found, (page.status, page.location, page.text[:2000])
    return int(found.group(1))


async def rows(state: WebEnv) -> tuple[list[Broadcast], list[BroadcastDelivery]]:
    async with state.app.station.db.session() as s:  # type: ignore[union-attr]
        return (list((await s.scalars(select(Broadcast).order_by(Broadcast.id))).all()),
                list((await s.scalars(select(BroadcastDelivery).order_by(BroadcastDelivery.id))).all()))


def warnings_in(state: WebEnv, room: str, after: int) -> list[str]:
    return [m["text"] for m in state.env.sandbox.messages(room, after)
            if m["from"] == BOT and "反诈预警" in m["text"]]


# -- who may ------------------------------------------------------------------------------------------------
async def test_only_officers_who_may_broadcast_can_write(console: WebEnv) -> None:
    viewer = await console.logged_in("viewer1")
    listing = await viewer.get("/broadcasts")
    assert listing.status == 200 and "编写新预警" not in listing.text and 'href="/broadcasts"' in listing.text
    assert (await viewer.get("/broadcasts/new")).status == 403
    denied = await viewer.post("/broadcasts", {"text": WARNING, "scope": "all"}, csrf_from="/broadcasts")
    assert denied.status == 403 and "无权访问" in denied.text

    community = await console.logged_in("wang_web")  # officer role, but 王警官 is a community officer
    refused = await community.get("/broadcasts/new")
    assert refused.status == 403 and "只有反诈民警、所领导可以发送预警" in refused.text
    admin = await console.logged_in("admin1")  # admin role, no officer behind the login
    refused = await admin.get("/broadcasts/new")
    assert refused.status == 403 and "没有关联民警" in refused.text
    assert (await admin.post("/broadcasts", {"text": WARNING, "scope": "all"}, csrf_from="/")).status == 403

    zhou = await login(console, "zhou_web")
    assert "编写新预警" in (await zhou.get("/broadcasts")).text
    number = number_of(await draft(zhou))
    for client in (viewer, community, admin):  # they may look, not act
        page = await client.get(f"/broadcasts/{number}")
        assert page.status == 200 and "/confirm" not in page.text and "/cancel" not in page.text
        assert (await client.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")).status == 403
        assert (await client.post(f"/broadcasts/{number}/cancel", {}, csrf_from="/broadcasts")).status == 403
    broadcasts, deliveries = await rows(console)
    assert [(b.id, b.status, b.created_by) for b in broadcasts] == [(number, "draft", "zhou")]
    assert deliveries == []


async def test_a_form_is_answered_once_what_it_saved_is_on_disk(console: WebEnv,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With sqlite_sync full (the default) a draft's "saved" waits for the WAL's fsync, held here; saving a
    draft sends nothing, so the only one waiting for the disk is the form's answer."""
    zhou = await login(console, "zhou_web")
    form = await zhou.get("/broadcasts/new")
    checkpointer = console.app.station.db.checkpointer  # type: ignore[union-attr]
    assert checkpointer is not None
    disk = threading.Event()
    real_fsync = wal_checkpoint.os.fsync
    monkeypatch.setattr(wal_checkpoint.os, "fsync", lambda fd: (disk.wait(10), real_fsync(fd))[1])
    try:
        data = [("csrf_token", form.csrf()), ("text", WARNING), ("scope", "all")]
        saving = asyncio.create_task(zhou.http.post("/broadcasts", data=data, allow_redirects=False))
        await asyncio.wait_for(checkpointer.parked.wait(), 10)  # the answer waits for the disk
        assert not saving.done()
        disk.set()
        async with await asyncio.wait_for(saving, 10) as response:
            assert response.status == 303 and "notice=draft" in response.headers["Location"]
    finally:
        disk.set()


async def test_every_form_needs_its_csrf_token(console: WebEnv) -> None:
    zhou = await login(console, "zhou_web")
    other = await login(console, "zhao_admin")
    missing = await zhou.post("/broadcasts", {"text": WARNING, "scope": "all"}, csrf_from=None)
    assert missing.status == 403 and "CSRF" in missing.text
    borrowed = (await other.get("/broadcasts")).csrf()
    stolen = await zhou.post("/broadcasts", {"text": WARNING, "scope": "all", "csrf_token": borrowed},
                             csrf_from=None)
    assert stolen.status == 403
    assert (await rows(console))[0] == []
    number = number_of(await draft(zhou))
    for action in ("confirm", "cancel"):
        assert (await zhou.post(f"/broadcasts/{number}/{action}", {}, csrf_from=None)).status == 403
        wrong = await zhou.post(f"/broadcasts/{number}/{action}", {"csrf_token": borrowed}, csrf_from=None)
        assert wrong.status == 403
    broadcasts, deliveries = await rows(console)
    assert broadcasts[0].status == "draft" and deliveries == []


# -- the flow -----------------------------------------------------------------------------------------------
async def test_preview_confirm_and_every_group_gets_it_once(console: WebEnv) -> None:
    env = console.env
    start = env.sandbox.log.last_seq
    zhou = await login(console, "zhou_web")
    created = await draft(zhou)
    number = number_of(created)
    page = await zhou.get(created.location)
    assert "草稿已保存，尚未发送" in page.text
    preview = re.search(r'<pre class="quote preview" id="preview">(.*?)</pre>', page.text, re.S)
    assert preview and "预警草稿" in preview.group(1) and "3个群" in preview.group(1)
    assert "【花木派出所·反诈预警】" in page.text and f'action="/broadcasts/{number}/confirm"' in page.text
    assert all(warnings_in(console, room, start) == [] for room in ROOMS)  # nothing before confirming

    confirmed = await zhou.post(f"/broadcasts/{number}/confirm", {}, csrf_from=created.location)
    assert confirmed.status == 303 and confirmed.location == f"/broadcasts/{number}?notice=started"
    for room in ROOMS:
        await env.bot_says(room, start, "反诈预警")
    done = await env.bot_says(ZHOU, start, "发送完成")  # the officer hears back, as from the chat command
    assert "成功3个群" in done["text"]
    for room in ROOMS:
        assert warnings_in(console, room, start) == [f"【花木派出所·反诈预警】{WARNING}"]

    page = await zhou.get(f"/broadcasts/{number}")
    assert 'data-status="done"' in page.text and "已送达 3" in page.text
    assert re.findall(r'<tr data-delivery="(\w+)" data-status="(\w+)">', page.text) == [
        ("jinxiu", "sent"), ("lianyang", "sent"), ("fangdian", "sent")]
    assert 'http-equiv="refresh"' not in page.text  # finished: no more refreshing
    again = await zhou.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")
    assert again.location == f"/broadcasts/{number}?notice=already"
    assert len((await rows(console))[1]) == 3
    listing = await (await console.logged_in("viewer1")).get("/broadcasts")
    row = re.search(rf'<tr data-broadcast="{number}" data-status="done">(.*?)</tr>', listing.text, re.S)
    assert row and "已送达 3/3" in row.group(1) and "周警官" in row.group(1) and "全部3个群" in row.group(1)


async def test_some_groups_only_and_form_errors(console: WebEnv) -> None:
    env = console.env
    start = env.sandbox.log.last_seq
    zhou = await login(console, "zhou_web")
    for text, scope, groups, error in (
        ("  ", "all", (), "请填写预警内容"),
        (WARNING, "some", (), "请至少选择一个群"),
        (WARNING, "some", ("jinxiu", "nosuch"), "所选的群不存在"),
        ("诈" * 1001, "all", (), "最多 1000 个字"),
        (WARNING, "district", (), "请选择发送范围"),  # no other stations run with this one
    ):
        page = await draft(zhou, text, scope, groups)
        assert page.status == 400 and error in page.text, (scope, groups)
    assert (await rows(console))[0] == []

    number = number_of(await draft(zhou, "冒充客服退款是诈骗", "some", ("jinxiu", "fangdian")))
    page = await zhou.get(f"/broadcasts/{number}")
    assert "2个群" in page.text and "锦绣小区平安群、芳甸路居民群" in page.text
    await zhou.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")
    await env.bot_says(ZHOU, start, "发送完成")
    deliveries = (await rows(console))[1]
    assert [(d.group_id, d.status) for d in deliveries] == [("jinxiu", "sent"), ("fangdian", "sent")]
    assert warnings_in(console, JINXIU, start) and warnings_in(console, FANGDIAN, start)
    assert warnings_in(console, LIANYANG, start) == []


async def test_cancel_a_draft_and_others_drafts(console: WebEnv) -> None:
    zhou = await login(console, "zhou_web")
    head = await login(console, "zhao_admin")
    number = number_of(await draft(zhou))
    page = await head.get(f"/broadcasts/{number}")
    assert "只有起草人本人可以确认发送" in page.text and "/confirm" not in page.text
    refused = await head.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")
    assert refused.location == f"/broadcasts/{number}?notice=not_yours"
    assert (await rows(console))[0][0].status == "draft"

    cancelled = await head.post(f"/broadcasts/{number}/cancel", {}, csrf_from="/broadcasts")
    assert cancelled.location == f"/broadcasts/{number}?notice=cancelled&stopped=0"
    page = await zhou.get(cancelled.location)
    assert "已取消。" in page.text and 'data-status="cancelled"' in page.text and "/confirm" not in page.text
    late = await zhou.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")
    assert late.location == f"/broadcasts/{number}?notice=already"
    finished = await zhou.post(f"/broadcasts/{number}/cancel", {}, csrf_from="/broadcasts")
    assert finished.location.startswith(f"/broadcasts/{number}?notice=finished")
    assert (await rows(console))[1] == []

    expiring = number_of(await draft(zhou))
    console.env.clock.current += timedelta(hours=1, seconds=1)  # broadcast.draft_expires: 1h
    page = await zhou.get(f"/broadcasts/{expiring}")
    assert "草稿已过期" in page.text and "/confirm" not in page.text
    expired = await zhou.post(f"/broadcasts/{expiring}/confirm", {}, csrf_from="/broadcasts")
    assert expired.location == f"/broadcasts/{expiring}?notice=expired"
    assert (await rows(console))[1] == []
    assert (await zhou.get("/broadcasts/99999")).status == 404


async def test_a_web_draft_confirmed_in_private_chat(console: WebEnv) -> None:
    """Same functions as the chat command: the officer's latest draft, whichever way it was written."""
    env = console.env
    start = env.sandbox.log.last_seq
    zhou = await login(console, "zhou_web")
    number = number_of(await draft(zhou, "冒充客服退款是诈骗", "some", ("lianyang",)))
    await env.sandbox.say(ZHOU, "确认")
    await env.bot_says(ZHOU, start, f"预警 #{number} 开始发送，共1个群")
    await env.bot_says(LIANYANG, start, "冒充客服退款是诈骗")
    await env.bot_says(ZHOU, start, "发送完成")
    assert 'data-status="done"' in (await zhou.get(f"/broadcasts/{number}")).text


async def test_cancel_while_sending_stops_the_groups_not_yet_sent(console: WebEnv) -> None:
    env = console.env
    station = console.app.station
    assert station is not None
    # one group message an hour: with the fake clock standing still, the first copy goes and the rest wait
    edit_config(env.config_path, lambda data: data["outbox"].update(group_interval="1h", group_jitter="0s"))
    assert console.app.reload() == []
    start = env.sandbox.log.last_seq
    zhou = await login(console, "zhou_web")
    number = number_of(await draft(zhou))
    await zhou.post(f"/broadcasts/{number}/confirm", {}, csrf_from="/broadcasts")
    await env.bot_says(JINXIU, start, "反诈预警")
    page = await zhou.get(f"/broadcasts/{number}")
    assert 'data-status="sending"' in page.text and 'http-equiv="refresh"' in page.text
    assert "共 3 个群" in page.text  # (the first copy is out; its row may still be recording that)

    stopped = await zhou.post(f"/broadcasts/{number}/cancel", {}, csrf_from=f"/broadcasts/{number}")
    assert stopped.location == f"/broadcasts/{number}?notice=cancelled&stopped=2"
    assert "已取消，2个群未发送。" in (await zhou.get(stopped.location)).text

    # the hour passes; the next group message (a reply to a report) goes out, and no cancelled copy does
    # (one sender sends in order: once the reply is out, the first copy has long been recorded too)
    env.clock.current += timedelta(hours=2)
    before = {i.id for i in await env.incidents()}
    await env.sandbox.say("wxid_res_07", "楼道闻到一股烟焦味!", room=LIANYANG)
    await env.bot_says(LIANYANG, start, "民警")
    assert [i for i in await env.incidents() if i.id not in before]
    async with station.db.session() as s:
        statuses = (await s.scalars(select(OutboxMessage.status).where(OutboxMessage.broadcast_id == number)
                                    .order_by(OutboxMessage.id))).all()
    assert statuses == ["sent", "failed", "failed"]
    broadcasts, deliveries = await rows(console)
    assert broadcasts[0].status == "cancelled"
    assert [(d.group_id, d.status) for d in deliveries] == [
        ("jinxiu", "sent"), ("lianyang", "cancelled"), ("fangdian", "cancelled")]
    assert warnings_in(console, LIANYANG, start) == [] and warnings_in(console, FANGDIAN, start) == []


# -- in a browser ------------------------------------------------------------------------------------------
async def test_broadcast_console_in_a_browser(console: WebEnv, tmp_path: Path) -> None:
    from tests.test_web_browser import CHROMIUM, CHROMIUM_ARGS, _requirements

    _requirements()
    from playwright.async_api import async_playwright, expect

    env = console.env
    start = env.sandbox.log.last_seq
    shots = Path(os.environ.get("GONGHAO_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900}, locale="zh-CN")
            await page.goto(console.admin_web.url + "broadcasts")
            await page.get_by_label("用户名").fill("zhou_web")
            await page.get_by_label("密码").fill(MORE_PASSWORDS["zhou_web"])
            await page.get_by_role("button", name="登录").click()
            await page.get_by_role("link", name="编写新预警").first.click()
            await page.get_by_label("预警内容").fill(WARNING)
            await page.get_by_label("只发以下勾选的群").check()
            await page.get_by_label("锦绣小区平安群").check()
            await page.get_by_label("芳甸路居民群").check()
            await page.screenshot(path=str(shots / "gonghao-broadcast-new.png"), full_page=True)
            await page.get_by_role("button", name="生成预览").click()
            await expect(page.get_by_role("status")).to_contain_text("草稿已保存")
            await expect(page.locator("#preview")).to_contain_text("2个群")
            await page.screenshot(path=str(shots / "gonghao-broadcast-preview.png"), full_page=True)
            await page.get_by_role("button", name=re.compile("确认发送")).click()
            await expect(page.get_by_role("status")).to_contain_text("已确认")
            await env.bot_says(ZHOU, start, "发送完成")
            await page.reload()
            await expect(page.locator("#broadcast-status")).to_have_attribute("data-status", "done")
            await expect(page.locator("tr[data-delivery]")).to_have_count(2)
            await page.screenshot(path=str(shots / "gonghao-broadcast-done.png"), full_page=True)
            await page.goto(console.admin_web.url + "broadcasts")
            await expect(page.locator("tr[data-broadcast]")).to_have_count(1)
            await page.screenshot(path=str(shots / "gonghao-broadcasts.png"), full_page=True)
        finally:
            await browser.close()
    assert warnings_in(console, JINXIU, start) and warnings_in(console, FANGDIAN, start)
    assert warnings_in(console, LIANYANG, start) == []


@pytest.mark.parametrize("env_database", ["sqlite", "postgresql"])
async def test_a_double_tapped_confirm_sends_once_and_says_so(console: WebEnv) -> None:
    """Two confirms of one draft sent at once (a double tap, two tabs): one starts it, the other is told it is
    no longer a draft; one delivery per group. (Here the second request reads the broadcast after the first
    has committed; the narrower race is the next test.)"""
    zhou = await login(console, "zhou_web")
    number = number_of(await draft(zhou))
    token = (await zhou.get(f"/broadcasts/{number}")).csrf()
    taps = await asyncio.gather(*(zhou.request("POST", f"/broadcasts/{number}/confirm", {"csrf_token": token})
                                  for _ in range(2)))
    assert sorted(tap.location for tap in taps) == [f"/broadcasts/{number}?notice=already",
                                                     f"/broadcasts/{number}?notice=started"]
    assert len((await rows(console))[1]) == 3


@pytest.mark.parametrize("env_database", ["postgresql"])  # SQLite: one connection, the two cannot overlap
async def test_two_confirms_that_both_read_the_draft_start_it_once(console: WebEnv,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrow race: both requests read the broadcast as a draft before either claims it (held at the
    claim until both have read). The claim is conditional: one starts it, the other says "already"."""
    from handlers import broadcasts

    zhou = await login(console, "zhou_web")
    number = number_of(await draft(zhou))
    token = (await zhou.get(f"/broadcasts/{number}")).csrf()
    claim = broadcasts.confirm
    arrived = 0
    both_read = asyncio.Event()

    async def claim_together(*args: Any, **kwargs: Any) -> int | None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_read.set()
        await both_read.wait()
        return await claim(*args, **kwargs)

    monkeypatch.setattr(broadcasts, "confirm", claim_together)
    taps = await asyncio.gather(*(zhou.request("POST", f"/broadcasts/{number}/confirm", {"csrf_token": token})
                                  for _ in range(2)))
    assert arrived == 2
    assert sorted(tap.location for tap in taps) == [f"/broadcasts/{number}?notice=already",
                                                     f"/broadcasts/{number}?notice=started"]
    assert len((await rows(console))[1]) == 3
