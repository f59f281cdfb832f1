"""The agent's worker and transport against a real websocket server: batching,
reconnect with backoff, refusal, flush on exit, fork, drops.

The peer here is a plain ``websockets`` server that decodes every frame with the
protocol module (the dashboard's own consumer is tested in tests/dashboard and
end to end in tests/e2e)."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

import tracker
from tracker import protocol
from tracker.recorder import Recorder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A websocket server in a thread that records every decoded message."""

    def __init__(self, port: int | None = None, refuse: tuple[int, str] | None = None,
                 refuse_after_hello: str | None = None):
        self.port = port or _free_port()
        self.refuse = refuse
        #: refuse as the dashboard does after reading the hello: an error frame with
        #: the reason, then a close with the code only (daphne drops close reasons)
        self.refuse_after_hello = refuse_after_hello
        self.messages: list[dict] = []
        self.headers: list[dict] = []
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/agent/"

    def _handler(self, ws) -> None:
        self.headers.append(ws.request.headers)
        if self.refuse:
            ws.recv()
            ws.close(*self.refuse)
            return
        if self.refuse_after_hello:
            try:
                self.messages.append(protocol.decode(ws.recv()))
            except ConnectionClosed:
                return  # the agent stopped meanwhile
            ws.send(protocol.encode({"t": "error", "code": protocol.CLOSE_UNAUTHORIZED,
                                     "reason": self.refuse_after_hello}))
            ws.close(protocol.CLOSE_UNAUTHORIZED)
            return
        for frame in ws:
            message = protocol.decode(frame)
            self.messages.append(message)
            if message["t"] == "hello":
                try:
                    ws.send(protocol.encode({"t": "welcome", "process": 7, "interval": 0.5}))
                except ConnectionClosed:
                    pass  # a short-lived agent may be gone already: keep reading its frames

    def start(self) -> "Peer":
        self._server = serve(self._handler, "127.0.0.1", self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)

    def kinds(self) -> list[str]:
        return [m["t"] for m in self.messages]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False


@pytest.fixture
def peer():
    server = Peer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _detached():
    yield
    tracker.uninstrument()


def test_hello_then_state_frames(peer, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}", pool_size=2)
    tracker.instrument(url=peer.url, token="rt_secret", app="shop", state_interval=0.1)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
        assert peer.wait_for(lambda: any(
            m["t"] == "state" and any(e["gauges"]["checked_out"] == 1 for e in m["engines"])
            for m in peer.messages))
    hello = peer.messages[0]
    assert hello["t"] == "hello" and hello["app"] == "shop"
    assert hello["process"]["pid"] == os.getpid()
    assert peer.headers[0]["Authorization"] == "Bearer rt_secret"
    assert peer.headers[0]["User-Agent"] == f"retort-tracker/{tracker.__version__}"
    # the welcome is read on the worker's next round
    assert peer.wait_for(lambda: tracker.current_agent().dashboard_process_id == 7)


def test_wait_for_engine_connects_at_the_first_engine_only(peer, tmp_path):
    # a fresh interpreter: this one's heap holds engines of other tests, which
    # instrument() would discover
    script = textwrap.dedent(f"""
        import sys, time, sqlalchemy as sa, tracker
        tracker.instrument(url="{peer.url}", app="shop", state_interval=0.1,
                           wait_for_engine=True)
        time.sleep(0.5)  # several worker rounds: no engine, no connection
        print("ready", flush=True)
        sys.stdin.readline()
        engine = sa.create_engine("sqlite:///{tmp_path / 'x.db'}")
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == "ready\n"
        assert peer.headers == []
        child.stdin.write("go\n")
        child.stdin.flush()
        assert peer.wait_for(lambda: "hello" in peer.kinds())
        assert [e["name"] for e in peer.messages[0]["engines"]] == ["sqlite/x.db"]
        assert len(peer.headers) == 1
    finally:
        child.communicate("end\n", timeout=30)


def test_every_engine_in_a_state_was_announced_before_it(peer, tmp_path):
    # engines living a few milliseconds each (a test suite, a job per engine): the
    # dashboard must never get counters for an engine whose configuration it lacks
    tracker.instrument(url=peer.url, app="shop", state_interval=0.01)
    deadline = time.monotonic() + 2.0
    made = 0
    while time.monotonic() < deadline:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'short.db'}")
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        del engine
        made += 1
    assert peer.wait_for(lambda: peer.kinds().count("state") >= 20)
    tracker.uninstrument()
    announced: set[str] = set()
    unannounced: list[str] = []
    for message in list(peer.messages):
        if message["t"] == "hello":
            announced.update(e["id"] for e in message["engines"])
        elif message["t"] == "engine":
            announced.add(message["engine"]["id"])
        elif message["t"] == "state":
            unannounced.extend(e["id"] for e in message["engines"] if e["id"] not in announced)
    assert made > 50
    assert unannounced == []


def test_the_process_is_the_same_for_every_agent_it_runs(peer):
    # the dashboard keys a process by host, pid and this start time: attached again,
    # or instrumented again, it is the same process
    tracker.instrument(url=peer.url, app="shop")
    assert peer.wait_for(lambda: "hello" in peer.kinds())
    tracker.uninstrument()
    tracker.instrument(url=peer.url, app="shop")
    assert peer.wait_for(lambda: peer.kinds().count("hello") == 2)
    first, second = [m["process"] for m in peer.messages if m["t"] == "hello"]
    assert first["started"] == second["started"]
    with open(f"/proc/{os.getpid()}/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    assert first["started"] == boot + ticks / os.sysconf("SC_CLK_TCK")


def test_flush_on_exit_sends_final_state_and_bye(peer, tmp_path):
    script = textwrap.dedent(f"""
        import sqlalchemy as sa, tracker
        engine = sa.create_engine("sqlite:///{tmp_path / 'y.db'}")
        tracker.instrument(url="{peer.url}", token="rt_t", app="batch",
                           state_interval=60)
        with engine.connect() as conn:
            for _ in range(25):
                conn.execute(sa.text("select 1"))
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)
    assert peer.wait_for(lambda: "bye" in peer.kinds())
    assert peer.kinds()[0] == "hello"
    assert peer.kinds()[-1] == "bye"
    final = [m for m in peer.messages if m["t"] == "state"][-1]
    (engine,) = final["engines"]
    assert engine["counters"]["statements"] == 25
    assert engine["counters"]["checkins"] == 1


def test_reconnects_by_itself_and_never_blocks_the_app(tmp_path):
    port = _free_port()
    first = Peer(port).start()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(url=first.url, token="rt_t", app="shop", state_interval=0.1,
                                backoff_initial=0.05, backoff_max=0.3)
    assert first.wait_for(lambda: "state" in first.kinds())
    first.stop()
    # the dashboard is gone: the application carries on, every statement runs
    with engine.connect() as conn:
        done = sum(conn.execute(sa.text("select 1")).scalar() for _ in range(2000))
    assert done == 2000
    second = Peer(port).start()
    try:
        assert second.wait_for(lambda: "state" in second.kinds())
        assert second.kinds()[0] == "hello"
        state = [m for m in second.messages if m["t"] == "state"][-1]
        assert state["agent"]["reconnects"] >= 1
        counters = [e for e in state["engines"]
                    if e["id"] == handle.agent.registry.engines[id(engine)].id][0]["counters"]
        assert counters["statements"] == 2000  # cumulative: nothing lost while away
    finally:
        second.stop()


def test_refusal_is_logged_once_and_backs_off(caplog, tmp_path):
    refusing = Peer(refuse=(protocol.CLOSE_UNAUTHORIZED, "invalid or revoked agent token"))
    refusing.start()
    try:
        tracker.instrument(url=refusing.url, token="rt_wrong", app="shop",
                           backoff_initial=0.05, backoff_max=1.0)
        assert refusing.wait_for(lambda: any(
            "invalid or revoked agent token" in r.getMessage() for r in caplog.records))
        time.sleep(0.5)
        # refused connections wait backoff_max, not the fast schedule
        assert len(refusing.headers) == 1
        warnings = [r for r in caplog.records if "refused the agent" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        tracker.uninstrument()
        refusing.stop()


def test_a_refusal_after_the_hello_is_logged_once_with_its_reason(caplog, tmp_path):
    # The hello goes out before the refusal comes back, on every attempt: the agent is
    # not "connected" until welcomed, so the same refusal is not logged again.
    refusing = Peer(refuse_after_hello="this token belongs to app 'shop', not 'cart'")
    refusing.start()
    try:
        tracker.instrument(url=refusing.url, token="rt_any", app="cart",
                           backoff_initial=0.05, backoff_max=0.1)
        assert refusing.wait_for(lambda: len(refusing.messages) >= 4)
        warnings = [r.getMessage() for r in caplog.records
                    if "refused the agent" in r.getMessage()]
        assert warnings == ["retort agent: dashboard refused the agent: this token belongs "
                            "to app 'shop', not 'cart' (retrying in 0.1s)"]
        assert [m["t"] for m in refusing.messages][:4] == ["hello"] * 4
    finally:
        tracker.uninstrument()
        refusing.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reports_as_its_own_process(peer, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    tracker.instrument(url=peer.url, token="rt_t", app="shop", state_interval=0.1)
    assert peer.wait_for(lambda: "state" in peer.kinds())
    pid = os.fork()
    if pid == 0:  # the child: use the engine, flush, leave without pytest's cleanup
        try:
            engine.dispose(close=False)  # the documented way to share nothing after fork
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            tracker.uninstrument()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert peer.wait_for(lambda: any(
        m["t"] == "hello" and m["process"]["pid"] == pid for m in peer.messages))
    child_hello = next(m for m in peer.messages
                       if m["t"] == "hello" and m["process"]["pid"] == pid)
    assert child_hello["process"]["ppid"] == os.getpid()
    assert peer.wait_for(lambda: "bye" in peer.kinds())
    # the parent's connection was left alone and keeps sending
    count = len([m for m in peer.messages if m["t"] == "state"])
    assert peer.wait_for(lambda: len([m for m in peer.messages if m["t"] == "state"]) > count)


def test_recorder_drops_oldest_and_counts_exactly():
    recorder = Recorder(3)
    results = [recorder.submit((i,)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert recorder.drain() == [(2,), (3,), (4,)]
    assert recorder.drops == {protocol.DROP_QUEUE_FULL: 2}


def test_queue_drops_are_reported_in_state(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a", queue_size=10)
    with engine.connect() as conn:
        for _ in range(30):
            conn.execute(sa.text("select 1"))
    state = handle.agent.snapshot()
    # connect and 30 statements: 31 items, queue of 10 (the checkout's wait and the
    # checkin go to the engine's tally, not the queue)
    assert state["agent"]["drops"] == {"queue_full": 21}
    counters = state["engines"][0]["counters"]
    assert (counters["checkouts"], counters["checkins"]) == (1, 1)
    assert len(handle.agent.recorder) == 0
    assert state["agent"]["queue_max"] == 10
    engine.dispose()


def test_large_event_batches_are_split_below_the_frame_limit(peer, monkeypatch):
    # small enough to force splits, large enough for a hello listing every engine
    # earlier tests left alive
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 20_000)
    # engines of earlier tests that are only garbage (reference cycles not collected
    # yet) would be found by instrument()'s heap scan and make the hello too large
    gc.collect()
    handle = tracker.instrument(run_worker=False, url=peer.url, token="rt_t", app="a")
    worker = handle.agent.worker
    assert worker._open()
    events = [["dispose", 1.0 + i, f"e{i}"] for i in range(2000)]  # ~25 bytes each
    events.append(["invalidate", 2.0, "e1", "t", "loc", "x" * 30_000])  # can never fit
    worker.pending_events.extend(events)
    worker._send_events()
    assert peer.wait_for(lambda: sum(len(m["events"]) for m in peer.messages
                                     if m["t"] == "events") == 2000)
    frames = [m for m in peer.messages if m["t"] == "events"]
    assert len(frames) > 1
    assert [e[2] for m in frames for e in m["events"]] == [f"e{i}" for i in range(2000)]
    assert handle.agent.recorder.drops == {protocol.DROP_OVERSIZE: 1}
