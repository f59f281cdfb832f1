"""Frame builders, socket helpers and fixtures for the dashboard's tests.

The builders produce messages that ``tracker.protocol.decode`` accepts (checked by
``test_builders_produce_valid_frames``); tests override single fields to break them.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone as dt_timezone
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from tracker import protocol

# 2026-01-01 00:00:00.5 UTC: the process start, exactly representable as a float
STARTED = 1_767_225_600.5
STARTED_AT = datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=dt_timezone.utc)
# the agent's clock when it built the state frame
STATE_TS = 1_767_225_700.0
# a checkout timeout: 2026-01-01 00:01:41.25 UTC
TIMEOUT_TS = 1_767_225_701.25
TIMEOUT_AT = datetime(2026, 1, 1, 0, 1, 41, 250_000, tzinfo=dt_timezone.utc)

HOST = "web-1"
PID = 4242
MASKED_URL = "postgresql+psycopg://shop:***@db.internal:5432/shop"
HOLDER_LOCATION = "shop/orders.py:42 in place_order"

ENGINE_INFO: dict[str, Any] = {
    "id": "e1",
    "name": "postgresql/shop",
    "dialect": "postgresql",
    "driver": "psycopg",
    "url": MASKED_URL,
    "echo": False,
    "pool": {
        "class": "QueuePool",
        "size": 5,
        "max_overflow": 10,
        "timeout": 30.0,
        "recycle": 3600,
        "pre_ping": True,
        "use_lifo": False,
        "reset_on_return": "reset_rollback",
    },
    "created": STARTED + 1,
    "disposed": 0,
}


def engine_info(**overrides: Any) -> dict[str, Any]:
    return {**copy.deepcopy(ENGINE_INFO), **overrides}


def hello_msg(app: str = "shop", *, engines: list | None = None,
              **process: Any) -> dict[str, Any]:
    return {
        "t": "hello",
        "app": app,
        "process": {
            "host": HOST,
            "pid": PID,
            "ppid": 1,
            "started": STARTED,
            "argv": ["gunicorn", "shop.wsgi"],
            "python": "3.11.7",
            "sqlalchemy": "2.1.9",
            "agent": "0.1.0",
            **process,
        },
        "engines": [engine_info()] if engines is None else engines,
        "capabilities": {"capture_parameters": False},
    }


def engine_state(engine_id: str = "e1", *, checked_out: int = 3, idle: int = 2,
                 waiting: int = 1) -> dict[str, Any]:
    buckets = [0] * protocol.HIST_BUCKETS
    buckets[2] = 7
    return {
        "id": engine_id,
        "gauges": {"checked_out": checked_out, "idle": idle, "overflow": 0, "size": 5,
                   "capacity": 15, "waiting": waiting},
        "status": f"Pool size: 5  Connections in pool: {idle} Current Overflow: -2 "
                  f"Current Checked out connections: {checked_out}",
        "counters": {"connects": 5, "checkouts": 40, "checkins": 37, "invalidations": 1,
                     "soft_invalidations": 0, "timeouts": 1, "closes": 0, "detaches": 0,
                     "statements": 120, "statement_errors": 2, "statement_time": 1.5},
        "wait": {"buckets": buckets, "sum": 0.007, "max": 0.0009},
        "hold": {"buckets": buckets, "sum": 0.21, "max": 0.05},
        "holders": [
            {"since": STATE_TS - 2.5 - index, "thread": f"worker-{index}",
             "thread_id": 140_000_000 + index, "location": HOLDER_LOCATION,
             "stack": [HOLDER_LOCATION, "shop/views.py:10 in checkout"]}
            for index in range(checked_out)
        ],
    }


def state_msg(*engines: dict[str, Any], ts: float = STATE_TS) -> dict[str, Any]:
    return {
        "t": "state",
        "ts": ts,
        "engines": list(engines) if engines else [engine_state()],
        "agent": {"queue": 4, "queue_max": 100_000,
                  "drops": {"queue_full": 2, "disconnected": 5}, "errors": 1,
                  "reconnects": 0},
    }


def checkout_timeout(engine_id: str = "e1", *, ts: float = TIMEOUT_TS,
                     waited: Any = 30.0042) -> list:
    return ["checkout_timeout", ts, engine_id, "worker-3", HOLDER_LOCATION, waited]


def events_msg(*events: list) -> dict[str, Any]:
    return {"t": "events", "events": list(events)}


def frame(message: dict[str, Any]) -> bytes:
    return protocol.encode(message)


# -- sockets ------------------------------------------------------------------------

def _application():
    from dashboard.asgi import application

    return application


def bearer(raw: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + raw.encode())


async def open_agent(raw: str | None, *extra: tuple[bytes, bytes]) -> WebsocketCommunicator:
    """An agent socket, connected (the agent consumer always accepts the handshake,
    then refuses with a close code)."""
    headers = [bearer(raw)] if raw is not None else []
    communicator = WebsocketCommunicator(_application(), "/ws/agent/",
                                         headers=[*headers, *extra])
    connected, _ = await communicator.connect()
    assert connected is True
    return communicator


async def say_hello(communicator: WebsocketCommunicator,
                    hello: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send a hello; return the decoded welcome."""
    await communicator.send_to(bytes_data=frame(hello or hello_msg()))
    reply = await communicator.receive_from()
    assert isinstance(reply, bytes)
    return protocol.decode(reply, allowed=frozenset({"welcome"}))


async def send_and_settle(communicator: WebsocketCommunicator,
                          message: dict[str, Any]) -> None:
    """Send a frame the dashboard answers with silence, and wait until it is handled."""
    await communicator.send_to(bytes_data=frame(message))
    assert await communicator.receive_nothing(timeout=0.3) is True


# -- database views -----------------------------------------------------------------

def counts() -> dict[str, int]:
    from dashboard.models import Engine, PoolEvent, PoolSample, Process

    return {"processes": Process.objects.count(), "engines": Engine.objects.count(),
            "samples": PoolSample.objects.count(), "events": PoolEvent.objects.count()}


def rows() -> dict[str, list[dict[str, Any]]]:
    """Every stored row of the ingest tables, to prove a refusal changed nothing."""
    from dashboard.models import Engine, PoolEvent, PoolSample, Process

    return {
        "processes": list(Process.objects.order_by("pk").values()),
        "engines": list(Engine.objects.order_by("pk").values()),
        "samples": list(PoolSample.objects.order_by("pk").values()),
        "events": list(PoolEvent.objects.order_by("pk").values()),
    }


acounts = sync_to_async(counts)
arows = sync_to_async(rows)


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture
def shop():
    """App "shop" and a live token for it: ``.app``, ``.token``, ``.raw``."""
    from dashboard.models import AgentToken, App

    app = App.objects.create(name="shop")
    token, raw = AgentToken.issue(app, "web")
    return SimpleNamespace(app=app, token=token, raw=raw)


@pytest.fixture
def stored(shop):
    """A process of "shop" that reported before and is gone: its engine "e1" holds a
    state with 3 connections checked out, 1 pool sample and 1 checkout timeout.
    Same process identity (host, pid, started) as ``hello_msg()``."""
    from dashboard import ingest
    from dashboard.models import Engine

    hello = protocol.decode(frame(hello_msg()))
    process = ingest.register_process(shop.token, hello)
    state = ingest.StateIngest(process.pk)
    state.store(protocol.decode(frame(state_msg())))
    state.store_events(protocol.decode(frame(events_msg(checkout_timeout()))))
    ingest.mark_disconnected(process.pk)
    engine = Engine.objects.select_related("process__app").get(process=process, key="e1")
    return SimpleNamespace(app=shop.app, token=shop.token, raw=shop.raw,
                           process=engine.process, engine=engine)
