"""The websocket connection to the dashboard, used only by the worker thread."""

from __future__ import annotations

import random
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from . import __version__
from .protocol import MAX_FRAME_BYTES


class TransportError(Exception):
    """The dashboard could not be reached or closed the connection.

    ``code``/``reason`` carry the close code and reason the dashboard sent, if any.
    """

    def __init__(self, message: str, code: int | None = None, reason: str = "",
                 pending: list[bytes | str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        #: messages received just before the close (they may explain it)
        self.pending = pending or []


class Transport:
    """One websocket connection at a time, with its own reconnect schedule."""

    def __init__(self, url: str, token: str | None, *, open_timeout: float = 3.0,
                 backoff_initial: float = 0.5, backoff_max: float = 15.0) -> None:
        self.url = url
        self.token = token
        self.open_timeout = open_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.failures = 0
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: capped exponential, full jitter."""
        ceiling = min(self.backoff_max, self.backoff_initial * (2 ** min(self.failures, 16)))
        return random.uniform(self.backoff_initial / 2, ceiling)

    def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._ws = connect(
                self.url,
                additional_headers=headers,
                user_agent_header=f"retort-tracker/{__version__}",
                open_timeout=self.open_timeout,
                close_timeout=1.0,
                max_size=MAX_FRAME_BYTES,
                compression=None,
            )
            # Entering the connection is how websockets >= 17 is told we manage its
            # lifetime ourselves (close() below); older versions just return it.
            self._ws.__enter__()
        except InvalidStatus as exc:
            self.failures += 1
            raise TransportError(
                f"dashboard refused the websocket handshake (HTTP "
                f"{exc.response.status_code})") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.failures += 1
            raise TransportError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        self.failures = 0

    def send(self, frame: bytes) -> None:
        ws = self._require()
        try:
            ws.send(frame)
        except ConnectionClosed as exc:
            # send() sees the close as soon as websockets' reader thread has parsed it,
            # possibly before that thread has queued the messages that came just before
            # it (the dashboard's "error" frame with the reason): wait for them
            self._closed(exc, self._drain(ws, wait=1.0)[0])

    def receive(self) -> list[bytes | str]:
        """Every message already waiting, without blocking."""
        messages, closed = self._drain(self._require())
        if closed is not None:
            self._closed(closed, messages)
        return messages

    @staticmethod
    def _drain(ws: ClientConnection, wait: float = 0.0
               ) -> tuple[list[Any], ConnectionClosed | None]:
        """Messages already received; ``wait`` > 0 when the connection is known to be
        closing, so that recv() ends with ConnectionClosed once the reader is done."""
        messages: list[Any] = []
        try:
            while True:
                messages.append(ws.recv(timeout=wait))
        except TimeoutError:
            return messages, None
        except ConnectionClosed as exc:
            return messages, exc

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def abandon(self) -> None:
        """Forget the connection without touching it (in a forked child, the socket
        belongs to the parent: a close frame from here would break its stream)."""
        self._ws = None

    def _require(self) -> ClientConnection:
        if self._ws is None:
            raise TransportError("not connected")
        return self._ws

    def _closed(self, exc: ConnectionClosed, pending: list[bytes | str]) -> None:
        self._ws = None
        self.failures += 1
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else None
        reason = rcvd.reason if rcvd is not None else ""
        raise TransportError(f"dashboard closed the connection ({code}: {reason})",
                             code, reason, pending) from None
