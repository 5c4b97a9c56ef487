"""The admin web against the real bot: the sandbox over gRPC, a real SQLite file, a real HTTP server on a free
port, and an HTTP client that keeps cookies like a browser. Waits on events, never on sleeps."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from bot import loop_watch
from bot.app import App, PuppetTarget
from bot.connection import ConnectionFailed
from bot.loop_watch import LoopWatch
from bot.web.auth import (
    LOGIN_COOKIE,
    MIN_ITERATIONS,
    SESSION_COOKIE,
    hash_password,
    verify_password,
)
from bot.web.server import AdminWeb, metrics_of, safe_next, start_admin_web
from bot.web.svg import bar_chart, nice_ceiling
from bot.web.views_base import METRICS_KEY
from handlers.metrics import Metrics, outcome_kind
from models.outbox import PRIORITY_URGENT, enqueue_row
from models.tables import Incident, OutboxMessage
from tests.conftest import FANGDIAN, JINXIU, ROOT, WANG, Env, FakeClock, write_config

PASSWORDS = {"viewer1": "viewer-pass-甲乙丙-01", "wang_web": "officer-pass-丁戊-02",
             "admin1": "admin-pass-己庚-03"}
FIRE = "楼道闻到一股烟焦味!"


@cache
def web_users() -> list[dict[str, str]]:
    """Config entries for a viewer, an officer login tied to officer wang, and an admin (hashed once)."""
    return [
        {"username": "viewer1", "password_hash": hash_password(PASSWORDS["viewer1"]), "role": "viewer"},
        {"username": "wang_web", "password_hash": hash_password(PASSWORDS["wang_web"]), "role": "officer",
         "officer": "wang"},
        {"username": "admin1", "password_hash": hash_password(PASSWORDS["admin1"]), "role": "admin"},
    ]


def edit_config(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    cookies: Any

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.text)
        assert found, f"no CSRF field on the page:\n{self.text[:2000]}"
        return found.group(1)


class Client:
    """One browser-like visitor: its own cookie jar, no automatic redirects (tests look at them)."""

    def __init__(self, base_url: str) -> None:
        self.http = aiohttp.ClientSession(base_url=base_url, cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def request(self, method: str, path: str, data: dict[str, str] | None = None) -> Page:
        async with self.http.request(method, path, data=data, allow_redirects=False) as response:
            return Page(response.status, await response.text(), response.headers, response.cookies)

    async def get(self, path: str) -> Page:
        return await self.request("GET", path)

    async def post(self, path: str, data: dict[str, str], csrf_from: str | None = "/") -> Page:
        """POST a form; with ``csrf_from`` the CSRF token is read from that page first, as a browser would."""
        if csrf_from is not None:
            data = {"csrf_token": (await self.get(csrf_from)).csrf(), **data}
        return await self.request("POST", path, data)

    async def login(self, username: str, password: str | None = None, next_path: str = "/") -> Page:
        form = await self.get(f"/login?next={quote(next_path)}")
        return await self.request("POST", "/login", {
            "csrf_token": form.csrf(), "username": username,
            "password": PASSWORDS[username] if password is None else password, "next": next_path,
        })

    def session_token(self) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == SESSION_COOKIE:
                return cookie.value
        return None

    async def close(self) -> None:
        await self.http.close()


class Ticker:
    """A settable monotonic clock for the session store and the login limiter."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class WebEnv:
    env: Env
    admin_web: AdminWeb
    clients: list[Client] = field(default_factory=list)

    @property
    def app(self) -> App:
        return self.env.app

    def client(self) -> Client:
        client = Client(self.admin_web.url)
        self.clients.append(client)
        return client

    async def logged_in(self, username: str) -> Client:
        client = self.client()
        page = await client.login(username)
        assert page.status == 303, page.text
        return client

    async def report(self, text: str = FIRE, room: str = JINXIU, resident: str = "wxid_res_01") -> Incident:
        """A resident reports in a group; returns the incident once the bot answered there."""
        start = self.env.sandbox.log.last_seq
        before = {i.id for i in await self.env.incidents()}
        await self.env.sandbox.say(resident, text, room=room)
        await self.env.bot_says(room, start, "民警")
        [incident] = [i for i in await self.env.incidents() if i.id not in before]
        return incident

    async def incident(self, number: int) -> Incident:
        return next(i for i in await self.env.incidents() if i.id == number)


@pytest.fixture
async def web(env: Env) -> AsyncIterator[WebEnv]:
    """The ``env`` bot with three web users added to its config (through a reload, as an admin would) and the
    admin web serving on a free port."""
    edit_config(env.config_path, lambda data: data.update(web={"users": web_users()}))
    assert env.app.reload() == []
    admin_web = await start_admin_web(env.app, "127.0.0.1", 0)
    admin_web.sessions.clock = Ticker()
    admin_web.limiter.clock = admin_web.sessions.clock
    state = WebEnv(env, admin_web)
    try:
        yield state
    finally:
        for client in state.clients:
            await client.close()
        await admin_web.stop()


PAGES = ["/", "/incidents", "/incidents?status=open", "/incidents/1", "/groups?period=week", "/rules",
         "/config"]
FORMS = ["/incidents/1/resolve", "/config/reload", "/rules/test", "/logout"]


# -- login, sessions, roles, CSRF --------------------------------------------------------------------
async def test_every_page_requires_login(web: WebEnv) -> None:
    client = web.client()
    for path in PAGES:
        page = await client.get(path)
        assert page.status == 302, path
        assert page.location == "/login?next=" + quote(path, safe="/"), path
    for path in FORMS:
        page = await client.request("POST", path, {"result": "x"})
        assert page.status == 303 and page.location == "/login?next=/", path
    async with client.http.post("/incidents/1/resolve", data={"result": "x"}, allow_redirects=False,
                                headers={"Referer": web.admin_web.url + "incidents/1"}) as response:
        assert response.headers["Location"] == "/login?next=/incidents/1"  # back to the form's page
    login = await client.get(page.location)
    assert login.status == 200 and "登录" in login.text
    assert (await client.get("/static/style.css")).status == 200
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_login_logout_and_no_secrets_in_logs(web: WebEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = web.client()
    wrong = await client.login("viewer1", "not-the-password")
    assert wrong.status == 401 and "用户名或密码错误" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    unknown = await client.login("admin1", PASSWORDS["viewer1"])  # another user's password
    assert unknown.status == 401
    page = await client.request("POST", "/login", {"username": "viewer1", "password": PASSWORDS["viewer1"]})
    assert page.status == 403, "a login form without its token is refused"

    ok = await client.login("viewer1", next_path="/rules")
    assert ok.status == 303 and ok.location == "/rules"
    cookie = next(v for v in ok.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    rules = await client.get("/rules")
    assert rules.status == 200 and "viewer1" in rules.text and "查看" in rules.text
    for header in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"):
        assert header in rules.headers
    token = client.session_token()
    assert token

    assert (await client.get("/login?next=//evil.example/x")).location == "/"  # logged in already
    assert (await web.client().login("viewer1", next_path="//evil.example/x")).location == "/"
    assert (await web.client().login("viewer1", next_path="http://evil.example/")).location == "/"

    out = await client.post("/logout", {})
    assert out.status == 303 and out.location == "/login"
    replay = web.client()
    replay.http.cookie_jar.update_cookies({SESSION_COOKIE: token})
    assert (await replay.get("/")).status == 302, "a logged-out session token opens nothing"

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "logged in" in logged and "failed login" in logged  # the log does say what happened
    for secret in (*PASSWORDS.values(), "not-the-password", token):
        assert secret not in logged


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/incidents/3?x=1", "/incidents/3?x=1"), ("//evil.example", "/"), ("/\\evil.example", "/"),
     ("https://evil.example/", "/"), ("rules", "/"), ("", "/"), ("/ok\r\nSet-Cookie: x", "/")],
)
def test_only_local_next(target: str, expected: str) -> None:
    assert safe_next(target) == expected


async def test_lockout_after_repeated_failures(web: WebEnv) -> None:
    client = web.client()
    for _ in range(5):
        assert (await client.login("wang_web", "guess")).status == 401
    locked = await client.login("wang_web")  # the right password, but too late
    assert locked.status == 429 and "登录失败次数过多" in locked.text
    assert client.session_token() is None
    assert (await web.client().login("admin1")).status == 303, "other users are not locked out"
    web.admin_web.limiter.clock.now += 61  # type: ignore[attr-defined]
    assert (await client.login("wang_web")).status == 303


async def test_sessions_end_on_expiry_and_when_the_user_is_removed(web: WebEnv) -> None:
    viewer = await web.logged_in("viewer1")
    admin = await web.logged_in("admin1")
    assert (await viewer.get("/")).status == 200
    edit_config(web.env.config_path, lambda d: d["web"].update(users=[u for u in web_users()
                                                                        if u["username"] != "viewer1"]))
    assert web.app.reload() == []
    assert (await viewer.get("/")).status == 302
    assert (await admin.get("/")).status == 200
    web.admin_web.sessions.clock.now += 12 * 3600 + 1  # type: ignore[attr-defined]  # session_hours: 12
    assert (await admin.get("/")).status == 302


async def test_secure_cookie_when_configured(web: WebEnv) -> None:
    edit_config(web.env.config_path, lambda d: d["web"].update(secure_cookies=True))
    assert web.app.reload() == []
    client = web.client()
    form = await client.get("/login")
    pre = form.cookies[LOGIN_COOKIE]
    assert pre["secure"] and pre["httponly"] and pre["samesite"] == "Strict"
    # the client's jar keeps Secure cookies away from plain http, as a browser would: send it as HTTPS would
    fields = {"csrf_token": form.csrf(), "username": "admin1", "password": PASSWORDS["admin1"], "next": "/"}
    async with client.http.post("/login", allow_redirects=False, data=fields,
                                headers={"Cookie": f"{LOGIN_COOKIE}={pre.value}"}) as response:
        assert response.status == 303
        cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE + "="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_role_permissions(web: WebEnv) -> None:
    incident = await web.report()
    viewer = await web.logged_in("viewer1")
    page = await viewer.get(f"/incidents/{incident.id}")
    assert page.status == 200 and "居民报告" in page.text and 'action="/incidents/' not in page.text
    denied = await viewer.post(f"/incidents/{incident.id}/resolve", {"result": "已处理"}, csrf_from="/")
    assert denied.status == 403 and "无权访问" in denied.text
    assert (await web.incident(incident.id)).status == "open"

    version = web.app.station.current.version  # type: ignore[union-attr]
    with web.env.config_path.open("a", encoding="utf-8") as file:
        file.write("\n# edited\n")  # a reload would now change the version
    assert (await viewer.get("/config")).status == 403
    assert (await viewer.post("/config/reload", {})).status == 403
    officer = await web.logged_in("wang_web")
    assert (await officer.get("/config")).status == 403
    assert (await officer.post("/config/reload", {})).status == 403
    assert web.app.station.current.version == version  # type: ignore[union-attr]
    assert 'href="/config"' not in (await officer.get("/")).text

    admin = await web.logged_in("admin1")
    assert 'href="/config"' in (await admin.get("/")).text
    assert (await admin.get("/config")).status == 200
    assert 'action="/incidents/' in (await officer.get(f"/incidents/{incident.id}")).text


async def test_csrf_missing_or_wrong_is_refused(web: WebEnv) -> None:
    incident = await web.report()
    officer = await web.logged_in("wang_web")
    admin = await web.logged_in("admin1")
    path = f"/incidents/{incident.id}/resolve"
    missing = await officer.post(path, {"result": "已处理"}, csrf_from=None)
    assert missing.status == 403 and "CSRF" in missing.text
    wrong = await officer.post(path, {"result": "已处理", "csrf_token": "0" * 43}, csrf_from=None)
    assert wrong.status == 403
    borrowed = (await admin.get("/")).csrf()  # a real token, but another session's
    stolen = await officer.post(path, {"result": "已处理", "csrf_token": borrowed}, csrf_from=None)
    assert stolen.status == 403
    assert (await admin.post("/config/reload", {}, csrf_from=None)).status == 403
    assert (await web.incident(incident.id)).status == "open"
    async with web.app.station.db.session() as s:  # type: ignore[union-attr]
        kinds = (await s.scalars(
            select(OutboxMessage.kind).where(OutboxMessage.incident_id == incident.id))).all()
    assert "result" not in kinds


# -- incidents -----------------------------------------------------------------------------------------
async def test_report_appears_then_timeline_then_resolve_tells_the_group(web: WebEnv) -> None:
    env = web.env
    start = env.sandbox.log.last_seq
    incident = await web.report()
    await env.bot_says(WANG, start, "警情")
    viewer = await web.logged_in("viewer1")
    dashboard = await viewer.get("/")
    row = re.search(rf'<tr data-incident="{incident.id}">(.*?)</tr>', dashboard.text, re.S)
    assert row, dashboard.text
    for expected in ("P1", "火情", "锦绣小区平安群", "张阿姨", "待接警", "王警官"):
        assert expected in row.group(1)
    duty = re.search(r'<tr data-group="jinxiu">(.*?)</tr>', dashboard.text, re.S)
    assert duty and "王警官" in duty.group(1) and "本群社区民警在班" in duty.group(1)
    night = re.search(r'<tr data-group="fangdian">(.*?)</tr>', dashboard.text, re.S)
    assert night and "陈警官" in night.group(1)

    env.clock.current += timedelta(minutes=2)  # within the P1 chain's first step (3m): no escalation races in
    await env.sandbox.say(WANG, "收到")
    await env.bot_says(JINXIU, start, "王警官已接警")
    page = await viewer.get(f"/incidents/{incident.id}")
    kinds = re.findall(r'data-kind="(\w+)"', page.text)
    assert kinds == ["reported", "replied", "pinged", "acknowledged", "group_told"]
    assert "2026-11-27 10:00:00" in page.text and "2026-11-27 10:02:00" in page.text  # Asia/Shanghai
    assert "王警官<small>（本群社区民警）</small>" in page.text and "用时 2分钟" in page.text
    assert FIRE in html.unescape(page.text)

    officer = await web.logged_in("wang_web")
    env.clock.current += timedelta(minutes=20)
    result = "消防已到场，系楼道杂物冒烟，已扑灭，无人受伤"
    done = await officer.post(f"/incidents/{incident.id}/resolve", {"result": result},
                              csrf_from=f"/incidents/{incident.id}")
    assert done.status == 303 and done.location == f"/incidents/{incident.id}?notice=resolved"
    told = await env.bot_says(JINXIU, start, "处理完毕")
    assert result in told["text"] and f"#{incident.id}" in told["text"] and "王警官" in told["text"]
    resolved = await web.incident(incident.id)
    assert resolved.status == "resolved" and resolved.resolved_by == "wang" and resolved.result == result

    page = await officer.get(done.location)
    assert "已标记为处理完毕" in page.text and result in page.text and "用时 22分钟" in page.text
    assert re.findall(r'data-kind="(\w+)"', page.text)[-2:] == ["resolved", "group_told"]
    assert 'action="/incidents/' not in page.text  # nothing left to resolve
    assert f'data-incident="{incident.id}"' not in (await viewer.get("/")).text
    assert f'data-incident="{incident.id}"' in (await viewer.get("/incidents?status=resolved")).text
    assert f'data-incident="{incident.id}"' not in (await viewer.get("/incidents?status=open")).text

    again = await officer.post(f"/incidents/{incident.id}/resolve", {"result": "再来一次"},
                               csrf_from=f"/incidents/{incident.id}")
    assert again.location.endswith("notice=already")
    async with web.app.station.db.session() as s:  # type: ignore[union-attr]
        kinds = (await s.scalars(
            select(OutboxMessage.kind).where(OutboxMessage.incident_id == incident.id))).all()
    assert kinds.count("result") == 1


async def test_admin_without_officer_resolves_in_the_stations_name(web: WebEnv) -> None:
    start = web.env.sandbox.log.last_seq
    incident = await web.report("有人拿裸聊视频威胁我转钱", room=FANGDIAN, resident="wxid_res_06")
    admin = await web.logged_in("admin1")
    empty = await admin.post(f"/incidents/{incident.id}/resolve", {"result": "  "}, csrf_from="/")
    assert empty.status == 400 and "请填写处理结果" in empty.text
    done = await admin.post(f"/incidents/{incident.id}/resolve", {"result": "已联系当事人，未转账"},
                            csrf_from="/")
    assert done.status == 303
    told = await web.env.bot_says(FANGDIAN, start, "处理完毕")
    assert "已联系当事人，未转账（花木派出所）" in told["text"] and "admin1" not in told["text"]
    page = await admin.get(f"/incidents/{incident.id}")
    assert "网页账号 admin1" in page.text
    assert (await admin.get("/incidents/99999")).status == 404


# -- groups --------------------------------------------------------------------------------------------
async def test_group_figures_over_periods(web: WebEnv) -> None:
    env = web.env
    start = env.sandbox.log.last_seq
    for resident, text in (("wxid_res_02", "今晚吃火锅吗"), ("wxid_res_03", "孩子放学了")):
        assert await env.outcome_of(await env.sandbox.say(resident, text, room=JINXIU)) == "quiet"
    assert await env.outcome_of(await env.sandbox.say(WANG, "大家注意用电安全", room=JINXIU)) == "officer_post"
    fire = await web.report()
    await web.report("有人拿裸聊视频威胁我转钱", room=FANGDIAN, resident="wxid_res_06")
    env.clock.current += timedelta(minutes=2)  # before the P1 chain's first step (3m)
    await env.sandbox.say(WANG, "收到")
    await env.bot_says(JINXIU, start, "已接警")
    env.clock.current += timedelta(minutes=7)
    officer = await web.logged_in("wang_web")
    resolved = await officer.post(f"/incidents/{fire.id}/resolve", {"result": "已扑灭"}, csrf_from="/")
    assert resolved.status == 303

    def cells(page: Page, group: str) -> dict[str, str]:
        row = re.search(rf'<tr data-group="{re.escape(group)}"[^>]*>(.*?)</tr>', page.text, re.S)
        assert row, page.text
        return dict(re.findall(r'data-field="(\w+)">(.*?)</td>', row.group(1), re.S))

    page = await officer.get("/groups?period=day")
    assert cells(page, "jinxiu") == {"messages": "4", "residents": "3", "reports": "1",
                                     "categories": "火情 1", "ack": "2分钟", "resolve": "9分钟"}
    assert cells(page, "fangdian") == {"messages": "1", "residents": "1", "reports": "1",
                                       "categories": "诈骗 1", "ack": "—", "resolve": "—"}
    assert cells(page, "lianyang")["messages"] == "0"
    assert cells(page, "*") == {"messages": "5", "residents": "4", "reports": "2",
                                "categories": "火情 1，诈骗 1", "ack": "2分钟", "resolve": "9分钟"}
    assert "<svg" in page.text and "<title>10时: 2起</title>" in page.text

    env.clock.current += timedelta(days=2)
    page = await officer.get("/groups?period=day")
    assert cells(page, "*")["reports"] == "0" and "<title>10时: 0起</title>" in page.text
    page = await officer.get("/groups?period=week")
    assert cells(page, "*")["reports"] == "2" and cells(page, "*")["messages"] == "5"


# -- rules ---------------------------------------------------------------------------------------------
async def test_rules_tree_and_tester_match_the_cli(web: WebEnv) -> None:
    viewer = await web.logged_in("viewer1")
    page = await viewer.get("/rules")
    router = web.app.station.current.router  # type: ignore[union-attr]
    for route in router.all_routes():
        assert f'data-route="{route.id}"' in page.text
    assert f"{router.keyword_count} 个关键词" in page.text

    text, group, at = "有人拿裸聊视频威胁我转钱", "fangdian", "2026-11-28 23:00"
    tested = await viewer.post("/rules/test", {"text": text, "group": group, "at": at}, csrf_from="/rules")
    assert tested.status == 200
    shown = re.search(r'<pre class="explain" id="explanation">(.*?)</pre>', tested.text, re.S)
    assert shown, tested.text
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "main.py"), "route", "--config", str(web.env.config_path),
        "--group", group, "--at", at, text, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert html.unescape(shown.group(1)) == out.decode("utf-8").rstrip("\n")
    assert "scam_sextortion_blackmail" in out.decode() and "(li, duty)" in out.decode()  # Sat night

    bad = await viewer.post("/rules/test", {"text": text, "at": "tomorrow"}, csrf_from="/rules")
    assert bad.status == 400 and "时间格式" in bad.text


# -- config ----------------------------------------------------------------------------------------------
async def test_reload_shows_errors_and_keeps_the_running_version(web: WebEnv) -> None:
    admin = await web.logged_in("admin1")
    version = web.app.station.current.version  # type: ignore[union-attr]
    page = await admin.get("/config")
    assert f'<code id="config-version">{version}</code>' in page.text

    good = web.env.config_path.read_text(encoding="utf-8")
    lines = good.splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip() == "severity: P1")
    lines[line - 1] = lines[line - 1].replace("P1", "P9")
    web.env.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejected = await admin.post("/config/reload", {}, csrf_from="/config")
    assert rejected.status == 422
    assert "没有生效" in rejected.text and f'<b class="version">{version}</b>' in rejected.text
    issue_row = r"<tbody>\s*<tr><td>(.*?)</td><td>(.*?)</td><td><code>(.*?)</code></td><td>(.*?)</td></tr>"
    row = re.search(issue_row, rejected.text, re.S)
    assert row, rejected.text
    assert row.group(1) == str(web.env.config_path) and row.group(2) == str(line)
    assert row.group(3) == "routes[0].severity" and "P1" in html.unescape(row.group(4))
    assert web.app.station.current.version == version  # type: ignore[union-attr]

    web.env.config_path.write_text(good + "\n# reviewed\n", encoding="utf-8")
    reloaded = await admin.post("/config/reload", {}, csrf_from="/config")
    new = web.app.station.current.version  # type: ignore[union-attr]
    assert reloaded.status == 200 and new != version
    assert f"已加载新配置：版本 {version} → {new}" in reloaded.text
    unchanged = await admin.post("/config/reload", {}, csrf_from="/config")
    assert "配置文件没有变化" in unchanged.text


# -- monitoring ------------------------------------------------------------------------------------------
async def test_healthz_when_healthy(web: WebEnv) -> None:
    client = web.client()
    await web.report()
    async with client.http.get("/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok" and body["puppet_connected"] is True and body["database"] is True
    assert body["config_version"] == web.app.station.current.version  # type: ignore[union-attr]
    assert body["last_event_at"] and body["last_event_at"].startswith("20")
    assert body["puppet_state"] == "connected" and body["reconnects"] == 0 and body["liveness_failures"] == 0
    # how much waits at this instant depends on timing (our own reply's echo may be on its way): figures
    assert isinstance(body["pending_events"], int) and isinstance(body["intake_backlog"], int)
    assert body["pending_events"] >= 0 and body["intake_backlog"] >= 0


async def test_event_loop_stalls_show_in_metrics_and_healthz(web: WebEnv) -> None:
    """The process's loop watch (``bot/loop_watch.py``): a held loop is counted, with how long it was held."""
    held = asyncio.Event()
    watch = LoopWatch(asyncio.get_running_loop(), threshold=0.08, interval=0.01, on_stall=lambda _: held.set())
    watch.start()
    try:
        await asyncio.sleep(0)
        time.sleep(0.3)  # the stall under test: something holding the event loop
        await asyncio.wait_for(held.wait(), 10)
        async with web.client().http.get("/metrics") as response:
            samples = scrape(await response.text())
        async with web.client().http.get("/healthz") as response:
            body = await response.json()
    finally:
        watch.stop()
    assert samples[("gonghao_event_loop_stalls", ())] == 1 == body["event_loop_stalls"]
    assert 0.25 <= samples[("gonghao_event_loop_stalled_seconds", ())] < 5
    assert loop_watch.running() is None  # stopped: no longer the process's watch


async def test_healthz_degraded_without_the_puppet(tmp_path: Path, clock: FakeClock, default_config_text: str,
                                                   env: Env) -> None:
    (tmp_path / "other").mkdir()
    config_path = write_config(tmp_path / "other", default_config_text)
    app = App(config_path, puppet=PuppetTarget("not-the-token", env.sandbox.endpoint), clock=clock,
              watch=False)
    await app.start()
    admin_web = await start_admin_web(app, "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionFailed):
            await app.wait_logged_in()
        async with aiohttp.ClientSession() as http, http.get(admin_web.url + "healthz") as response:
            assert response.status == 503
            body = await response.json()
        assert body == {"status": "degraded", "puppet_connected": False, "puppet_state": "connecting",
                        "reconnects": 0, "liveness_failures": 0, "last_event_at": None, "pending_events": 0,
                        "intake_backlog": 0, "payload_helper": "standby", "event_loop_stalls": 0, "database": True,
                        "config_version": app.station.current.version}  # type: ignore[union-attr]
    finally:
        await admin_web.stop()
        await app.stop()


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_scrape(web: WebEnv) -> None:
    station = web.app.station
    assert station is not None
    async with station.db.session() as s, s.begin():  # a row the sender must not touch yet
        row = enqueue_row(s, account=station.id, conversation_id=JINXIU, is_room=True, text="稍后发送",
                          now=station.now() - timedelta(hours=2), kind="broadcast")
        row.not_before = station.now() + timedelta(days=365)
    async with web.client().http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        samples = scrape(await response.text())
    assert samples[("gonghao_outbox_pending", ())] == 1
    assert samples[("gonghao_outbox_oldest_urgent_seconds", ())] == 0  # a broadcast copy is not urgent
    async with station.db.session() as s, s.begin():  # a ping waiting out a retry after failing for 90 s
        row = enqueue_row(s, account=station.id, conversation_id=WANG, is_room=False, text="请处理",
                          now=station.now() - timedelta(seconds=90), kind="ping", priority=PRIORITY_URGENT)
        row.not_before = station.now() + timedelta(days=365)
    async with web.client().http.get("/metrics") as response:
        stuck = scrape(await response.text())[("gonghao_outbox_oldest_urgent_seconds", ())]
    assert 90 <= stuck < 90 + 60
    assert samples[("gonghao_puppet_connected", ())] == 1
    assert samples[("gonghao_puppet_reconnects", ())] == 0
    assert samples[("gonghao_puppet_liveness_failures", ())] == 0
    assert samples[("gonghao_intake_pending_events", ())] >= 0 and samples[("gonghao_intake_backlog", ())] >= 0
    assert samples[("gonghao_intake_unloadable_messages", ())] == 0
    assert samples[("gonghao_config_version_info", (("version", station.current.version),))] == 1
    failed = ("gonghao_config_reloads_total", (("result", "failed"),))
    # the scrape renders the App's own registry (a fallback one until the App carries its Metrics)
    (metrics_of(web.app) or web.admin_web.application[METRICS_KEY]).config_reload("failed")
    async with web.client().http.get("/metrics") as response:
        assert scrape(await response.text())[failed] == samples[failed] + 1


def test_metrics_are_per_instance_and_bounded() -> None:
    first, second = Metrics(), Metrics()
    first.message_in(private=False)
    first.message_handled("incident:fire,scam_other")
    first.message_handled("incident:joined:fire")
    first.message_handled("ack_acknowledged")
    first.message_handled("something new")
    first.incident_opened("fire", pings=2)
    first.sent("reply")
    first.send_failed("ping", final=True)
    first.config_reload("failed")
    samples = scrape(first.render().decode())
    assert samples[("gonghao_messages_in_total", (("conversation", "group"),))] == 1
    assert samples[("gonghao_messages_handled_total", (("outcome", "incident"),))] == 1
    assert samples[("gonghao_messages_handled_total", (("outcome", "incident_joined"),))] == 1
    assert samples[("gonghao_messages_handled_total", (("outcome", "other"),))] == 1
    assert samples[("gonghao_acknowledgements_total", ())] == 1
    assert samples[("gonghao_incidents_opened_total", (("category", "fire"),))] == 1
    assert samples[("gonghao_pings_queued_total", ())] == 2
    assert samples[("gonghao_outbox_sent_total", (("kind", "reply"),))] == 1
    assert samples[("gonghao_outbox_failed_total", (("final", "true"), ("kind", "ping")))] == 1
    assert samples[("gonghao_config_reloads_total", (("result", "failed"),))] == 1
    assert scrape(second.render().decode())[("gonghao_messages_in_total", (("conversation", "group"),))] == 0
    assert outcome_kind("ack_not_found") == "ack_not_found"
    assert outcome_kind("resolve_resolved") == "resolve_resolved"
    with pytest.raises(ValueError):
        first.config_reload("maybe")


# -- helpers ---------------------------------------------------------------------------------------------
def test_password_hashes() -> None:
    hashed = hash_password("correct horse 电池")
    algorithm, iterations, salt, digest = hashed.split("$")
    assert algorithm == "pbkdf2_sha256" and int(iterations) >= MIN_ITERATIONS and salt and digest
    assert verify_password("correct horse 电池", hashed)
    assert not verify_password("correct horse", hashed)
    assert hash_password("correct horse 电池") != hashed  # a fresh salt each time
    for broken in ("", "pbkdf2_sha256$x$y$z", "md5$1$a$b", hashed + "$extra", hashed.rsplit("$", 1)[0] + "$"):
        assert not verify_password("correct horse 电池", broken)
    fixed = hash_password("secret", iterations=260_000, salt="NaCl")
    assert fixed.startswith("pbkdf2_sha256$260000$NaCl$")
    assert fixed == hash_password("secret", iterations=260_000, salt="NaCl")
    with pytest.raises(ValueError):
        hash_password("weak", iterations=1000)


def test_svg_chart_scales_and_escapes() -> None:
    assert nice_ceiling(0) == (1.0, 1.0) and nice_ceiling(3) == (3.0, 1.0)
    assert nice_ceiling(37) == (40.0, 10.0) and nice_ceiling(250) == (250.0, 50.0)
    svg = str(bar_chart([1, 0, 4], ["<b>", "x", "y"], title='a "t" <script>', unit="起"))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script>" not in svg and "&lt;b&gt;" in svg and "&quot;t&quot;" in svg
    assert svg.count('<rect class="chart-bar"') == 3 and "<title>y: 4起</title>" in svg

