"""``/ws/agent/``: what an agent's frames store, and every refusal (exact close code,
nothing stored)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from dashboard.models import AgentToken, App, Engine, PoolEvent, PoolSample, Process
from tracker import protocol

from .conftest import (
    HOLDER_LOCATION, HOST, MASKED_URL, PID, STARTED_AT, STATE_TS, TIMEOUT_AT, acounts,
    arows, checkout_timeout, engine_info, engine_state, events_msg, frame, hello_msg,
    open_agent, say_hello, send_and_settle, state_msg,
)

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def get_process(**lookup) -> Process:
    return Process.objects.get(**lookup)


@sync_to_async
def get_engine(**lookup) -> Engine:
    return Engine.objects.get(**lookup)


@sync_to_async
def samples_of(engine_pk: int) -> list[dict]:
    return list(PoolSample.objects.filter(engine_id=engine_pk).order_by("pk").values(
        "checked_out", "idle", "overflow", "capacity", "waiting"))


def close_reason(reason: str) -> str:
    """A reason as it fits in a close frame (at most 123 bytes; the dashboard cuts
    at 120)."""
    return reason.encode()[:120].decode(errors="ignore")


async def refusal(communicator) -> tuple[int, str]:
    """A refusal: an ``error`` frame with the code and the whole reason (daphne does
    not pass close reasons on), then the close with the same code and reason."""
    reply = await communicator.receive_from()
    assert isinstance(reply, bytes)
    error = protocol.decode(reply, allowed=frozenset({"error"}))
    assert set(error) == {"v", "t", "code", "reason"}
    assert await communicator.receive_output() == {
        "type": "websocket.close", "code": error["code"],
        "reason": close_reason(error["reason"])}
    return error["code"], error["reason"]


async def expect_close(communicator, code: int, reason: str) -> None:
    assert await refusal(communicator) == (code, reason)


def test_builders_produce_valid_frames():
    """The conftest's frames are valid protocol: refusals below break exactly one thing."""
    for message in (hello_msg(), state_msg(), events_msg(checkout_timeout()),
                    {"t": "engine", "engine": engine_info(id="e2")}, {"t": "bye"}):
        assert protocol.decode(frame(message))["t"] == message["t"]


# -- accepted frames ----------------------------------------------------------------

async def test_hello_is_welcomed_and_stores_process_and_engines(shop, settings):
    settings.RETORT_AGENT_INTERVAL = 0.25
    communicator = await open_agent(shop.raw)
    welcome = await say_hello(communicator)

    process = await get_process()
    assert welcome == {"v": 1, "t": "welcome", "process": process.pk, "interval": 0.25}
    assert process.app_id == shop.app.pk
    assert (process.host, process.pid, process.ppid) == (HOST, PID, 1)
    assert process.started_at == STARTED_AT
    assert process.argv == ["gunicorn", "shop.wsgi"]
    assert (process.python_version, process.sqlalchemy_version, process.agent_version) == (
        "3.11.7", "2.1.9", "0.1.0")
    assert process.connected is True
    assert process.disconnected_at is None
    assert process.connections == 1

    engine = await get_engine()
    assert engine.process_id == process.pk
    assert (engine.key, engine.name, engine.dialect, engine.driver) == (
        "e1", "postgresql/shop", "postgresql", "psycopg")
    assert engine.url == MASKED_URL
    assert engine.echo is False
    assert engine.pool == {"class": "QueuePool", "size": 5, "max_overflow": 10,
                           "timeout": 30.0, "recycle": 3600, "pre_ping": True,
                           "use_lifo": False, "reset_on_return": "reset_rollback"}
    assert engine.disposed == 0
    assert engine.state == {}
    assert engine.state_at is None
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
    await communicator.disconnect()


async def test_welcome_interval_defaults_to_half_a_second(shop):
    communicator = await open_agent(shop.raw)
    welcome = await say_hello(communicator)
    assert welcome["interval"] == 0.5
    await communicator.disconnect()


async def test_state_stores_gauges_holders_and_one_sample(shop, settings):
    settings.RETORT = {"POOL_SAMPLE_SECONDS": 3600}
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    before = timezone.now()
    await send_and_settle(communicator, state_msg())

    engine = await get_engine()
    assert engine.state == {**engine_state(), "ts": STATE_TS}
    assert engine.state["gauges"] == {"checked_out": 3, "idle": 2, "overflow": 0,
                                      "size": 5, "capacity": 15, "waiting": 1}
    assert [h["location"] for h in engine.state["holders"]] == [HOLDER_LOCATION] * 3
    assert [h["thread"] for h in engine.state["holders"]] == [
        "worker-0", "worker-1", "worker-2"]
    assert before <= engine.state_at <= timezone.now()
    assert await samples_of(engine.pk) == [
        {"checked_out": 3, "idle": 2, "overflow": 0, "capacity": 15, "waiting": 1}]

    process = await get_process()
    assert process.drops == {"queue_full": 2, "disconnected": 5}
    assert process.events_dropped == 7
    assert process.agent_errors == 1
    assert process.queue == 4

    # a second state within POOL_SAMPLE_SECONDS replaces the state, adds no sample
    await send_and_settle(communicator, state_msg(engine_state(checked_out=1, idle=4,
                                                               waiting=0)))
    engine = await get_engine()
    assert engine.state["gauges"]["checked_out"] == 1
    assert len(engine.state["holders"]) == 1
    assert await samples_of(engine.pk) == [
        {"checked_out": 3, "idle": 2, "overflow": 0, "capacity": 15, "waiting": 1}]
    await communicator.disconnect()


async def test_state_samples_again_once_the_sample_interval_passed(shop, settings):
    settings.RETORT = {"POOL_SAMPLE_SECONDS": 0}
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, state_msg())
    await send_and_settle(communicator, state_msg(engine_state(checked_out=1, idle=4,
                                                               waiting=0)))
    engine = await get_engine()
    assert await samples_of(engine.pk) == [
        {"checked_out": 3, "idle": 2, "overflow": 0, "capacity": 15, "waiting": 1},
        {"checked_out": 1, "idle": 4, "overflow": 0, "capacity": 15, "waiting": 0},
    ]
    await communicator.disconnect()


async def test_state_of_an_unannounced_engine_is_skipped(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, state_msg(engine_state("e9")))
    engine = await get_engine()
    assert engine.state == {}
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
    await communicator.disconnect()


async def test_engine_frame_adds_an_engine_whose_state_is_then_stored(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, {"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/cache", dialect="sqlite", driver="pysqlite",
        url="sqlite:///cache.db", pool={"class": "SingletonThreadPool", "recycle": -1,
                                        "pre_ping": False})})
    await send_and_settle(communicator, state_msg(engine_state("e2", checked_out=1)))
    e2 = await get_engine(key="e2")
    assert (e2.name, e2.dialect, e2.driver, e2.url) == (
        "sqlite/cache", "sqlite", "pysqlite", "sqlite:///cache.db")
    assert e2.pool == {"class": "SingletonThreadPool", "recycle": -1, "pre_ping": False}
    assert e2.state["gauges"]["checked_out"] == 1
    assert (await get_engine(key="e1")).state == {}
    assert await acounts() == {"processes": 1, "engines": 2, "samples": 1, "events": 0}
    await communicator.disconnect()


async def test_an_announcement_of_a_gone_engine_keeps_its_configuration(shop):
    # re-announced (renamed, a new pool) after the engine or its pool was collected:
    # the agent knows the name only; what the first announcement said stays
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    first = engine_info(id="e2", name="pool StaticPool", dialect="sqlite", driver="pysqlite",
                        url="sqlite://", pool={"class": "StaticPool", "recycle": -1,
                                               "pre_ping": False})
    await send_and_settle(communicator, {"t": "engine", "engine": first})
    await send_and_settle(communicator, {"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/:memory:", dialect="", driver="", url="", echo=False,
        pool={"class": "", "recycle": -1, "pre_ping": False}, disposed=1)})
    e2 = await get_engine(key="e2")
    assert (e2.name, e2.dialect, e2.driver, e2.url, e2.pool, e2.disposed) == (
        "sqlite/:memory:", "sqlite", "pysqlite", "sqlite://",
        {"class": "StaticPool", "recycle": -1, "pre_ping": False}, 1)
    await communicator.disconnect()


async def test_events_store_a_checkout_timeout(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, events_msg(
        checkout_timeout(),
        checkout_timeout("e9"),  # an engine this process never announced: skipped
    ))
    engine = await get_engine()
    events = await sync_to_async(lambda: list(PoolEvent.objects.values(
        "engine_id", "at", "kind", "thread", "location", "detail")))()
    assert events == [{"engine_id": engine.pk, "at": TIMEOUT_AT, "kind": "checkout_timeout",
                       "thread": "worker-3", "location": HOLDER_LOCATION,
                       "detail": "waited 30.004 s"}]
    await communicator.disconnect()


async def test_events_store_invalidations_and_disposes(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, events_msg(
        ["invalidate", STATE_TS, "e1", "worker-1", "shop/db.py:7 in run",
         "server closed the connection unexpectedly"],
        ["dispose", STATE_TS + 1, "e1"],
    ))
    events = await sync_to_async(lambda: list(PoolEvent.objects.order_by("at").values_list(
        "kind", "thread", "location", "detail")))()
    assert events == [
        ("invalidate", "worker-1", "shop/db.py:7 in run",
         "server closed the connection unexpectedly"),
        ("dispose", "", "", ""),
    ]
    await communicator.disconnect()


async def test_events_keep_only_the_newest_per_engine(shop, settings):
    settings.RETORT = {"EVENTS_PER_ENGINE": 2}
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, events_msg(
        *(checkout_timeout(ts=STATE_TS + n, waited=float(n)) for n in range(5))))
    details = await sync_to_async(lambda: list(
        PoolEvent.objects.order_by("-at").values_list("detail", flat=True)))()
    assert details == ["waited 4.000 s", "waited 3.000 s"]
    await communicator.disconnect()


async def test_ack_is_logged_not_answered(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, {"t": "ack", "id": "c1", "status": "applied"})
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
    await communicator.disconnect()


async def test_bye_marks_the_process_disconnected(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    before = timezone.now()
    await send_and_settle(communicator, {"t": "bye"})
    process = await get_process()
    assert process.connected is False
    assert before <= process.disconnected_at <= timezone.now()
    assert process.last_seen == process.disconnected_at
    await communicator.disconnect()
    assert (await get_process()).disconnected_at == process.disconnected_at


async def test_socket_close_marks_the_process_disconnected(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    assert (await get_process()).connected is True
    await communicator.disconnect()
    process = await get_process()
    assert process.connected is False
    assert process.disconnected_at is not None


async def test_reconnect_with_same_identity_revives_the_same_process(shop):
    first = await open_agent(shop.raw)
    welcome1 = await say_hello(first)
    await send_and_settle(first, {"t": "bye"})
    await first.disconnect()

    second = await open_agent(shop.raw)
    welcome2 = await say_hello(second)
    assert welcome2["process"] == welcome1["process"]
    process = await get_process()
    assert process.pk == welcome1["process"]
    assert process.connections == 2
    assert process.connected is True
    assert process.disconnected_at is None
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
    await second.disconnect()


async def test_restarted_process_is_a_new_process(shop):
    first = await open_agent(shop.raw)
    welcome1 = await say_hello(first)
    await first.disconnect()
    second = await open_agent(shop.raw)
    welcome2 = await say_hello(second, hello_msg(started=STARTED_AT.timestamp() + 60))
    assert welcome2["process"] != welcome1["process"]
    assert await acounts() == {"processes": 2, "engines": 2, "samples": 0, "events": 0}
    await second.disconnect()


async def test_real_agent_frames_are_accepted(shop, agent):
    """Frames built by the real agent (tracker) for a real engine are stored."""
    import sqlalchemy

    await sync_to_async(App.objects.filter(pk=shop.app.pk).update)(name="tests")
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect():
        # the snapshot's round finds the engine (it has run no statement yet)
        state = agent.snapshot()
        hello = agent.hello()
    communicator = await open_agent(shop.raw)
    welcome = await say_hello(communicator, hello)
    await send_and_settle(communicator, state)
    info = next(e for e in hello["engines"] if e["url"] == "sqlite://")
    stored = await get_engine(key=info["id"])
    assert stored.name == info["name"]
    assert stored.state["gauges"]["checked_out"] == 1
    assert len(stored.state["holders"]) == 1
    assert (await get_process()).pk == welcome["process"]
    await communicator.disconnect()
    engine.dispose()


# -- refusals -----------------------------------------------------------------------

async def test_missing_authorization_is_refused_4001(stored):
    before = await arows()
    communicator = await open_agent(None)
    await expect_close(communicator, 4001,
                       "missing agent token (Authorization: Bearer rt_...)")
    await communicator.send_to(bytes_data=frame(hello_msg()))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 1, "events": 1}


@pytest.mark.parametrize("authorization", [
    b"Bearer rt_unknownunknownunknownunknownunknownunkno",
    b"Basic dXNlcjpwYXNz",
])
async def test_unknown_token_is_refused_4001(stored, authorization):
    before = await arows()
    communicator = await open_agent(None, (b"authorization", authorization))
    await expect_close(communicator, 4001, "invalid or revoked agent token")
    await communicator.send_to(bytes_data=frame(hello_msg()))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before


async def test_raw_token_without_bearer_scheme_is_refused_4001(stored):
    before = await arows()
    communicator = await open_agent(None, (b"authorization", stored.raw.encode()))
    await expect_close(communicator, 4001,
                       "missing agent token (Authorization: Bearer rt_...)")
    await communicator.disconnect()
    assert await arows() == before


async def test_revoked_token_is_refused_4001(stored):
    await sync_to_async(AgentToken.objects.filter(pk=stored.token.pk).update)(
        revoked_at=timezone.now() - timedelta(seconds=1))
    before = await arows()
    communicator = await open_agent(stored.raw)
    await expect_close(communicator, 4001, "invalid or revoked agent token")
    await communicator.send_to(bytes_data=frame(hello_msg()))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 1, "events": 1}


async def test_hello_for_another_app_is_refused_4001(stored):
    await sync_to_async(App.objects.create)(name="billing")
    before = await arows()
    communicator = await open_agent(stored.raw)
    await communicator.send_to(bytes_data=frame(hello_msg("billing")))
    await expect_close(communicator, 4001,
                       "this token belongs to app 'shop', not 'billing'")
    await communicator.send_to(bytes_data=frame(state_msg(engine_state(checked_out=0))))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 1, "events": 1}


async def test_origin_header_is_refused_4006(stored):
    before = await arows()
    communicator = await open_agent(stored.raw, (b"origin", b"http://127.0.0.1"))
    await expect_close(communicator, 4006,
                       "the agent socket does not accept browser connections")
    await communicator.send_to(bytes_data=frame(hello_msg()))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before


async def refused_as_first_frame(stored, data: bytes, code: int) -> str:
    """Send ``data`` as the first frame; assert the close code and that nothing was
    stored (the stored state included); return the reason."""
    before = await arows()
    communicator = await open_agent(stored.raw)
    await communicator.send_to(bytes_data=data)
    refused_code, reason = await refusal(communicator)
    assert refused_code == code
    # refused: a following valid hello is ignored
    await communicator.send_to(bytes_data=frame(hello_msg()))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()
    assert await arows() == before
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 1, "events": 1}
    return reason


async def test_malformed_json_is_refused_4000(stored):
    reason = await refused_as_first_frame(stored, b'{"v": 1, "t": "hello", ', 4000)
    assert reason.startswith("frame is not valid JSON: ")


async def test_json_that_is_not_an_object_is_refused_4000(stored):
    reason = await refused_as_first_frame(stored, b"[1, 2]", 4000)
    assert reason == "frame must be a JSON object"


async def test_wrong_field_type_is_refused_4000_with_the_field_path(stored):
    hello = hello_msg(pid=str(PID))
    reason = await refused_as_first_frame(stored, frame(hello), 4000)
    assert reason == "hello.process.pid: expected int"


async def test_missing_field_is_refused_4000_with_the_field_path(stored):
    hello = hello_msg()
    del hello["engines"][0]["pool"]["pre_ping"]
    reason = await refused_as_first_frame(stored, frame(hello), 4000)
    assert reason == "hello.engines[0].pool.pre_ping: missing"


async def test_unknown_version_is_refused_4002(stored):
    data = frame(hello_msg()).replace(b'"v":1', b'"v":99', 1)
    reason = await refused_as_first_frame(stored, data, 4002)
    assert reason == "protocol version 99 is not supported (supported: [1])"


def padded_hello(size: int) -> bytes:
    """A valid hello of exactly ``size`` bytes (padded in its free-form field)."""
    base = frame({**hello_msg(), "framework": ""})
    data = frame({**hello_msg(), "framework": "x" * (size - len(base))})
    assert len(data) == size
    return data


async def test_frame_over_the_size_limit_is_refused_4003(stored):
    reason = await refused_as_first_frame(
        stored, padded_hello(protocol.MAX_FRAME_BYTES + 1), 4003)
    assert reason == "frame of 1048577 bytes exceeds 1048576"


async def test_frame_of_exactly_the_size_limit_is_accepted(shop):
    communicator = await open_agent(shop.raw)
    welcome = await say_hello_raw(communicator, padded_hello(protocol.MAX_FRAME_BYTES))
    assert welcome["process"] == (await get_process()).pk
    await communicator.disconnect()


async def say_hello_raw(communicator, data: bytes) -> dict:
    await communicator.send_to(bytes_data=data)
    return protocol.decode(await communicator.receive_from(),
                           allowed=frozenset({"welcome"}))


async def test_unknown_message_type_is_refused_4004(stored):
    reason = await refused_as_first_frame(stored, frame({"t": "metrics", "x": 1}), 4004)
    assert reason == "unknown message type 'metrics'"


@pytest.mark.parametrize("message", [
    {"t": "welcome", "process": 1, "interval": 0.5},
    {"t": "error", "code": 4000, "reason": "x"},
    {"t": "control", "id": "c1", "action": "snapshot"},
])
async def test_dashboard_message_type_from_an_agent_is_refused_4004(stored, message):
    reason = await refused_as_first_frame(stored, frame(message), 4004)
    assert reason == f"unknown message type {message['t']!r}"


async def test_state_before_hello_is_refused_4005(stored):
    reason = await refused_as_first_frame(
        stored, frame(state_msg(engine_state(checked_out=0))), 4005)
    assert reason == "state before hello"


async def test_second_hello_is_refused_4005(stored):
    communicator = await open_agent(stored.raw)
    await say_hello(communicator)
    before = await arows()
    assert before["processes"][0]["connections"] == 2
    await communicator.send_to(bytes_data=frame(hello_msg(
        engines=[engine_info(url="sqlite://")])))
    await expect_close(communicator, 4005, "second hello on one connection")
    assert await arows() == before
    await communicator.send_to(bytes_data=frame(state_msg(engine_state(checked_out=0))))
    assert await communicator.receive_nothing() is True
    assert await arows() == before
    await communicator.disconnect()
    engine = await get_engine()
    assert engine.url == MASKED_URL
    assert engine.state["gauges"]["checked_out"] == 3


async def test_bad_frame_after_a_good_state_keeps_the_good_state(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await send_and_settle(communicator, state_msg())
    bad = state_msg(engine_state(checked_out=0))
    bad["engines"][0]["gauges"]["checked_out"] = "0"
    await communicator.send_to(bytes_data=frame(bad))
    await expect_close(communicator, 4000,
                       "state.engines[0].gauges.checked_out: expected int")
    # later frames on the refused socket are ignored
    await communicator.send_to(bytes_data=frame(state_msg(engine_state(checked_out=0))))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()

    engine = await get_engine()
    assert engine.state == {**engine_state(), "ts": STATE_TS}
    assert await samples_of(engine.pk) == [
        {"checked_out": 3, "idle": 2, "overflow": 0, "capacity": 15, "waiting": 1}]
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 1, "events": 0}
    assert (await get_process()).connected is False


async def test_refused_events_frame_stores_none_of_its_events(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await communicator.send_to(bytes_data=frame(events_msg(
        checkout_timeout(), ["checkout_timeout", STATE_TS, "e1", "worker-3"])))
    await expect_close(communicator, 4000, "events[1]: checkout_timeout takes 6 items, got 4")
    await communicator.disconnect()
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}


async def test_too_many_events_in_one_frame_is_refused_4003(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    events = [["dispose", STATE_TS, "e1"]] * (protocol.MAX_EVENTS_PER_FRAME + 1)
    await communicator.send_to(bytes_data=frame(events_msg(*events)))
    await expect_close(communicator, 4003, "5001 events exceed 5000 per frame")
    await communicator.disconnect()
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}


async def test_long_reason_is_cut_to_fit_a_close_frame(shop):
    communicator = await open_agent(shop.raw)
    app = "b" * 200
    await communicator.send_to(bytes_data=frame(hello_msg(app)))
    reason = f"this token belongs to app 'shop', not '{app}'"
    assert await refusal(communicator) == (4001, reason)  # whole in the error frame
    assert close_reason(reason) == reason[:120]            # cut in the close frame
    await communicator.disconnect()


async def test_reason_in_the_error_frame_is_cut_at_1000_characters(shop):
    communicator = await open_agent(shop.raw)
    app = "b" * 2000
    await communicator.send_to(bytes_data=frame(hello_msg(app)))
    code, reason = await refusal(communicator)
    assert code == 4001
    assert reason == f"this token belongs to app 'shop', not '{app}'"[:1000]
    await communicator.disconnect()


# -- frames decode() accepts but ingest cannot store --------------------------------

async def test_event_with_non_numeric_waited_is_refused_4000(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await communicator.send_to(bytes_data=frame(events_msg(
        checkout_timeout(waited="slow"))))
    assert (await refusal(communicator))[0] == 4000
    await communicator.disconnect()
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
    assert (await get_process()).connected is False


async def test_hello_with_out_of_range_started_is_refused_4000(shop):
    communicator = await open_agent(shop.raw)
    await communicator.send_to(bytes_data=frame(hello_msg(started=1e20)))
    assert (await refusal(communicator))[0] == 4000
    await communicator.disconnect()
    assert await acounts() == {"processes": 0, "engines": 0, "samples": 0, "events": 0}


async def test_event_with_out_of_range_ts_is_refused_4000(shop):
    communicator = await open_agent(shop.raw)
    await say_hello(communicator)
    await communicator.send_to(bytes_data=frame(events_msg(checkout_timeout(ts=1e20))))
    assert (await refusal(communicator))[0] == 4000
    await communicator.disconnect()
    assert await acounts() == {"processes": 1, "engines": 1, "samples": 0, "events": 0}
