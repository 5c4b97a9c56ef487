"""Human-readable explanations of routing decisions, for the CLI and (later) the admin web."""

from __future__ import annotations

from datetime import datetime

from bot.config.schema import Config
from handlers.oncall import coverage
from handlers.routing import Decision, KeywordHit, Router, highlight


def parse_local_time(config: Config, text: str) -> datetime:
    for layout in ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), layout).replace(tzinfo=config.zone)
        except ValueError:
            continue
    raise ValueError(f"expected a local time like '2026-11-28 23:00', got {text!r}")


def _describe_hits(original: str, offsets: list[int], hits: tuple[KeywordHit, ...]) -> str:
    parts = []
    for hit in hits:
        start, end = highlight(original, offsets, hit)
        parts.append(f"“{hit.keyword}” at {start}-{end} (“{original[start:end]}”)")
    return ", ".join(parts)


def explain_text(config: Config, router: Router, text: str, group_id: str | None, at: datetime) -> str:
    decision, offsets = router.explain(text, group_id, at)
    return render_explanation(config, decision, offsets, text, group_id, at)


def render_explanation(
    config: Config, decision: Decision, offsets: list[int], text: str, group_id: str | None, at: datetime
) -> str:
    lines = [f"text:       {text}", f"normalised: {decision.normalized}"]
    if not decision.matches:
        lines.append("result:     no route matched (category none): the bot stays quiet")
    for number, match in enumerate(decision.matches, 1):
        route = match.route
        lines.append(
            f"match {number}:    route {' > '.join(route.path)}  category {route.category} "
            f"({route.category_label})  severity {route.severity.value}"
        )
        if match.hits:
            lines.append(f"  keywords: {_describe_hits(text, offsets, match.hits)}")
        if match.regex_hits:
            lines.append(f"  regex:    {', '.join(match.regex_hits)}")
    for veto in decision.vetoed:
        lines.append(f"vetoed:     route {' > '.join(veto.route.path)} by exclusion "
                     f"{_describe_hits(text, offsets, veto.hits)}")
    if decision.matches:
        group = next((g for g in config.groups if g.id == group_id), None)
        cover = coverage(config, group, at)
        names = ", ".join(f"{o.name} ({o.id}, {o.role.value})" for o in cover.officers)
        when = at.astimezone(config.zone).strftime("%Y-%m-%d %H:%M %a")
        where = f"group {group_id}" if group else "an unknown group"
        lines.append(f"ping:       {names} — {cover.reason} [{where}, {when}]")
    return "\n".join(lines)
