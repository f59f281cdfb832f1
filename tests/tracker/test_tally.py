"""Tallies (tracker/tally.py): durations the hot hooks append straight to per-engine
lists, taken by the worker once per round, on real SQLite engines."""

from __future__ import annotations

import gc
import sys
import threading

import sqlalchemy as sa

from tracker.hooks import engine as engine_hooks
from tracker.hooks import pool as pool_hooks
from tracker.hooks.engine import STATEMENT
from tracker.hooks.pool import CHECKIN, WAIT
from tracker.registry import LOCATE_PER_ROUND
from tracker import tally as tally_module
from tracker.tally import (FIRST_TEXTS, MAX_TEXTS, TEXT_BUDGET, TEXT_CAP, TEXT_CAP_FIRST,
                           Tally, take)


def _entry(agent, engine):
    return agent.registry.engines[id(engine)]


def _queued(agent, kind):
    return [item for item in list(agent.recorder.queue) if item[0] == kind]


def _shape(agent, engine, text):
    return agent.worker.stats[_entry(agent, engine).id].by_text[text]


def test_take_loses_and_repeats_nothing_while_threads_append():
    """Four threads append 50,000 distinct values each while another takes, as the
    worker does: every value is taken exactly once."""
    values: list[int] = []
    taken: list[int] = []
    done = threading.Event()

    def append(start: int) -> None:
        for value in range(start, start + 50_000):
            values.append(value)

    def worker() -> None:
        while not done.is_set():
            taken.extend(take(values))
        taken.extend(take(values))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch at every chance: races show
    try:
        taker = threading.Thread(target=worker)
        taker.start()
        appenders = [threading.Thread(target=append, args=(n * 50_000,))
                     for n in range(4)]
        for thread in appenders:
            thread.start()
        for thread in appenders:
            thread.join()
        done.set()
        taker.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(taken) == 200_000
    assert set(taken) == set(range(200_000))
    assert values == []


def test_a_text_gets_a_tally_once_the_worker_has_seen_it_run_twice(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("create table t (x int)")
    insert, select = "insert into t values (?)", "select x from t"
    with engine.begin() as conn:
        conn.exec_driver_sql(insert, (0,))
        conn.exec_driver_sql(select).all()
    # first sight: through the queue, with its code location
    assert [item[3] for item in _queued(agent, STATEMENT)][-2:] == [insert, select]
    assert all(item[6] for item in _queued(agent, STATEMENT)[-2:])
    agent.snapshot()
    tally = _entry(agent, engine).tally
    assert not {insert, select} & set(tally.texts)  # run once: maybe never again
    with engine.begin() as conn:
        conn.exec_driver_sql(insert, (1,))
        conn.exec_driver_sql(select).all()
    agent.snapshot()
    assert {insert, select} <= set(tally.texts)
    for i in range(2, 9):
        with engine.begin() as conn:
            conn.exec_driver_sql(insert, (i,))
            conn.exec_driver_sql(select).all()
    # now appended to the tallies, nothing queued
    assert _queued(agent, STATEMENT) == []
    assert len(tally.texts[insert].durations) == 7
    assert tally.texts[insert].rows.tolist() == [1] * 7
    assert len(tally.texts[select].rows) == 0  # sqlite3 reports no rows for a SELECT
    agent.snapshot()
    assert (_shape(agent, engine, insert).count, _shape(agent, engine, insert).rows) == (9, 9)
    assert _shape(agent, engine, select).count == 9
    assert sum(_shape(agent, engine, select).buckets) == 9
    assert len(tally.texts[insert].durations) == 0
    engine.dispose()


def test_checkouts_and_checkins_go_to_the_tally_and_count_exactly(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect():
        pass  # the first checkout connects (recorded by the connect listener)
    agent.snapshot()
    tally = _entry(agent, engine).tally
    for _ in range(5):
        with engine.connect():
            pass
    assert (len(tally.waits), len(tally.holds)) == (5, 5)
    assert _queued(agent, WAIT) == _queued(agent, CHECKIN) == []
    counters = next(e for e in agent.snapshot()["engines"]
                    if e["id"] == _entry(agent, engine).id)["counters"]
    assert (counters["checkouts"], counters["checkins"]) == (6, 6)
    assert (tally.waits, tally.holds) == ([], [])
    engine.dispose()


def test_a_full_tally_falls_back_to_the_queue(agent, tmp_path, monkeypatch):
    """The worker is behind: past the cap, the hooks queue as before; nothing is
    lost and the counts stay exact."""
    monkeypatch.setattr(pool_hooks, "EVENTS_CAP", 2)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        for _ in range(2):
            conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    _entry(agent, engine).tally.texts["select 1"].cap = 3
    for _ in range(4):
        with engine.connect() as conn:
            for _ in range(3):
                conn.exec_driver_sql("select 1").all()
    tally = _entry(agent, engine).tally
    assert len(tally.texts["select 1"].durations) == 3
    assert len(_queued(agent, STATEMENT)) == 9
    assert (len(tally.waits), len(tally.holds)) == (2, 2)
    assert (len(_queued(agent, WAIT)), len(_queued(agent, CHECKIN))) == (2, 2)
    agent.snapshot()
    assert _shape(agent, engine, "select 1").count == 14
    counters = agent.worker.stats[_entry(agent, engine).id].counters
    assert (counters["checkouts"], counters["checkins"]) == (5, 5)
    assert agent.recorder.drops == {}
    engine.dispose()


def test_switching_statements_off_or_sampling_unpublishes_the_texts(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        for _ in range(2):
            conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    entry = _entry(agent, engine)
    assert "select 1" in entry.tally.texts
    entry.sample = 2
    assert entry.tally.texts == {}
    with engine.connect() as conn:
        for _ in range(6):
            conn.exec_driver_sql("select 1").all()
    assert len(_queued(agent, STATEMENT)) == 3  # sampled: one in two
    agent.snapshot()
    assert entry.tally.texts == {}  # not given back while sampled
    assert _shape(agent, engine, "select 1").count == 2 + 6
    entry.sample = 1
    with engine.connect() as conn:
        conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    assert "select 1" in entry.tally.texts
    entry.statements = False
    assert entry.tally.texts == {}
    with engine.connect() as conn:
        conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    assert _shape(agent, engine, "select 1").count == 2 + 6 + 1
    assert len(entry.tally.all_texts) == 1  # the same tally, given back each time
    engine.dispose()


def _texts_seen(agent, tmp_path, count):
    """An engine that ran ``count`` texts twice a round, for as many rounds of the
    worker as their first sights need (LOCATE_PER_ROUND located a round); and how many
    times each ran."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    texts = [f"select {n}" for n in range(count)]
    rounds = -(-count // LOCATE_PER_ROUND)
    for _ in range(rounds):
        with engine.connect() as conn:
            for text in texts * 2:
                conn.exec_driver_sql(text).all()
        agent.snapshot()
    return engine, texts, 2 * rounds


def test_tallied_texts_are_bounded_per_engine(agent, tmp_path):
    engine, texts, runs = _texts_seen(agent, tmp_path, MAX_TEXTS + 5)
    tally = _entry(agent, engine).tally
    assert len(tally.texts) == len(tally.all_texts) == MAX_TEXTS
    with engine.connect() as conn:
        for text in texts:
            conn.exec_driver_sql(text).all()
    # the texts without a tally still go through the queue
    assert len(_queued(agent, STATEMENT)) == 5
    agent.snapshot()
    # all of them one shape ("select ?"): counted twice each
    assert runs == 10
    assert _shape(agent, engine, texts[0]).count == (runs + 1) * len(texts) == 2871
    engine.dispose()


def test_a_gone_engine_is_counted_to_the_last_then_forgotten(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        for _ in range(2):
            conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    entry = _entry(agent, engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("select 1").all()
    assert len(entry.tally.texts["select 1"].durations) == 1
    assert entry in agent.registry.tallied
    engine.dispose()
    del engine, conn
    gc.collect()
    agent.snapshot()
    assert entry not in agent.registry.tallied
    shape = agent.worker.stats[entry.id].by_text["select 1"]
    assert shape.count == 3
    assert agent.worker.stats[entry.id].counters["checkins"] == 2


def test_a_forked_child_forgets_its_parents_tallies(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        for _ in range(2):
            conn.exec_driver_sql("select 1").all()
    agent.snapshot()
    with engine.connect() as conn:
        conn.exec_driver_sql("select 1").all()
    tally = _entry(agent, engine).tally
    assert (len(tally.waits), len(tally.holds)) == (1, 1)
    assert len(tally.texts["select 1"].durations) == 1
    assert tally.pending()
    agent.after_fork_in_child()  # what os.register_at_fork runs in a child
    assert not tally.pending()
    assert list(tally.texts) == ["select 1"]  # the texts keep their tallies
    counters = agent.worker.stats.get(_entry(agent, engine).id)
    assert counters is None  # the child's new worker starts from nothing
    engine.dispose()


def test_tally_pending_and_clear():
    tally = Tally()
    tally.waits.extend([0.1, 0.2])
    tally.add_text("select 1")
    tally.texts["select 1"].rows.append(4)
    assert tally.pending()
    tally.clear()
    assert not tally.pending()


def test_wait_round_returns_once_a_running_worker_has_published_the_texts(tmp_path):
    import tracker

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    handle = tracker.instrument(url=None, app="tests")
    try:
        worker = handle.agent.worker
        with engine.connect() as conn:
            for _ in range(2):
                conn.exec_driver_sql("select 1").all()
        tally = _entry(handle.agent, engine).tally
        before, cpu = worker.rounds, worker.cpu_seconds()
        assert worker.wait_round(5.0) is True
        assert worker.rounds >= before + 2
        assert "select 1" in tally.texts
        assert isinstance(cpu, float) and worker.cpu_seconds() > cpu  # it worked
    finally:
        tracker.uninstrument()
    # a stopped worker never completes another round: no wait for the timeout
    assert worker.wait_round(5.0) is False
    assert worker.cpu_seconds() is None
    engine.dispose()


def test_the_first_texts_get_the_large_cap_the_later_ones_the_small_one():
    tally = Tally()
    for n in range(FIRST_TEXTS + 2):
        tally.add_text(f"select {n}")
    caps = [tally.texts[f"select {n}"].cap for n in range(FIRST_TEXTS + 2)]
    assert caps == [TEXT_CAP_FIRST] * FIRST_TEXTS + [TEXT_CAP] * 2
    assert tally.caps == 16 * 8192 + 2 * 512 == 132_096
    # durations and rows are C arrays: 8 bytes a value, taken as lists
    later = tally.texts[f"select {FIRST_TEXTS}"]
    later.durations.extend([0.5, 0.25])
    later.rows.append(3)
    assert take(later.durations) == [0.5, 0.25] and take(later.rows) == [3]
    assert (len(later.durations), len(later.rows)) == (0, 0)


def test_a_busy_text_gets_room_for_its_rate_within_the_budget(monkeypatch):
    tally = Tally()
    for n in range(FIRST_TEXTS + 1):
        tally.add_text(f"select {n}")
    busy = tally.texts[f"select {FIRST_TEXTS}"]
    tally.grow(busy, 256)  # ran half its cap or less: unchanged
    assert busy.cap == 512
    tally.grow(busy, 700)  # twice 700 → 2048, the next doubling above 1400
    assert (busy.cap, tally.caps) == (2048, 16 * 8192 + 2048)
    tally.grow(busy, 100_000)  # never above the first texts' cap
    assert (busy.cap, tally.caps) == (8192, 17 * 8192)
    first = tally.texts["select 0"]
    tally.grow(first, 100_000)
    assert first.cap == 8192
    # the budget: whatever is left of it, no more
    monkeypatch.setattr(tally_module, "TEXT_BUDGET", 17 * 8192 + 1000)
    tally.add_text("select late")
    late = tally.texts["select late"]
    assert tally.caps == 17 * 8192 + 512
    tally.grow(late, 5000)
    assert (late.cap, tally.caps) == (1000, 17 * 8192 + 1000)
    tally.add_text("select later")  # no room for a cap of 512: it keeps the queue
    assert "select later" not in tally.texts


def test_a_text_that_overflows_its_cap_gets_a_larger_one_next_round(agent, tmp_path):
    """Through the hooks and the worker: a later text running 1,500 times in a round
    fills its 512 and queues the rest; the round raises its cap to 4,096."""
    engine, texts, runs = _texts_seen(agent, tmp_path, FIRST_TEXTS + 1)
    tally = _entry(agent, engine).tally.texts[texts[-1]]
    assert tally.cap == TEXT_CAP
    with engine.connect() as conn:
        for _ in range(1500):
            conn.exec_driver_sql(texts[-1]).all()
    assert len(tally.durations) == 512
    assert len(_queued(agent, STATEMENT)) == 1500 - 512
    agent.snapshot()
    assert tally.cap == 4096
    # one shape for all the texts ("select ?"): 17 texts run twice, and the 1,500
    assert runs == 2
    assert _shape(agent, engine, texts[-1]).count == 2 * 17 + 1500
    engine.dispose()


def test_first_sights_walk_the_stack_at_most_so_often_a_round(agent, tmp_path):
    """Values written into the SQL make a new text per statement: at most
    LOCATE_PER_ROUND first sights a round walk the stack; the others are located at a
    later sight, and texts run once take no tally."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    texts = [f"select {n} as c{n}" for n in range(LOCATE_PER_ROUND + 6)]  # 70 shapes
    with engine.connect() as conn:
        for text in texts:
            conn.exec_driver_sql(text).all()
    stacks = [item[6] for item in _queued(agent, STATEMENT) if item[3] in texts]
    assert LOCATE_PER_ROUND == 64
    assert [bool(stack) for stack in stacks] == [True] * 64 + [False] * 6
    assert stacks[64:] == [engine_hooks.DEFERRED] * 6
    agent.snapshot()
    stats = agent.worker.stats[_entry(agent, engine).id]
    located = [bool(stats.by_text[text].stack) for text in texts]
    assert located == [True] * 64 + [False] * 6
    tally = _entry(agent, engine).tally
    assert not set(texts) & set(tally.texts)  # each ran once
    with engine.connect() as conn:
        for text in texts[64:]:
            conn.exec_driver_sql(text).all()
    agent.snapshot()  # the round gave back its walks: the six are located now
    assert all(stats.by_text[text].stack for text in texts)
    # run twice (once a round), located: a tally each
    assert set(tally.texts) == set(texts[64:])
    engine.dispose()
