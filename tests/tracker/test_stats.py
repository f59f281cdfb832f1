"""The worker's aggregates: a batch of durations counts exactly as one at a time."""

from __future__ import annotations

import bisect

import sqlalchemy as sa

from tracker.protocol import HIST_BOUNDS
from tracker.fingerprint import fingerprint
from tracker.stats import Histogram, StatementStats


def _one_by_one(values: list[float]) -> Histogram:
    """The reference: each value into the bucket ``bisect_left`` names, one at a time."""
    histogram = Histogram()
    for value in values:
        histogram.buckets[bisect.bisect_left(HIST_BOUNDS, value)] += 1
        histogram.sum += value
        histogram.max = max(histogram.max, value)
    return histogram


def test_add_many_equals_add_for_every_value_including_the_bounds():
    # each bound itself, just above and below it, zero and past the last bound
    values = [0.0, 120.0]
    for bound in HIST_BOUNDS:
        values += [bound, bound * 0.999, bound * 1.001]
    values += [0.003, 0.003, 0.003]  # repeats land in one bucket
    batched = Histogram()
    batched.add_many(list(reversed(values)))
    expected = _one_by_one(values)
    assert batched.buckets == expected.buckets
    assert batched.max == 120.0
    assert round(batched.sum, 9) == round(expected.sum, 9)
    assert batched.count == len(values) == 44


def test_add_many_puts_a_bound_in_the_bucket_it_closes():
    histogram = Histogram()
    histogram.add_many([0.0001, 0.0005, 60.0, 60.5])
    assert histogram.buckets[0] == 1   # <= 0.0001
    assert histogram.buckets[1] == 1   # (0.0001, 0.0005]
    assert histogram.buckets[12] == 1  # (30, 60]
    assert histogram.buckets[13] == 1  # > 60
    assert sum(histogram.buckets) == 4


def test_add_many_accumulates_and_ignores_an_empty_batch():
    histogram = Histogram()
    histogram.add_many([0.2])
    histogram.add_many([])
    histogram.add_many([0.02, 3.0])
    assert histogram.buckets == _one_by_one([0.2, 0.02, 3.0]).buckets
    assert histogram.max == 3.0
    assert round(histogram.sum, 9) == 3.22


def test_a_sampled_batch_weighs_every_duration():
    """With sampling, each recorded statement stands for ``weight`` of them."""
    shape = StatementStats(fingerprint("select 1"))
    shape.add_many([0.002, 0.0001, 0.7], weight=3)
    assert shape.count == 9
    assert round(shape.total, 9) == round(0.7021 * 3, 9)
    assert shape.max == 0.7
    assert shape.buckets == [3 * n for n in _one_by_one([0.002, 0.0001, 0.7]).buckets]
    assert sum(shape.buckets) == 9


def test_worker_batch_counts_checkouts_checkins_per_engine(agent, tmp_path):
    """Two engines' checkouts interleaved in one batch: each engine gets its own
    exact counters and wait/hold histograms."""
    first = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    second = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        for _ in range(3):
            with first.connect():
                pass
            with second.connect():
                pass
        with first.connect():
            pass
        state = agent.snapshot()  # one drain: both engines' items in one batch
        by_id = {e["id"]: e for e in state["engines"]}
        a = by_id[agent.registry.engines[id(first)].id]
        b = by_id[agent.registry.engines[id(second)].id]
        assert (a["counters"]["checkouts"], a["counters"]["checkins"]) == (4, 4)
        assert (b["counters"]["checkouts"], b["counters"]["checkins"]) == (3, 3)
        assert sum(a["wait"]["buckets"]) == 3  # the first checkout connects: not timed
        assert sum(a["hold"]["buckets"]) == 4
        assert sum(b["wait"]["buckets"]) == 2
        assert sum(b["hold"]["buckets"]) == 3
    finally:
        first.dispose()
        second.dispose()


def test_worker_batch_counts_statements_exactly_as_one_by_one(agent, tmp_path):
    """Statements of two texts on two engines, interleaved in one batch: every
    shape's count, rows, buckets and max are those of the items one by one."""
    engines = [sa.create_engine(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db")]
    try:
        for engine in engines:
            with engine.begin() as conn:
                conn.exec_driver_sql("create table t (x int)")
        agent.snapshot()  # the first sight of every text is behind us
        for i in range(5):
            for engine in engines:
                with engine.begin() as conn:
                    conn.exec_driver_sql("insert into t values (?)", (i,))
                    conn.exec_driver_sql("select x from t").all()
        items = agent.recorder.drain()
        statements = [item for item in items if item[0] == "statement"]
        assert len(statements) == 20
        expected: dict[tuple[str, str], dict] = {}
        for _, entry, seconds, text, _many, rows, _stack in statements:
            figures = expected.setdefault((entry.id, text), {
                "count": 0, "rows": 0, "max": 0.0, "buckets": [0] * len(HIST_BOUNDS + (0,))})
            figures["count"] += 1
            figures["rows"] += max(rows, 0)
            figures["max"] = max(figures["max"], seconds)
            figures["buckets"][bisect.bisect_left(HIST_BOUNDS, seconds)] += 1
        agent.worker.process(items)
        got = {}
        for entry_id, stats in agent.worker.stats.items():
            for text, shape in stats.by_text.items():
                if text.startswith(("insert", "select")):
                    got[(entry_id, text)] = shape
        assert set(got) == set(expected)
        for key, figures in expected.items():
            shape = got[key]
            assert shape.count == figures["count"] == 5
            assert shape.rows == figures["rows"] == (5 if key[1].startswith("insert") else 0)
            assert shape.max == figures["max"]
            assert shape.buckets == figures["buckets"]
        for engine in engines:
            counters = agent.worker.stats[agent.registry.engines[id(engine)].id].counters
            assert counters["statements"] == 1 + 10
    finally:
        for engine in engines:
            engine.dispose()


def test_texts_of_one_shape_in_a_batch_are_counted_together_exactly(agent, tmp_path):
    """Values written into the SQL: 30 texts, one shape; the batch counts them as one
    list, with the count, buckets, sum and max of the items one by one."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("create table t (x int)")
    agent.snapshot()
    with engine.connect() as conn:
        for n in range(30):
            conn.exec_driver_sql(f"select x from t where x = {n}").all()
    items = agent.recorder.drain()
    seconds = [item[2] for item in items
               if item[0] == "statement" and item[3].startswith("select x")]
    assert len(seconds) == 30
    agent.worker.process(items)
    stats = agent.worker.stats[agent.registry.engines[id(engine)].id]
    shapes = {id(shape): shape for text, shape in stats.by_text.items()
              if text.startswith("select x")}
    assert len(shapes) == 1
    shape = next(iter(shapes.values()))
    reference = _one_by_one(seconds)
    assert shape.shape.sql == "select x from t where x = ?"
    assert (shape.count, shape.buckets, shape.max) == (30, reference.buckets, max(seconds))
    assert abs(shape.total - sum(seconds)) < 1e-12
    assert stats.counters["statements"] == 1 + 30
    assert stats.changed[shape.shape.fp] is shape
    engine.dispose()
