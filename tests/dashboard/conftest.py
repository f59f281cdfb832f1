"""Frame builders, socket helpers and fixtures for the dashboard's tests.

The builders produce messages that ``tracker.protocol.decode`` accepts (checked by
``test_builders_produce_valid_frames``); tests override single fields to break them.
"""

from __future__ import annotations

import asyncio
import copy
import time
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


def state_msg(*engines: dict[str, Any], ts: float = STATE_TS,
              sessions: list[dict[str, Any]] | None = None,
              omitted: int | None = None) -> dict[str, Any]:
    message = {
        "t": "state",
        "ts": ts,
        "engines": list(engines) if engines else [engine_state()],
        "agent": {"queue": 4, "queue_max": 100_000,
                  "drops": {"queue_full": 2, "disconnected": 5}, "errors": 1,
                  "reconnects": 0},
    }
    if sessions is not None:
        message["sessions"] = sessions
    if omitted is not None:
        message["sessions_omitted"] = omitted
    return message


# -- ORM sessions -------------------------------------------------------------------

# s1 was created 30 s before the state frame, began its transaction 20 s before it
# and did nothing for the last 8 s: idle in transaction (the default flags 5 s)
SESSION_CREATED = STATE_TS - 30.0           # 00:01:10.000
TXN_SINCE = STATE_TS - 20.0                 # 00:01:20.000
LAST_ACTIVITY = STATE_TS - 8.0              # 00:01:32.000
SESSION_LOCATION = "shop/orders.py:88 in checkout"
SESSION_STACK = [SESSION_LOCATION, "shop/views.py:12 in post"]


def session_summary(sid: str = "s1", **overrides: Any) -> dict[str, Any]:
    """A SESSION summary: s1 in a transaction on e1, holding its connection."""
    return {
        "id": sid, "kind": "Session", "async": False, "created": SESSION_CREATED,
        "thread": "worker-1", "thread_id": 140_000_001, "task": None,
        "engines": ["e1"], "state": "transaction", "txn_since": TXN_SINCE,
        "last_activity": LAST_ACTIVITY, "autoflush": True, "expire_on_commit": True,
        "objects": 4, "by_class": {"Customer": 3, "Order": 1},
        "new": 1, "dirty": 1, "deleted": 1, "connections": ["e1"],
        "statements": 7, "flushes": 1, "commits": 0, "rollbacks": 0,
        "location": SESSION_LOCATION, "stack": list(SESSION_STACK),
        "lifecycle": [[TXN_SINCE, "begin", ""], [STATE_TS - 15.0, "flush", ""]],
        **overrides,
    }


def ended_summary(sid: str = "s1", *, ended: float = STATE_TS - 1.0,
                  end: str = "closed", **overrides: Any) -> dict[str, Any]:
    """The summary an agent sends once more when a session ended."""
    return session_summary(sid, state="closed", txn_since=None, connections=[],
                           objects=0, by_class={}, new=0, dirty=0, deleted=0,
                           location=None, stack=None, ended=ended, end=end,
                           lifecycle=[[TXN_SINCE, "begin", ""], [ended, end, ""]],
                           **overrides)


#: what s1 tracks (the scenario: two attributes modified, one object added, one
#: deleted, a collection changed, a many-to-one reference changed)
ENTITIES: list[dict[str, Any]] = [
    {"class": "Customer", "identity": "", "state": "pending", "modified": True,
     "expired": []},
    {"class": "Customer", "identity": "2", "state": "deleted", "modified": False,
     "expired": []},
    {"class": "Customer", "identity": "1", "state": "persistent", "modified": True,
     "expired": ["email_verified_at"]},
    {"class": "Order", "identity": "1", "state": "persistent", "modified": True,
     "expired": []},
]
CHANGES: list[dict[str, Any]] = [
    {"op": "insert", "class": "Customer", "identity": "",
     "values": {"name": "'Dana'", "email": "'dana@example.com'", "password_hash": "••••••"}},
    {"op": "update", "class": "Customer", "identity": "1",
     "attributes": {"name": ["'Ann'", "'Annie'"],
                    "email": ["'ann@example.com'", "'annie@example.com'"]},
     "collections": {"orders": {"added": ["Order (new)"], "removed": ["Order#1"]}}},
    {"op": "update", "class": "Order", "identity": "1",
     "references": {"customer": ["Customer#1", "None"]}},
    {"op": "delete", "class": "Customer", "identity": "2"},
]
SNAPSHOT_TS = STATE_TS + 0.25


def snapshot_msg(request: str, session: str = "s1", **overrides: Any) -> dict[str, Any]:
    return {"t": "snapshot", "request": request, "session": session, "ts": SNAPSHOT_TS,
            "found": True, "partial": False, "total": len(ENTITIES), "offset": 0,
            "entities": copy.deepcopy(ENTITIES), "changes": copy.deepcopy(CHANGES),
            "changes_total": len(CHANGES), **overrides}


FINDING_MESSAGE = ("session s1 was closed with unflushed changes (1 new): they were "
                   "never written to the database")


def finding_event(session: str = "s1", engine: str = "e1", *, ts: float = STATE_TS,
                  rule: str = "lost-changes-on-close", **evidence: Any) -> list:
    return ["finding", ts, engine, rule, "error", session, "worker-1", SESSION_LOCATION,
            FINDING_MESSAGE, {"new": 1, "modified": 0, "deleted": 0,
                              "objects": ["Customer (new)"], "stack": list(SESSION_STACK),
                              **evidence}]


# -- statements ---------------------------------------------------------------------

STATEMENT_SQL = "SELECT customer.id, customer.name FROM customer WHERE customer.id = ?"
STATEMENT_LOCATION = "shop/customers.py:17 in find_customer"


def statement_stats(fp: str = "a1b2c3d4e5f6", **overrides: Any) -> dict[str, Any]:
    """A STATEMENT_STATS entry: 10 runs of a SELECT by primary key, 9 within 5 ms and
    one of 0.2 s (so p95 falls in the 0.5 s bucket: the largest seen, 0.2 s)."""
    buckets = [0] * protocol.HIST_BUCKETS
    buckets[3] = 9   # ≤ 5 ms
    buckets[7] = 1   # ≤ 0.5 s
    return {"fp": fp, "sql": STATEMENT_SQL, "op": "select", "table": "customer",
            "count": 10, "errors": 1, "total": 0.236, "max": 0.2, "rows": 10,
            "buckets": buckets, "location": STATEMENT_LOCATION,
            "stack": [STATEMENT_LOCATION, "shop/views.py:30 in show"], **overrides}


def engine_state_with(*stats: dict[str, Any], engine_id: str = "e1") -> dict[str, Any]:
    """An engine's state carrying statement statistics."""
    return {**engine_state(engine_id), "statements": list(stats)}


def slow_statement(engine_id: str = "e1", *, ts: float = STATE_TS, seconds: float = 1.25,
                   fp: str = "a1b2c3d4e5f6", params: Any = None) -> list:
    return ["slow_statement", ts, engine_id, fp, STATEMENT_SQL, seconds, 1, "s1",
            "worker-1", STATEMENT_LOCATION, [STATEMENT_LOCATION, "shop/views.py:30 in show"],
            params]


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


async def hello_and_controls(communicator: WebsocketCommunicator,
                             hello: dict[str, Any] | None = None,
                             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send a hello; return the decoded welcome and the control frames that follow
    it (the toggles that concern the process, then the ``sync``, always last)."""
    await communicator.send_to(bytes_data=frame(hello or hello_msg()))
    reply = await communicator.receive_from()
    assert isinstance(reply, bytes)
    welcome = protocol.decode(reply, allowed=frozenset({"welcome"}))
    controls: list[dict[str, Any]] = []
    while not controls or controls[-1]["action"] != "sync":
        reply = await communicator.receive_from()
        assert isinstance(reply, bytes)
        controls.append(protocol.decode(reply, allowed=frozenset({"control"})))
    return welcome, controls


async def say_hello(communicator: WebsocketCommunicator,
                    hello: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send a hello; return the decoded welcome (the controls after it are read and
    left out: ``hello_and_controls`` returns them)."""
    welcome, _ = await hello_and_controls(communicator, hello)
    return welcome


async def send_and_settle(communicator: WebsocketCommunicator,
                          message: dict[str, Any]) -> None:
    """Send a frame the dashboard answers with silence, and wait until it is handled."""
    await communicator.send_to(bytes_data=frame(message))
    assert await communicator.receive_nothing(timeout=0.3) is True


async def group_send(messages) -> None:
    """Send (group, message) pairs on the channel layer, as the dashboard's views do."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    for group, message in messages:
        await layer.group_send(group, message)


async def next_control(agent: WebsocketCommunicator) -> dict[str, Any]:
    """The next frame the agent socket gets, decoded as a ``control``."""
    return protocol.decode(await agent.receive_from(timeout=2),
                           allowed=frozenset({"control"}))


@sync_to_async
def process_of(pk: int):
    """The stored Process ``pk``, fresh from the database."""
    from dashboard.models import Process

    return Process.objects.get(pk=pk)


# -- browser sockets ----------------------------------------------------------------

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def session_cookie(django_user_model):
    """A logged-in user's session cookie header."""
    from django.test import Client

    user = django_user_model.objects.create_user("alice")  # no password: no slow hashing
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def live(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    """A browser page's live socket (not connected yet)."""
    return WebsocketCommunicator(_application(), path, headers=list(headers))


# channel names in each group, as the consumers joined and left them (recorded by
# the fixture below: works with the in-memory and the Redis layer alike)
_members: dict[str, set[str]] = {}


@pytest.fixture
def record_membership(monkeypatch):
    """Record who joins and leaves which group, for ``members`` and ``join``."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group_add, group_discard = layer.group_add, layer.group_discard
    _members.clear()

    async def add(group: str, channel: str) -> None:
        await group_add(group, channel)
        _members.setdefault(group, set()).add(channel)

    async def discard(group: str, channel: str) -> None:
        await group_discard(group, channel)
        _members.get(group, set()).discard(channel)

    monkeypatch.setattr(layer, "group_add", add)
    monkeypatch.setattr(layer, "group_discard", discard)
    yield
    _members.clear()


def members(group: str) -> int:
    return len(_members.get(group, ()))


async def join(communicator: WebsocketCommunicator, group: str) -> None:
    """Open a live socket and wait until its consumer joined ``group``.

    The consumer accepts the handshake before it checks the login and joins its
    group, so a notice sent right after the handshake would be lost (see
    ``test_a_notice_right_after_the_handshake_is_not_lost``)."""
    before = members(group)
    assert await communicator.connect() == (True, None)
    deadline = time.monotonic() + 2
    while members(group) <= before:
        assert time.monotonic() < deadline, f"the socket never joined {group}"
        await asyncio.sleep(0.01)


async def notify(group: str, times: int = 1) -> None:
    from channels.layers import get_channel_layer

    from dashboard import groups

    layer = get_channel_layer()
    for _ in range(times):
        await layer.group_send(group, {"type": groups.CHANGED})


async def drain(communicator: WebsocketCommunicator) -> list[str]:
    """Every frame already queued (without waiting for more)."""
    frames = []
    while not await communicator.receive_nothing(timeout=0.01):
        frames.append(await communicator.receive_from())
    return frames


# -- database views -----------------------------------------------------------------

def counts() -> dict[str, int]:
    from dashboard.models import Engine, PoolEvent, PoolSample, Process

    return {"processes": Process.objects.count(), "engines": Engine.objects.count(),
            "samples": PoolSample.objects.count(), "events": PoolEvent.objects.count()}


def rows() -> dict[str, list[dict[str, Any]]]:
    """Every stored row of the ingest tables, to prove a refusal changed nothing."""
    from dashboard.models import (Advice, AuditLog, Engine, Finding, PoolEvent, PoolSample,
                                  Process, SessionSnapshot, SlowStatement, StatementStat,
                                  TrackedSession)

    return {
        "processes": list(Process.objects.order_by("pk").values()),
        "engines": list(Engine.objects.order_by("pk").values()),
        "samples": list(PoolSample.objects.order_by("pk").values()),
        "events": list(PoolEvent.objects.order_by("pk").values()),
        "sessions": list(TrackedSession.objects.order_by("pk").values()),
        "session_engines": list(TrackedSession.engines.through.objects.order_by("pk").values()),
        "snapshots": list(SessionSnapshot.objects.order_by("pk").values()),
        "findings": list(Finding.objects.order_by("pk").values()),
        "advice": list(Advice.objects.order_by("pk").values()),
        "statements": list(StatementStat.objects.order_by("pk").values()),
        "slow_statements": list(SlowStatement.objects.order_by("pk").values()),
        "audit": list(AuditLog.objects.order_by("pk").values()),
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


# our clock in tests that freeze it: half a second after the agent built its state
# frame, so ages on the agent's clock come out exact (clock_offset = 0.5 s)
NOW = datetime(2026, 1, 1, 0, 1, 40, 500_000, tzinfo=dt_timezone.utc)


@pytest.fixture
def frozen(monkeypatch):
    """Freeze ``django.utils.timezone.now`` at NOW."""
    from django.utils import timezone

    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return NOW


@pytest.fixture
def tracked(shop):
    """A connected process of "shop" whose state frame reported session s1 (idle in
    a transaction on e1): ``.process``, ``.engine``, ``.session``, ``.ingest``."""
    from dashboard import ingest
    from dashboard.models import Engine, TrackedSession

    process = ingest.register_process(shop.token, protocol.decode(frame(hello_msg())))
    state = ingest.StateIngest(process.pk)
    state.store(protocol.decode(frame(state_msg(sessions=[session_summary()]))))
    return SimpleNamespace(
        app=shop.app, token=shop.token, raw=shop.raw, ingest=state,
        process=type(process).objects.get(pk=process.pk),
        engine=Engine.objects.get(process=process, key="e1"),
        session=TrackedSession.objects.select_related("process").get(process=process,
                                                                     key="s1"))


@pytest.fixture
def alice(django_user_model):
    """A fresh user "alice" (no group, no permission)."""
    return django_user_model.objects.create_user("alice")


@pytest.fixture
def logged_in(client, alice):
    """The test client, logged in as alice."""
    client.force_login(alice)
    return client


@pytest.fixture
def view(frozen, tracked, logged_in):
    """GET a page as a logged-in user (clock frozen, session s1 stored); its HTML."""
    def get(url: str) -> str:
        response = logged_in.get(url)
        assert response.status_code == 200
        return response.content.decode()
    return get



@pytest.fixture
def operator(django_user_model):
    """A user "olga" in the Operators group (may change toggles)."""
    from django.contrib.auth.models import Group, Permission

    # the data migration made the group; transactional tests flush it away (their
    # flush re-creates permissions, not groups), so make sure it is there
    group, _ = Group.objects.get_or_create(name="Operators")
    group.permissions.add(Permission.objects.get(codename="operate_agents"))
    user = django_user_model.objects.create_user("olga")
    user.groups.add(group)
    return user


@pytest.fixture
def as_operator(client, operator):
    """The test client, logged in as olga (an operator)."""
    client.force_login(operator)
    return client


def second_process(app, *, host: str = "web-2", pid: int = 77, connected: bool = True):
    """Another process of ``app`` (with its engine e1), connected or not."""
    from dashboard import ingest
    from dashboard.models import AgentToken

    token = AgentToken.objects.filter(app=app).first() or AgentToken.issue(app, "web")[0]
    process = ingest.register_process(
        token, protocol.decode(frame(hello_msg(app.name, host=host, pid=pid))))
    if not connected:
        ingest.mark_disconnected(process.pk)
        process.refresh_from_db()
    return process


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Every test gets its own channel layer instance. Channels caches layers for the
    process; channels-redis's layer keeps asyncio locks bound to the event loop of the
    test that first used them, so one test leaving a receive lock held made every later
    test on Redis fail with "bound to a different event loop" (seen in CI)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
