"""``/ws/agent/``: where agents connect with their token and stream their frames.

Every frame is validated by ``tracker.protocol.decode`` before anything is stored; a
refused frame closes the socket with the protocol's close code and the reason, and
nothing from it is kept.

After its hello the connection joins its process's group (``groups.process``): pages
ask the agent for something (a session snapshot, a toggle) by sending
``groups.CONTROL`` messages there, which are forwarded as ``control`` frames. Right
after the welcome it sends the process every toggle that concerns it and a ``sync``
(``dashboard.toggles``).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from tracker import protocol

from .. import groups, ingest, session_ingest, toggles, traces, traces_store
from ..models import AgentToken

log = logging.getLogger("dashboard.agent")

# a websocket close reason may hold at most 123 bytes
_MAX_REASON = 120


def _reason(text: str) -> str:
    return text.encode()[:_MAX_REASON].decode(errors="ignore")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class AgentConsumer(AsyncWebsocketConsumer):
    """One agent connection: hello first, then state, engine, events, ack, snapshot,
    bye."""

    token: AgentToken | None = None
    process_id: int | None = None
    app_id: int | None = None
    state_ingest: ingest.StateIngest | None = None

    async def connect(self) -> None:
        # Agents are not browsers: a browser page cannot set the Authorization header,
        # and one that tries this socket is refused outright.
        await self.accept()
        if _header(self.scope, b"origin") is not None:
            await self.refuse(protocol.CLOSE_FORBIDDEN_ORIGIN,
                              "the agent socket does not accept browser connections")
            return
        authorization = _header(self.scope, b"authorization") or ""
        scheme, _, raw = authorization.partition(" ")
        token = None
        if scheme.lower() == "bearer":
            token = await database_sync_to_async(AgentToken.authenticate)(raw.strip())
        if token is None:
            await self.refuse(protocol.CLOSE_UNAUTHORIZED,
                              "invalid or revoked agent token" if raw else
                              "missing agent token (Authorization: Bearer rt_...)")
            return
        self.token = token

    async def refuse(self, code: int, reason: str) -> None:
        log.warning("agent refused (%s): %s [%s]", code, reason, self.scope.get("client"))
        self.token = None
        # daphne drops close reasons: say it in a frame first, then close with the code
        await self.send(bytes_data=protocol.encode(
            {"t": "error", "code": code, "reason": reason[:1000]}))
        await self.close(code=code, reason=_reason(reason))

    async def receive(self, text_data: str | None = None,
                      bytes_data: bytes | None = None) -> None:
        if self.token is None:
            return  # refused already; the close is on its way
        frame = bytes_data if bytes_data is not None else (text_data or "").encode()
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            await self.refuse(exc.code, exc.reason)
            return
        kind = message["t"]
        if self.process_id is None and kind != "hello":
            await self.refuse(protocol.CLOSE_PROTOCOL_ORDER, f"{kind} before hello")
            return
        if self.process_id is not None and kind == "hello":
            await self.refuse(protocol.CLOSE_PROTOCOL_ORDER, "second hello on one connection")
            return
        try:
            await getattr(self, f"on_{kind}")(message)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            # valid by the protocol but not storable: each frame is stored in one
            # transaction, so nothing of it was kept
            log.exception("could not store a %s frame from process %s", kind, self.process_id)
            await self.refuse(protocol.CLOSE_MALFORMED,
                              f"{kind} frame could not be stored: {type(exc).__name__}")

    async def on_hello(self, message: dict[str, Any]) -> None:
        if message["app"] != self.token.app.name:
            await self.refuse(protocol.CLOSE_UNAUTHORIZED,
                              f"this token belongs to app {self.token.app.name!r}, "
                              f"not {message['app']!r}")
            return
        process = await database_sync_to_async(ingest.register_process)(self.token, message)
        self.process_id = process.pk
        self.app_id = process.app_id
        self.state_ingest = ingest.StateIngest(process.pk)
        await self.channel_layer.group_add(groups.process(process.pk), self.channel_name)
        await self.send(bytes_data=protocol.encode(
            {"t": "welcome", "process": process.pk,
             "interval": float(getattr(settings, "RETORT_AGENT_INTERVAL", 0.5))}))
        # the toggles that concern it, then the sync: sent directly, so that they
        # come before any change queued on the process group meanwhile
        for control in await database_sync_to_async(toggles.on_hello)(process.pk):
            await self.send(bytes_data=protocol.encode(control))
        # findings too: the dashboard's own capacity check ran with the hello
        await self.notify(groups.OVERVIEW, groups.app_sessions(process.app_id),
                          groups.app_findings(process.app_id),
                          groups.app_controls(process.app_id))

    async def on_engine(self, message: dict[str, Any]) -> None:
        pk = await database_sync_to_async(ingest.store_engine)(self.process_id, message)
        self.state_ingest.forget_engine(message["engine"]["id"])
        await self.notify(groups.OVERVIEW, groups.engine(pk), groups.app_findings(self.app_id))

    async def on_state(self, message: dict[str, Any]) -> None:
        stored = await database_sync_to_async(self.state_ingest.store)(message)
        # the sessions page on every frame: the ages and "idle in transaction" it
        # shows move on even when no session changed
        await self.notify(groups.OVERVIEW, groups.app_sessions(self.app_id),
                          *self.pages(stored), *self.statement_pages(stored))

    async def on_events(self, message: dict[str, Any]) -> None:
        stored = await database_sync_to_async(self.state_ingest.store_events)(message)
        extra = ((groups.app_sessions(self.app_id), groups.app_findings(self.app_id),
                  groups.OVERVIEW) if stored.findings else ())
        await self.notify(*extra, *self.pages(stored), *self.statement_pages(stored))

    async def on_ack(self, message: dict[str, Any]) -> None:
        log.info("agent %s acknowledged %s: %s", self.process_id, message["id"][:200],
                 message["status"])
        kind = message["id"].partition(":")[0]
        if kind in (toggles.TOGGLE, toggles.SYNC):
            store = toggles.store_ack if kind == toggles.TOGGLE else toggles.store_sync_ack
            app_pk = await database_sync_to_async(store)(self.process_id, message)
            if app_pk is not None:
                await self.notify(groups.app_controls(app_pk))
            return
        if kind == traces.RECORD:
            app_pk = await database_sync_to_async(traces.store_ack)(self.process_id, message)
            if app_pk is not None:
                await self.notify(groups.app_traces(app_pk))
            return
        pk = await database_sync_to_async(session_ingest.store_refusal)(self.process_id,
                                                                        message)
        if pk is not None:
            await self.notify(groups.session(pk))

    async def on_trace(self, message: dict[str, Any]) -> None:
        """Lines of a recording: appended to its trace's file (``traces_store``); a
        record the format does not allow refuses the frame, nothing of it stored."""
        stored = await database_sync_to_async(traces_store.store_frame)(self.process_id,
                                                                        message)
        if stored.refusal:
            await self.refuse(protocol.CLOSE_MALFORMED, stored.refusal)
            return
        for _, control in stored.stop:  # over its size limit: ask the agent to stop
            await self.agent_control(control)
        if stored.app_pk is None:
            log.info("agent %s sent lines of trace %s, which is not recording here; "
                     "ignored", self.process_id, message["trace"][:100])
            return
        await self.notify(groups.app_traces(stored.app_pk))

    async def on_snapshot(self, message: dict[str, Any]) -> None:
        pk = await database_sync_to_async(session_ingest.store_snapshot)(self.process_id,
                                                                         message)
        if pk is not None:
            await self.notify(groups.session(pk), groups.app_sessions(self.app_id))

    async def agent_control(self, message: dict[str, Any]) -> None:
        """A page asks this connection's agent for something: send it a control frame."""
        if self.process_id is None:
            return  # refused, or gone: nobody to ask
        await self.send(bytes_data=protocol.encode(
            {"t": "control", "id": message["id"], "action": message["action"],
             "args": message.get("args") or {}}))

    async def on_bye(self, message: dict[str, Any]) -> None:
        await self._disconnected()

    async def disconnect(self, code: int) -> None:
        await self._disconnected()

    async def _disconnected(self) -> None:
        if self.process_id is not None:
            process_id, self.process_id = self.process_id, None
            self.token = None
            await self.channel_layer.group_discard(groups.process(process_id),
                                                   self.channel_name)
            stored = await database_sync_to_async(ingest.mark_disconnected)(process_id)
            # open engine and session pages show their process's status too
            await self.notify(groups.OVERVIEW, groups.app_sessions(self.app_id),
                              groups.app_controls(self.app_id), *self.pages(stored))

    @staticmethod
    def pages(stored: ingest.Stored) -> list[str]:
        """The groups of the pages showing what a frame changed."""
        return ([groups.engine(pk) for pk in stored.engines]
                + [groups.session(pk) for pk in stored.sessions])

    def statement_pages(self, stored: ingest.Stored) -> list[str]:
        return [groups.app_statements(self.app_id)] if stored.statements else []

    async def notify(self, *names: str) -> None:
        for name in names:
            await self.channel_layer.group_send(name, {"type": groups.CHANGED})
