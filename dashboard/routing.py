"""Websocket routes. The agent socket authenticates with a token; browser sockets
with Django's session, behind an Origin check against ALLOWED_HOSTS."""

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumers.agent import AgentConsumer
from .consumers.live import (ControlsLive, EngineLive, FindingsLive, OverviewLive, SessionLive, SessionsLive,
                             StatementsLive)
from .consumers.traces import TraceLive, TracesLive


def browser(app: Any) -> Any:
    """A socket for logged-in browser pages: Origin must be one of ALLOWED_HOSTS."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(app))


websocket_routes = URLRouter([
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/live/overview/", browser(OverviewLive.as_asgi())),
    path("ws/live/engine/<int:pk>/", browser(EngineLive.as_asgi())),
    path("ws/live/engine/<int:pk>/statements/", browser(StatementsLive.as_asgi())),
    path("ws/live/app/<int:pk>/sessions/", browser(SessionsLive.as_asgi())),
    path("ws/live/app/<int:pk>/findings/", browser(FindingsLive.as_asgi())),
    path("ws/live/session/<int:pk>/", browser(SessionLive.as_asgi())),
    path("ws/live/app/<int:pk>/controls/", browser(ControlsLive.as_asgi())),
    path("ws/live/app/<int:pk>/traces/", browser(TracesLive.as_asgi())),
    path("ws/live/trace/<int:pk>/", browser(TraceLive.as_asgi())),
])
