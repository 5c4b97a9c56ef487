"""The rules page (route tree and the routing tester) and the config page (live version, reload)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from bot.config.schema import WebRole
from bot.web.views_base import gonghao, render, requires, session_of, station
from handlers.explain import explain_text, parse_local_time
from handlers.routing import Route

log = logging.getLogger(__name__)

MAX_TEST_TEXT = 2000


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/rules", rules_page)
    router.add_post("/rules/test", rules_test)
    router.add_get("/config", config_page)
    router.add_post("/config/reload", config_reload)


@dataclass
class RouteNode:
    id: str
    category: str
    category_label: str
    severity: str
    any_words: int
    all_groups: int
    all_words: int
    regexes: int
    excludes: int
    groups: list[str]
    active: list[str]
    dedup_minutes: int
    own_reply: bool
    continue_: bool
    children: list[RouteNode]


def _node(route: Route, parent: Route | None) -> RouteNode:
    return RouteNode(
        id=route.id,
        category=route.category,
        category_label=route.category_label,
        severity=route.severity.value,
        any_words=len(route.any_words),
        all_groups=len(route.all_groups),
        all_words=sum(len(g) for g in route.all_groups),
        regexes=len(route.regexes),
        excludes=len(route.exclude_words),
        groups=sorted(route.groups),
        active=[f"{','.join(w.days)} {w.start:%H:%M}-{w.end:%H:%M}" for w in route.active],
        dedup_minutes=route.dedup_minutes,
        own_reply=route.reply is not None and (parent is None or route.reply != parent.reply),
        continue_=route.continue_,
        children=[_node(child, route) for child in route.children],
    )


def _rules(request: web.Request, *, form: dict[str, str], explanation: str = "", error: str = "",
           status: int = 200) -> web.Response:
    st = station(request)
    live = st.current
    tree = [_node(route, None) for route in live.router.routes]
    return render(
        request, "rules.html", status=status, nav="rules", title="规则", tree=tree, version=live.version,
        route_count=sum(1 for _ in live.router.all_routes()), keyword_count=live.router.keyword_count,
        groups=[(g.id, g.display_name) for g in live.config.groups], form=form, explanation=explanation,
        error=error, timezone=live.config.timezone,
    )


def _default_form(request: web.Request) -> dict[str, str]:
    st = station(request)
    now = st.now().astimezone(st.current.config.zone)
    return {"text": "", "group": "", "at": now.strftime("%Y-%m-%d %H:%M")}


async def rules_page(request: web.Request) -> web.StreamResponse:
    return _rules(request, form=_default_form(request))


async def rules_test(request: web.Request) -> web.StreamResponse:
    """What ``python main.py route --group G --at T TEXT`` prints, with the live config version."""
    st = station(request)
    live = st.current
    posted = await request.post()
    form = {key: str(posted.get(key, "")).strip() for key in ("text", "group", "at")}
    form["text"] = str(posted.get("text", ""))[:MAX_TEST_TEXT]
    if not form["text"].strip():
        return _rules(request, form=form, error="请输入要测试的消息。", status=400)
    group_id = form["group"] or None
    if group_id is not None and all(g.id != group_id for g in live.config.groups):
        return _rules(request, form=form, error="没有这个群。", status=400)
    at: datetime
    try:
        at = parse_local_time(live.config, form["at"]) if form["at"] else st.now()
    except ValueError:
        return _rules(request, form=form, error="时间格式应为“2026-11-28 23:00”。", status=400)
    explanation = explain_text(live.config, live.router, form["text"], group_id, at)
    return _rules(request, form=form, explanation=explanation)


def _config_context(request: web.Request) -> dict[str, object]:
    app = gonghao(request)
    live = station(request).current
    config = live.config
    return {
        "version": live.version,
        "config_path": str(app.config_path),
        "figures": [
            ("派出所", f"{config.station.name}（{config.station.id}）"),
            ("民警", len(config.officers)),
            ("群", len(config.groups)),
            ("排班", len(config.shifts)),
            ("规则", sum(1 for _ in live.router.all_routes())),
            ("关键词", live.router.keyword_count),
            ("网页账号", len(config.web.users)),
            ("时区", config.timezone),
        ],
    }


@requires(WebRole.admin)
async def config_page(request: web.Request) -> web.StreamResponse:
    return render(request, "config.html", nav="config", title="配置", issues=[], outcome="",
                  previous="", **_config_context(request))


@requires(WebRole.admin)
async def config_reload(request: web.Request) -> web.StreamResponse:
    app = gonghao(request)
    before = station(request).current.version
    issues = app.reload()
    after = station(request).current.version
    if issues:
        outcome = "rejected"
    elif after != before:
        outcome = "reloaded"
    else:
        outcome = "unchanged"
    log.info("web: %s reloaded the config: %s (version %s -> %s)", session_of(request).username, outcome,
             before, after)
    return render(request, "config.html", status=422 if issues else 200, nav="config", title="配置",
                  issues=issues, outcome=outcome, previous=before, **_config_context(request))
