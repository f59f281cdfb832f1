"""``/ws/live/…``: a browser page's live socket.

It joins the groups of what the page shows; on every "changed" notice it re-renders
the page's live fragments (with ``hx-swap-oob``) — coalesced, so a busy app updates an
open page at most LIVE_UPDATES_PER_SECOND times a second, whatever its event rate.
A page's GET parameters (filters, sort, page) are repeated in its socket's URL, so
live re-renders show what the page shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import QueryDict

from tracker import protocol

from .. import conf, control, groups
from ..live import controls, findings, fragments, sessions, statements

log = logging.getLogger("dashboard.live")


class LiveConsumer(AsyncWebsocketConsumer):
    """Base: subclasses name their group and how to render their fragments."""

    group: str = ""
    #: more groups whose notices re-render the page (e.g. its quick toggles')
    also: tuple[str, ...] = ()
    _flusher: asyncio.Task | None = None

    def render(self) -> str:  # runs in a thread: may use the ORM
        raise NotImplementedError

    def resolve(self) -> bool:
        """Check the page's object exists (and set up ``group``); runs in a thread."""
        return True

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(protocol.CLOSE_LOGIN_REQUIRED, "login required")
            return
        if not await database_sync_to_async(self.resolve)():
            await self.refuse(4404, "not found")
            return
        self._dirty = False
        self._last_flush = 0.0
        # join before accepting: a notice sent while the page connects is not lost
        for name in (self.group, *self.also):
            await self.channel_layer.group_add(name, self.channel_name)
        self.joined = True
        await self.accept()

    async def refuse(self, code: int, reason: str) -> None:
        # accept first so that the browser sees the close code, not a failed handshake
        await self.accept()
        await self.close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            for name in (self.group, *self.also):
                await self.channel_layer.group_discard(name, self.channel_name)
        if self._flusher is not None:
            self._flusher.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass  # the page only listens

    async def live_changed(self, message: dict[str, Any]) -> None:
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        interval = 1.0 / conf.get("LIVE_UPDATES_PER_SECOND")
        while self._dirty:
            wait = self._last_flush + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty = False
            self._last_flush = time.monotonic()
            html = await database_sync_to_async(self.render)()
            await self.send(text_data=html)


class OverviewLive(LiveConsumer):
    group = groups.OVERVIEW

    def render(self) -> str:
        return fragments.overview(oob=True)


class EngineLive(LiveConsumer):
    def resolve(self) -> bool:
        from ..models import Engine

        self.engine_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.engine(self.engine_pk)
        engine = (Engine.objects.filter(pk=self.engine_pk)
                  .values_list("process__app_id", "name").first())
        if engine is None:
            return False
        self.app_pk, self.engine_name = engine
        self.also = (groups.app_controls(self.app_pk),)  # its quick toggles
        return True

    def render(self) -> str:
        from django.urls import reverse

        return fragments.engine(self.engine_pk, oob=True) + controls.quick_html(
            self.app_pk, self.scope["user"], "engine", self.engine_name, None,
            reverse("engine", args=[self.engine_pk]))


def _query(scope: dict[str, Any]) -> QueryDict:
    return QueryDict(scope.get("query_string", b"").decode("latin-1"))


class StatementsLive(LiveConsumer):
    """An engine's statements page (aggregated over the app's processes), sorted."""

    def resolve(self) -> bool:
        from ..models import Engine

        self.engine_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.filters = statements.StatementFilters.from_query(_query(self.scope))
        app_pk = (Engine.objects.filter(pk=self.engine_pk)
                  .values_list("process__app_id", flat=True).first())
        self.group = groups.app_statements(app_pk or 0)
        return app_pk is not None

    def render(self) -> str:
        return statements.statements(self.engine_pk, self.filters, oob=True)


class FindingsLive(LiveConsumer):
    """An app's findings page, with its filters."""

    def resolve(self) -> bool:
        from ..models import App

        self.app_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.app_findings(self.app_pk)
        self.filters = findings.FindingFilters.from_query(_query(self.scope))
        return App.objects.filter(pk=self.app_pk).exists()

    def render(self) -> str:
        return findings.findings(self.app_pk, self.filters, oob=True)


class ControlsLive(LiveConsumer):
    """An app's controls page: its toggles and each process's answer."""

    def resolve(self) -> bool:
        from ..models import App

        self.app_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.app_controls(self.app_pk)
        return App.objects.filter(pk=self.app_pk).exists()

    async def connect(self) -> None:
        await super().connect()
        if getattr(self, "joined", False):
            # the page is often opened by the redirect after a change, and the agents'
            # answers may come before its socket joined: render once right away
            await self.live_changed({"type": groups.CHANGED})

    def render(self) -> str:
        return controls.controls(self.app_pk, self.scope["user"], oob=True)


class SessionsLive(LiveConsumer):
    """An app's sessions page, with its filters and sort."""

    def resolve(self) -> bool:
        from ..models import App

        self.app_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.app_sessions(self.app_pk)
        self.filters = sessions.SessionFilters.from_query(_query(self.scope))
        return App.objects.filter(pk=self.app_pk).exists()

    def render(self) -> str:
        return sessions.sessions(self.app_pk, self.filters, oob=True)


class SessionLive(LiveConsumer):
    """A session page. While it is open and the session is live, it asks the agent
    for a snapshot (of the page's filter and page of objects) every SNAPSHOT_SECONDS;
    the reply, once stored, re-renders the page through the session's group."""

    _asker: asyncio.Task | None = None

    def resolve(self) -> bool:
        from ..models import TrackedSession

        self.session_pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = groups.session(self.session_pk)
        self.query = _query(self.scope)
        self.args = control.snapshot_args(self.query)
        session = (TrackedSession.objects.filter(pk=self.session_pk)
                   .values_list("process__app_id", flat=True).first())
        if session is None:
            return False
        self.also = (groups.app_controls(session),)  # its quick toggles
        return True

    async def connect(self) -> None:
        await super().connect()
        if getattr(self, "joined", False):
            self._asker = asyncio.create_task(self._ask())

    async def disconnect(self, code: int) -> None:
        if self._asker is not None:
            self._asker.cancel()
        await super().disconnect(code)

    async def _ask(self) -> None:
        while True:
            try:
                request = await database_sync_to_async(control.snapshot_request)(
                    self.session_pk, self.args)
                if request is not None:
                    process_pk, message = request
                    await self.channel_layer.group_send(groups.process(process_pk), message)
            except Exception:  # a failed round: the next one asks again
                log.exception("snapshot request for session %s failed", self.session_pk)
            await asyncio.sleep(conf.get("SNAPSHOT_SECONDS"))

    def render(self) -> str:
        from ..models import TrackedSession

        html = sessions.session(self.session_pk, self.query, oob=True)
        session = (TrackedSession.objects.select_related("process")
                   .filter(pk=self.session_pk).first())
        if session is not None and session.live:
            query = self.query.urlencode()
            html += controls.quick_html(
                session.process.app_id, self.scope["user"], "session", session.key,
                session.process, f"/sessions/{session.pk}/" + (f"?{query}" if query else ""))
        return html
