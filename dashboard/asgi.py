"""ASGI entry point (served by daphne): HTTP pages and static files, websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from .routing import websocket_routes  # noqa: E402

application = ProtocolTypeRouter({
    # static files (htmx, css) are served by the app itself: the dashboard is one
    # process with nothing in front of it, and its pages must work offline
    "http": ASGIStaticFilesHandler(django_asgi_app),
    "websocket": websocket_routes,
})
