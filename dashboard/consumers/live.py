"""``/ws/live/…``: a browser page's live socket.

It joins the groups of what the page shows; on every "changed" notice it re-renders
the page's live fragments (with ``hx-swap-oob``) — coalesced, so a busy app updates an
open page at most LIVE_UPDATES_PER_SECOND times a second, whatever its event rate.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from tracker import protocol

from .. import conf, groups
from ..live import fragments


class LiveConsumer(AsyncWebsocketConsumer):
    """Base: subclasses name their group and how to render their fragments."""

    group: str = ""
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
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        await self.accept()

    async def refuse(self, code: int, reason: str) -> None:
        # accept first so that the browser sees the close code, not a failed handshake
        await self.accept()
        await self.close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(self.group, self.channel_name)
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
        return Engine.objects.filter(pk=self.engine_pk).exists()

    def render(self) -> str:
        return fragments.engine(self.engine_pk, oob=True)
