"""What templates can see, built in one place so that replies, pings and acks agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.config.schema import Config, GroupConfig, OfficerConfig
from bot.config.templates import render
from handlers.routing import Route
from models.tables import Incident


def local_time(config: Config, at: datetime) -> str:
    return at.astimezone(config.zone).strftime("%Y-%m-%d %H:%M")


def incident_context(
    config: Config,
    incident: Incident,
    *,
    route: Route | None = None,
    group: GroupConfig | None = None,
    officers: tuple[OfficerConfig, ...] = (),
) -> dict[str, Any]:
    return {
        "station": {"id": config.station.id, "name": config.station.name},
        "group": {
            "id": incident.group_id,
            "name": group.display_name if group else incident.group_name,
            "room_id": incident.room_id,
        },
        "resident": {"id": incident.reporter_id, "name": incident.reporter_name},
        "message": {"text": incident.text, "time": local_time(config, incident.created_at)},
        "incident": {
            "id": incident.id,
            "severity": incident.severity,
            "category": incident.category,
            "status": incident.status,
            "overdue": bool(incident.overdue),
            "report_count": incident.report_count or 1,
        },
        "route": {
            "id": incident.route_id,
            "category": incident.category,
            "category_label": route.category_label if route else config.categories.get(incident.category,
                                                                                       incident.category),
            "severity": incident.severity,
        },
        "officer": {"name": officers[0].name, "id": officers[0].id} if officers else {"name": "值班民警", "id": ""},
        "officers": [{"name": o.name, "id": o.id} for o in officers],
    }


def say(template: str, context: dict[str, Any]) -> str:
    return render(template, context)
