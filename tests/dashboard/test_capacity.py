"""``pool-exceeds-max-connections``, computed by the dashboard across an app's connected
processes: the pools' pool_size + max_overflow toward one server, summed, against that
server's max_connections — above fires, equal stays quiet."""

from __future__ import annotations

import pytest

from dashboard import advice, capacity, ingest
from dashboard.models import Advice, Engine
from tracker import protocol

from .conftest import NOW, engine_info, frame, hello_msg

pytestmark = pytest.mark.django_db

SERVER = "postgresql://db.internal:5432"


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def start(shop, pid: int, *, max_connections=29, host: str = "web-1", **engine) -> int:
    """A process of the app says hello with one engine (pool_size 5 + max_overflow 10
    by default) whose server reports ``max_connections``; returns its pk."""
    if max_connections is not None:
        engine["server"] = {"max_connections": max_connections, "version": "16.4"}
    info = engine_info(**engine)
    return ingest.register_process(shop.token, decoded(hello_msg(
        pid=pid, host=host, engines=[info]))).pk


def process_entry(pid: int, capacity_: int | str = 15, host: str = "web-1",
                  engines: list[str] | None = None) -> dict:
    return {"process": f"{host}:{pid}",
            "engines": engines or ["postgresql/shop (pool_size 5, max_overflow 10)"],
            "capacity": capacity_}


def test_two_processes_above_max_connections_are_advised(frozen, shop):
    start(shop, 4242)
    assert Advice.objects.count() == 0  # 15 of 29
    start(shop, 5151)
    group = Advice.objects.get()
    assert (group.app_id, group.rule, group.severity, group.engine_name, group.location) == (
        shop.app.pk, "pool-exceeds-max-connections", "error", "postgresql/shop", "")
    assert group.key == advice.group_key("pool-exceeds-max-connections", SERVER, "")
    assert group.evidence == {"server": SERVER, "max_connections": 29, "total": 30,
                              "processes": [process_entry(4242), process_entry(5151)]}
    assert group.message == (
        "2 processes can open 30 connections to postgresql://db.internal:5432 "
        "(pool_size + max_overflow of each engine), above its max_connections of 29")
    assert (group.count, group.first_seen, group.last_seen, group.status) == (
        1, NOW, NOW, "open")
    assert group.engine_id == Engine.objects.filter(process__pid=4242).get().pk


def test_exactly_max_connections_is_not_advised(frozen, shop):
    """The near-miss twin: 15 + 15 connections on a server that allows 30."""
    start(shop, 4242, max_connections=30)
    start(shop, 5151, max_connections=30)
    assert capacity.check(shop.app.pk) == []
    assert Advice.objects.count() == 0


def test_the_count_grows_when_the_evidence_changes_not_on_every_check(frozen, shop):
    start(shop, 4242)
    start(shop, 5151)
    # the same process reconnects: nothing new
    start(shop, 5151)
    assert capacity.check(shop.app.pk) == []
    assert Advice.objects.get().count == 1
    start(shop, 6161)
    group = Advice.objects.get()
    assert (group.count, group.evidence["total"]) == (2, 45)
    assert [p["process"] for p in group.evidence["processes"]] == [
        "web-1:4242", "web-1:5151", "web-1:6161"]


def test_an_acknowledged_group_reopens_when_another_process_adds_to_it(frozen, shop,
                                                                      django_user_model):
    start(shop, 4242)
    start(shop, 5151)
    group = Advice.objects.get()
    advice.change_status(group.pk, "acknowledge", django_user_model.objects.create_user("al"))
    start(shop, 5151)  # same evidence: stays acknowledged
    assert Advice.objects.get().status == "acknowledged"
    start(shop, 6161)
    group = Advice.objects.get()
    assert (group.status, group.reopened_at) == ("open", NOW)


def test_disconnected_processes_do_not_count(frozen, shop):
    first = start(shop, 4242)
    ingest.mark_disconnected(first)
    start(shop, 5151)
    assert Advice.objects.count() == 0


def test_other_servers_and_sqlite_are_apart(frozen, shop):
    start(shop, 4242)
    start(shop, 5151, url="postgresql+psycopg://shop:***@replica.internal:5432/shop")
    start(shop, 6161, url="sqlite:///shop.db", dialect="sqlite", name="sqlite/shop.db")
    assert Advice.objects.count() == 0


def test_other_databases_on_one_server_share_its_connections(frozen, shop):
    """max_connections is the server's, whatever the database; the default port is
    the one written out."""
    start(shop, 4242)
    start(shop, 5151, url="postgresql+psycopg://shop:***@db.internal/reports",
          name="postgresql/reports")
    group = Advice.objects.get()
    assert group.evidence["server"] == SERVER
    assert group.evidence["processes"][1] == process_entry(
        5151, engines=["postgresql/reports (pool_size 5, max_overflow 10)"])


def test_localhost_is_another_server_on_every_machine(frozen, shop):
    local = "postgresql+psycopg://shop:***@localhost:5432/shop"
    start(shop, 4242, url=local, host="web-1")
    start(shop, 5151, url=local, host="web-2")
    assert Advice.objects.count() == 0
    start(shop, 6161, url=local, host="web-2")
    assert Advice.objects.get().evidence["server"] == "postgresql://localhost on web-2:5432"


def test_unlimited_overflow_is_unbounded(frozen, shop):
    pool = {**engine_info()["pool"], "max_overflow": -1}
    start(shop, 4242, pool=pool)
    group = Advice.objects.get()
    assert group.evidence == {
        "server": SERVER, "max_connections": 29, "total": "unbounded",
        "processes": [process_entry(4242, "unbounded",
                                    engines=["postgresql/shop (pool_size 5, max_overflow -1)"])]}
    assert group.message == (
        "1 process can open an unbounded number of connections to "
        "postgresql://db.internal:5432 (max_overflow=-1), whose max_connections is 29")


def test_pools_without_a_size_are_not_counted(frozen, shop):
    start(shop, 4242, pool={"class": "NullPool", "recycle": -1, "pre_ping": False})
    start(shop, 5151)
    assert Advice.objects.count() == 0


def test_without_the_servers_max_connections_nothing_is_computed(frozen, shop):
    start(shop, 4242, max_connections=None)
    start(shop, 5151, max_connections=None)
    assert Advice.objects.count() == 0
    # MySQL answers settings as strings; the newest report counts
    start(shop, 6161, max_connections="40")
    assert Advice.objects.get().evidence["max_connections"] == 40
    assert Advice.objects.get().evidence["total"] == 45


def test_server_settings_announced_later_are_kept_and_checked(frozen, shop):
    first = start(shop, 4242, max_connections=None)
    start(shop, 5151, max_connections=None)
    # the agent read the server at the engine's first connection and announces it
    ingest.store_engine(first, decoded({"t": "engine", "engine": engine_info(
        server={"max_connections": 20})}))
    assert Advice.objects.get().evidence["max_connections"] == 20
    # announced again without them (a dispose): still known
    ingest.store_engine(first, decoded({"t": "engine", "engine": engine_info(disposed=1)}))
    engine = Engine.objects.get(process_id=first)
    assert (engine.server, engine.disposed) == ({"max_connections": 20}, 1)
