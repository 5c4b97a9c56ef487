"""The station's admin web: aiohttp, server-rendered Chinese pages, logins from ``config.web.users``.

Routes (everything but ``/login``, ``/healthz``, ``/metrics`` and ``/static/`` needs a session):

* ``GET /``                        dashboard: open incidents by severity and age, who covers each group now
* ``GET /incidents``               incidents, ``?status=open|acknowledged|resolved|active|all``
* ``GET /incidents/{id}``          one incident with its timeline; ``POST …/resolve`` (officer, admin)
* ``GET /groups``                  per-group figures, ranking, by hour (``?period=day|week|month``)
* ``GET /groups/{id}``             one group: its figures, 8-week trend, reports by hour
* ``GET /broadcasts``              warnings with progress; ``/broadcasts/new``, ``POST /broadcasts`` (draft),
  ``GET /broadcasts/{id}`` (preview, progress), ``POST …/confirm``, ``POST …/cancel`` (may-broadcast
  officers)
* ``GET /reports``                 weekly reports; ``/reports/{id}``, ``/reports/{id}.csv``
* ``GET /rules``                   the route tree; ``POST /rules/test`` the tester (``main.py route``'s text)
* ``GET /config``                  the live config version; ``POST /config/reload`` (admin)
* ``GET /healthz``, ``GET /metrics`` for monitoring, no login

Start it with :func:`start_admin_web`; :func:`create_admin_app` gives the bare aiohttp application.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web
from sqlalchemy import text

from bot import loop_watch
from bot.web import views_admin, views_broadcasts, views_groups, views_incidents, views_inquiries, views_reports
from bot.web.auth import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginLimiter,
    SessionStore,
    check_login,
    tokens_match,
)
from bot.web.views_base import (
    APP_KEY,
    JINJA_KEY,
    LIMITER_KEY,
    METRICS_KEY,
    SESSION_REQUEST_KEY,
    SESSIONS_KEY,
    STATIC_DIR,
    Handler,
    gonghao,
    make_jinja,
    redirect,
    render,
)
from handlers.metrics import CONTENT_TYPE, ConnectionFigures, Metrics

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/login", "/healthz", "/metrics", "/favicon.ico"})
MAX_FORM_BYTES = 64 * 1024
HEALTH_DB_TIMEOUT = 3.0

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


# -- helpers ----------------------------------------------------------------------------------------
def safe_next(target: str | None) -> str:
    """Only a local path may follow a login; anything else (another host, a scheme, ``//x``) goes to ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _secure(request: web.Request) -> bool:
    app = gonghao(request)
    return bool(app.station and app.station.current.config.web.secure_cookies)


def _set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int,
                path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="Strict",
                        secure=_secure(request))


def _users(request: web.Request) -> list:  # type: ignore[type-arg]
    app = gonghao(request)
    return list(app.station.current.config.web.users) if app.station is not None else []


def _return_to(request: web.Request) -> str:
    """Where to go after logging in: the page asked for; for a form sent after the session ended, the page the
    form was on (from a same-origin Referer), never the form's action itself."""
    if request.method in ("GET", "HEAD"):
        return safe_next(request.path_qs)
    referer = urlsplit(request.headers.get("Referer", ""))
    if referer.netloc and referer.netloc == request.host:
        return safe_next(referer.path + (f"?{referer.query}" if referer.query else ""))
    return "/"


def metrics_of(app: App) -> Metrics | None:
    """The App's metrics once wired (``app.metrics``, or ``app.station.metrics``)."""
    found = getattr(app, "metrics", None) or getattr(app.station, "metrics", None)
    return found if isinstance(found, Metrics) else None


# -- middlewares ------------------------------------------------------------------------------------
@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = render(request, "error.html", status=404, title="页面不存在", message="没有这个页面。")
    except web.HTTPMethodNotAllowed:
        response = render(request, "error.html", status=405, title="不支持的操作",
                          message="请从页面上的按钮操作。")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def require_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No session: redirect to the login page (with a local ``next``). POST: the session's CSRF token."""
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    session = request.app[SESSIONS_KEY].get(request.cookies.get(SESSION_COOKIE), _users(request))
    if session is None:
        location = "/login?next=" + quote(_return_to(request), safe="/")
        return redirect(location, 302 if request.method == "GET" else 303)
    request[SESSION_REQUEST_KEY] = session
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        given = form.get(CSRF_FIELD)
        if not tokens_match(session.csrf, given if isinstance(given, str) else None):
            log.warning("web: CSRF token missing or wrong for %s %s (user %s)", request.method, request.path,
                        session.username)
            return render(request, "error.html", status=403, title="请求被拒绝",
                          message="表单已失效或来源不明（CSRF 校验失败）。请返回页面刷新后重试。")
    return await handler(request)


@web.middleware
async def durable_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A form's answer ("saved", "resolved", "confirmed") only once what it changed is on disk
    (``Database.durable``), as the bot's own messages wait for what caused them."""
    response = await handler(request)
    if request.method not in ("GET", "HEAD"):
        station = gonghao(request).station
        if station is not None:
            await station.db.durable()
    return response


# -- login / logout ---------------------------------------------------------------------------------
def _login_page(request: web.Request, *, error: str = "", status: int = 200,
                username: str = "") -> web.Response:
    token = request.cookies.get(LOGIN_COOKIE) or ""
    fresh = not token or len(token) > 100
    if fresh:
        token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, title="登录", error=error, login_token=token,
                      next=safe_next(request.query.get("next")), username=username)
    if fresh:
        _set_cookie(response, request, LOGIN_COOKIE, token, max_age=3600, path="/login")
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSIONS_KEY].get(request.cookies.get(SESSION_COOKIE), _users(request))
    if session is not None:
        return redirect(safe_next(request.query.get("next")), 302)
    return _login_page(request)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    username = str(form.get("username", "")).strip()[:64]
    password = str(form.get("password", ""))[:1024]
    target = safe_next(str(form.get("next", "")))
    if not tokens_match(request.cookies.get(LOGIN_COOKIE), str(form.get(CSRF_FIELD, ""))):
        return _login_page(request, status=403, error="登录表单已过期，请重新输入。", username=username)
    address = request.remote or "?"
    limiter = request.app[LIMITER_KEY]
    wait = limiter.locked_for(username, address)
    if wait > 0:
        log.warning("web: login refused for %r from %s: locked for %.0f s after repeated failures",
                    username, address, wait)
        return _login_page(request, status=429, username=username,
                           error=f"登录失败次数过多，请 {max(1, round(wait))} 秒后再试。")
    if not username or not password:
        return _login_page(request, status=400, error="请输入用户名和密码。", username=username)
    users = _users(request)
    user = await asyncio.get_running_loop().run_in_executor(None, check_login, users, username, password)
    if user is None:
        limiter.failed(username, address)
        log.warning("web: failed login for %r from %s", username, address)
        return _login_page(request, status=401, error="用户名或密码错误。", username=username)
    limiter.succeeded(username, address)
    store = request.app[SESSIONS_KEY]
    store.end(request.cookies.get(SESSION_COOKIE))  # never reuse a session id from before the login
    hours = gonghao(request).station.current.config.web.session_hours  # type: ignore[union-attr]
    session = store.create(user, hours)
    log.info("web: %s (%s) logged in from %s", user.username, user.role.value, address)
    response = redirect(target)
    _set_cookie(response, request, SESSION_COOKIE, session.token, max_age=hours * 3600)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    session = request[SESSION_REQUEST_KEY]
    request.app[SESSIONS_KEY].end(session.token)
    log.info("web: %s logged out", session.username)
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# -- monitoring -------------------------------------------------------------------------------------
async def _database_ok(app: App) -> bool:
    if app.station is None:
        return False
    try:
        async with asyncio.timeout(HEALTH_DB_TIMEOUT):
            async with app.station.db.session() as session:
                return (await session.scalar(text("SELECT 1"))) == 1
    except Exception as exc:  # any failure means "not healthy"; say why in the log
        log.warning("healthz: database check failed: %s: %s", type(exc).__name__, exc)
        return False


def connection_figures(app: App) -> ConnectionFigures:
    connection = app.connection
    watch = loop_watch.running()
    loop = {"loop_stalls": watch.stalls, "loop_stalled_seconds": watch.stalled_seconds} if watch else {}
    if connection is None:
        return ConnectionFigures(intake_backlog=app.intake_backlog, **loop)
    last = connection.last_event_at
    helper = connection.payload_helper
    return ConnectionFigures(
        **loop,
        connected=connection.logged_in.is_set(),
        reconnects=connection.reconnects,
        liveness_failures=connection.liveness_failures,
        seconds_since_event=None if last is None else max(0.0, (datetime.now(UTC) - last).total_seconds()),
        pending_events=connection.pending_events,
        unloadable=connection.unloadable,
        intake_backlog=app.intake_backlog,
        helper_running=helper is not None and helper.running,
        helper_loads=helper.answered if helper is not None else 0,
        helper_fallbacks=connection.helper_fallbacks,
        helper_engaged=connection.helper_engaged,
    )


async def healthz(request: web.Request) -> web.StreamResponse:
    app = gonghao(request)
    figures = connection_figures(app)
    connection = app.connection
    last = connection.last_event_at if connection is not None else None
    database = await _database_ok(app)
    healthy = figures.connected and database
    body = {
        "status": "ok" if healthy else "degraded",
        "puppet_connected": figures.connected,
        "puppet_state": connection.state if connection is not None else "idle",
        "reconnects": figures.reconnects,
        "liveness_failures": figures.liveness_failures,
        "last_event_at": last.isoformat() if last is not None else None,
        "pending_events": figures.pending_events,
        "intake_backlog": figures.intake_backlog,
        # intake.payload_helper: off; standby ("auto" while loads do not queue up); running; down while it
        # starts or restarts (loads are made in the bot meanwhile)
        "payload_helper": connection.helper_state if connection is not None else "off",
        "event_loop_stalls": figures.loop_stalls,
        "database": database,
        "config_version": app.station.current.version if app.station is not None else None,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    app = gonghao(request)
    registry = metrics_of(app) or request.app[METRICS_KEY]
    if app.station is not None:
        await registry.refresh(app.station, connection_figures(app))
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})


# -- assembly ---------------------------------------------------------------------------------------
def create_admin_app(app: App) -> web.Application:
    """The admin web for a started :class:`bot.app.App` (its ``station`` must exist)."""
    web_app = web.Application(middlewares=[security_headers, require_session, durable_answers],
                              client_max_size=MAX_FORM_BYTES)
    web_app[APP_KEY] = app
    web_app[SESSIONS_KEY] = SessionStore()
    web_app[LIMITER_KEY] = LoginLimiter()
    web_app[JINJA_KEY] = make_jinja()
    # Until the App carries its own Metrics, /metrics still answers (gauges live, counters at zero).
    web_app[METRICS_KEY] = metrics_of(app) or Metrics()
    router = web_app.router
    router.add_get("/login", login_form)
    router.add_post("/login", login_submit)
    router.add_post("/logout", logout)
    router.add_get("/healthz", healthz)
    router.add_get("/metrics", metrics)
    router.add_static("/static/", STATIC_DIR)
    views_incidents.setup(router)
    views_inquiries.setup(router)
    views_groups.setup(router)
    views_broadcasts.setup(router)
    views_reports.setup(router)
    views_admin.setup(router)
    return web_app


@dataclass
class AdminWeb:
    url: str
    application: web.Application
    runner: web.AppRunner

    @property
    def sessions(self) -> SessionStore:
        return self.application[SESSIONS_KEY]

    @property
    def limiter(self) -> LoginLimiter:
        return self.application[LIMITER_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_admin_web(app: App, host: str, port: int) -> AdminWeb:
    """Serve the admin web on ``host:port`` (0 = any free port) until :meth:`AdminWeb.stop`."""
    application = create_admin_app(app)
    runner = web.AppRunner(application, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    users = app.station.current.config.web.users if app.station is not None else []
    log.info("admin web on %s (%s users)", url, len(users))
    if not users:
        log.warning("admin web: no users in config web.users, so nobody can log in "
                    "(make a password hash with `python -m bot.web.auth`)")
    return AdminWeb(url, application, runner)
