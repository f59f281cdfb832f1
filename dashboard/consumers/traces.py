"""Live sockets of the traces pages: an app's list of traces, and one trace's status
(records received, status, why it ended). Both re-render on the app's traces group,
which the agent consumer notifies when a ``trace`` frame or a ``record`` answer is
stored and the views when a recording starts, stops or a file is imported."""

from __future__ import annotations

from .. import groups
from ..live import traces
from .live import LiveConsumer


class _RenderedOnConnect(LiveConsumer):
    async def connect(self) -> None:
        await super().connect()
        if getattr(self, "joined", False):
            # a page is often opened by the redirect after a start or stop, and the
            # agent's lines or its end may come before its socket joined: render once
            await self.live_changed({"type": groups.CHANGED})


class TracesLive(_RenderedOnConnect):
    """An app's traces page."""

    def resolve(self) -> bool:
        from ..models import App

        self.app_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.app_traces(self.app_pk)
        return App.objects.filter(pk=self.app_pk).exists()

    def render(self) -> str:
        return traces.traces_html(self.app_pk, self.scope["user"], oob=True)


class TraceLive(_RenderedOnConnect):
    """A trace's page: its status card."""

    def resolve(self) -> bool:
        from ..models import Trace

        self.trace_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        app_pk = Trace.objects.filter(pk=self.trace_pk).values_list("app_id", flat=True).first()
        self.group = groups.app_traces(app_pk or 0)
        return app_pk is not None

    def render(self) -> str:
        return traces.trace_status_html(self.trace_pk, self.scope["user"], oob=True)
