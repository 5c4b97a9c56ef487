"""The station's admin web (Chinese pages): incidents, groups, rules, config, health and metrics."""

from bot.web.server import AdminWeb, create_admin_app, start_admin_web

__all__ = ["AdminWeb", "create_admin_app", "start_admin_web"]
