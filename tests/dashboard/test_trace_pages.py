"""The traces pages and endpoints: starting (every scope, exactly the controls sent,
audited; refused without the operator permission or CSRF token, audited) and stopping
recordings; a trace recorded in-process with ``tracker.record`` against SQLite,
imported through the view, downloaded again equal (JSON Lines), as a Chrome trace and
as OTLP (parsed by the official protobuf definitions), and shown on its page
(timeline, statements, flush changes, redaction); bad uploads refused with the reason
and nothing stored; bounded storage."""

from __future__ import annotations

import json
import re
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.test import Client
from django.utils import timezone

import tracker
from dashboard import toggles, traces, traces_store
from dashboard.models import AuditLog, Trace
from tests.tracker.scenario import seed
from tests.tracker.test_traces import _otlp_message, _scenario
from tracker.traces import jsonl
from tracker.traces.chrome import to_chrome
from tracker.traces.otlp import to_otlp

from .conftest import second_process

pytestmark = pytest.mark.django_db

NO_PERMISSION = ("refused: you do not have the permission to change what agents track "
                 "(dashboard.operate_agents; ask an admin to add you to the Operators group)")


@pytest.fixture
def traces_dir(settings, tmp_path):
    settings.RETORT = {"TRACES_DIR": str(tmp_path / "traces")}
    return tmp_path / "traces"


@pytest.fixture
def sent(monkeypatch):
    """The channel-layer messages the views send (group, message), in order."""
    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(toggles, "send",
                        lambda batch, *notify: messages.extend(batch))
    return messages


def start_args(pk: int, name: str = "checkout", seconds: float = 600.0, **extra) -> dict:
    return {"trace": str(pk), "action": "start", "name": name, "max_seconds": seconds,
            **extra}


def control(process_pk: int, trace_pk: int, action: str, args: dict) -> tuple[str, dict]:
    return (f"process-{process_pk}", {"type": "agent.control",
                                      "id": f"record:{trace_pk}:{action}",
                                      "action": "record", "args": args})


# -- starting and stopping ----------------------------------------------------------

def test_an_app_recording_reaches_every_connected_process(tracked, as_operator, sent,
                                                          traces_dir):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    second_process(tracked.app, host="web-3", pid=78, connected=False)
    response = as_operator.post(f"/apps/{tracked.app.pk}/traces/start/",
                                {"scope": "app", "name": "checkout", "seconds": "30"})
    assert (response.status_code, response["Location"]) == (
        303, f"/apps/{tracked.app.pk}/traces/")
    rows = list(Trace.objects.order_by("process__host"))
    assert [(t.process.host, t.scope, t.name, t.status, t.max_seconds, t.started_by.username)
            for t in rows] == [("web-1", "app", "checkout", "recording", 30.0, "olga"),
                               ("web-2", "app", "checkout", "recording", 30.0, "olga")]
    assert rows[0].recording == rows[1].recording != ""
    assert sent == [control(tracked.process.pk, rows[0].pk, "start",
                            start_args(rows[0].pk, seconds=30.0)),
                    control(web2.pk, rows[1].pk, "start", start_args(rows[1].pk, seconds=30.0))]
    entry = AuditLog.objects.get()
    assert (entry.actor_name, entry.action, entry.target, entry.result) == (
        "olga", "trace.start", "Recording 'checkout' of every process of shop",
        "sent to 2 processes: web-1:4242, web-2:77")
    assert entry.details["traces"] == [rows[0].pk, rows[1].pk]


@pytest.mark.parametrize("scope", ["process", "engine", "session"])
def test_each_scope_sends_what_it_names(tracked, as_operator, sent, traces_dir, scope):
    second_process(tracked.app, host="web-2", pid=77)
    form = {"scope": scope, "name": "one", "process": str(tracked.process.pk),
            "engine": "postgresql/shop", "session": str(tracked.session.pk)}
    assert as_operator.post(f"/apps/{tracked.app.pk}/traces/start/", form).status_code == 303
    trace = Trace.objects.get()
    extra = {"process": {}, "engine": {"engine": "postgresql/shop"},
             "session": {"session": "s1"}}[scope]
    assert sent == [control(tracked.process.pk, trace.pk, "start",
                            start_args(trace.pk, "one", **extra))]
    assert AuditLog.objects.get().target == {
        "process": "Recording 'one' of process web-1:4242",
        "engine": "Recording 'one' of engine postgresql/shop in web-1:4242",
        "session": "Recording 'one' of session s1 of web-1:4242"}[scope]


def test_an_engine_recording_without_a_process_reaches_every_process_with_it(
        tracked, as_operator, sent, traces_dir):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    as_operator.post(f"/apps/{tracked.app.pk}/traces/start/",
                     {"scope": "engine", "name": "db", "engine": "postgresql/shop"})
    assert [group for group, _ in sent] == [f"process-{tracked.process.pk}",
                                            f"process-{web2.pk}"]
    assert AuditLog.objects.get().result == "sent to 2 processes: web-1:4242, web-2:77"


@pytest.mark.parametrize("form, error", [
    ({"scope": "app", "name": "x", "seconds": "0"},
     "a recording lasts more than 0 and at most 3600 seconds (TRACE_MAX_SECONDS), not 0"),
    ({"scope": "app", "name": "x", "seconds": "soon"},
     "the length is a number of seconds, not &#x27;soon&#x27;"),
    ({"scope": "app", "name": " "}, "give the recording a name"),
    ({"scope": "process", "name": "x"}, "choose the process to record"),
    ({"scope": "engine", "name": "x", "engine": "mysql/other"},
     "no connected process of shop has an engine named mysql/other"),
    ({"scope": "session", "name": "x", "session": "999999"},
     "unknown session &#x27;999999&#x27; of shop"),
])
def test_a_recording_that_cannot_start_says_why_and_stores_nothing(
        tracked, as_operator, sent, traces_dir, form, error):
    response = as_operator.post(f"/apps/{tracked.app.pk}/traces/start/", form)
    assert response.status_code == 400
    assert f'<p class="error form-error" role="alert">{error}</p>' in response.content.decode()
    assert (Trace.objects.count(), AuditLog.objects.count(), sent) == (0, 0, [])


def test_nothing_to_record_when_no_process_is_connected(stored, as_operator, sent,
                                                        traces_dir):
    response = as_operator.post(f"/apps/{stored.app.pk}/traces/start/",
                                {"scope": "app", "name": "x"})
    assert response.status_code == 400
    assert "nothing to record: no process of shop is connected" in response.content.decode()
    assert Trace.objects.count() == 0


def test_an_ended_session_cannot_be_recorded(tracked, as_operator, sent, traces_dir):
    tracked.session.ended_at = timezone.now()
    tracked.session.save()
    response = as_operator.post(f"/apps/{tracked.app.pk}/traces/start/",
                                {"scope": "session", "name": "x",
                                 "session": str(tracked.session.pk)})
    assert "session s1 of web-1:4242 has ended" in response.content.decode()


def test_starting_and_stopping_need_the_permission_and_refusals_are_audited(
        tracked, logged_in, operator, sent, traces_dir):
    response = logged_in.post(f"/apps/{tracked.app.pk}/traces/start/",
                              {"scope": "app", "name": "checkout"})
    assert response.status_code == 403
    assert "Refused: you do not have the permission" in response.content.decode()
    assert Trace.objects.count() == 0
    started = traces.start(tracked.app, operator,
                           traces.Asked(scope="app", name="mine"))
    response = logged_in.post(f"/traces/{started.traces[0].pk}/stop/")
    assert response.status_code == 403
    assert Trace.objects.get().status == "recording"
    assert sent == []
    assert list(AuditLog.objects.order_by("pk").values_list(
        "actor_name", "action", "target", "result")) == [
        ("alice", "trace.start", "Recording 'checkout' (app)", NO_PERMISSION),
        ("olga", "trace.start", "Recording 'mine' of every process of shop",
         "sent to 1 process: web-1:4242"),
        ("alice", "trace.stop", "Recording 'mine' of every process of shop", NO_PERMISSION)]
    # they see the page read-only
    page = logged_in.get(f"/apps/{tracked.app.pk}/traces/").content.decode()
    assert 'id="record-form"' not in page and "Can change what agents track" in page
    assert 'button class="stop"' not in page


def test_posts_need_the_csrf_token(tracked, operator, sent, traces_dir):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post(f"/apps/{tracked.app.pk}/traces/start/",
                           {"scope": "app", "name": "checkout"})
    assert response.status_code == 403
    assert (Trace.objects.count(), AuditLog.objects.count(), sent) == (0, 0, [])
    assert client.get(f"/apps/{tracked.app.pk}/traces/start/").status_code == 405


def test_stop_asks_the_connected_processes_and_fails_the_others(tracked, operator,
                                                                as_operator, sent,
                                                                traces_dir):
    from dashboard import ingest

    web2 = second_process(tracked.app, host="web-2", pid=77)
    started = traces.start(tracked.app, operator, traces.Asked(scope="app", name="both"))
    ingest.mark_disconnected(web2.pk)
    first, second = sorted(started.traces, key=lambda t: t.process.host)
    response = as_operator.post(f"/traces/{second.pk}/stop/",
                                {"next": f"/traces/{second.pk}/"})
    assert (response.status_code, response["Location"]) == (303, f"/traces/{second.pk}/")
    assert sent == [control(tracked.process.pk, first.pk, "stop",
                            {"trace": str(first.pk), "action": "stop"})]
    rows = {t.process.host: t for t in Trace.objects.all()}
    assert (rows["web-1"].status, rows["web-1"].stopped_by.username) == ("recording", "olga")
    assert (rows["web-2"].status, rows["web-2"].reason) == (
        "failed", "stopped while its process was not connected: the lines it recorded "
                  "since were not received")
    entry = AuditLog.objects.get(action="trace.stop")
    assert (entry.target, entry.result) == (
        "Recording 'both' of every process of shop",
        "asked web-1:4242; failed (not connected): web-2:77")


def test_a_recording_whose_end_never_came_fails_after_its_limit(tracked, operator, view,
                                                                traces_dir):
    started = traces.start(tracked.app, operator,
                           traces.Asked(scope="app", name="lost", seconds=10))
    Trace.objects.update(started_at=timezone.now() - timedelta(seconds=71))
    html = view(f"/apps/{tracked.app.pk}/traces/")
    trace = Trace.objects.get(pk=started.traces[0].pk)
    assert (trace.status, trace.reason) == (
        "failed", "its end never arrived: the process stopped or lost its connection "
                  "before sending its last lines")
    assert f'data-trace="{trace.pk}" data-status="failed"' in html


# -- import, export, the trace's page -----------------------------------------------

@pytest.fixture
def recorded(tmp_path):
    """A trace of the scenario recorded in this process against SQLite."""
    def record(**kwargs) -> Path:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
        seed(engine)
        path = tmp_path / "checkout.jsonl"
        with tracker.record("checkout-flow", path, **kwargs):
            _scenario(engine)
        engine.dispose()
        return path
    return record


def upload(client, app, path: Path, name: str | None = None):
    with open(path, "rb") as handle:
        if name:
            from django.core.files.uploadedfile import SimpleUploadedFile
            handle = SimpleUploadedFile(name, handle.read())
        return client.post(f"/apps/{app.pk}/traces/import/", {"file": handle})


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_export_import_round_trip_is_equal(shop, logged_in, recorded, traces_dir):
    path = recorded()
    header, records = jsonl.read(path)
    original = [header, *records]
    response = upload(logged_in, shop.app, path)
    trace = Trace.objects.get()
    assert (response.status_code, response["Location"]) == (303, f"/traces/{trace.pk}/")
    assert (trace.status, trace.name, trace.scope, trace.process, trace.records,
            trace.bytes, trace.dropped, trace.started_by.username) == (
        "imported", "checkout-flow", "import", None, len(original), path.stat().st_size, 0,
        "alice")
    assert trace.header == header

    response = logged_in.get(f"/traces/{trace.pk}/download/jsonl/")
    assert (response.status_code, response["Content-Type"],
            response["Content-Disposition"]) == (
        200, "application/x-ndjson", f'attachment; filename="checkout-flow-{trace.pk}.jsonl"')
    data = body(response)
    assert data == path.read_bytes()
    copy = traces_dir / "copy.jsonl"
    copy.write_bytes(data)
    header_again, records_again = jsonl.read(copy)
    assert [header_again, *records_again] == original

    entry = AuditLog.objects.get()
    assert (entry.actor_name, entry.action, entry.target, entry.result) == (
        "alice", "trace.import", "checkout.jsonl as 'checkout-flow'",
        f"stored: {len(original)} records, {path.stat().st_size} bytes")


def test_chrome_and_otlp_downloads_parse(shop, logged_in, recorded, traces_dir):
    path = recorded(capture_parameters=True)
    upload(logged_in, shop.app, path)
    trace = Trace.objects.get()
    chrome = json.loads(body(logged_in.get(f"/traces/{trace.pk}/download/chrome/")))
    assert chrome == to_chrome(*jsonl.read(path))
    names = [e["args"]["name"] for e in chrome["traceEvents"] if e["name"] == "thread_name"]
    assert names == ["connection #1 (sqlite/shop.db)", "MainThread"]
    response = logged_in.get(f"/traces/{trace.pk}/download/otlp/")
    assert (response["Content-Type"], response["Content-Disposition"]) == (
        "application/json", f'attachment; filename="checkout-flow-{trace.pk}.otlp.json"')
    document = json.loads(body(response))
    assert document == to_otlp(*jsonl.read(path))
    message = _otlp_message(document)
    spans = list(message.resource_spans[0].scope_spans[0].spans)
    assert [s.name for s in spans if s.kind == 1 and s.name.startswith("transaction")] == [
        "transaction t1", "transaction t2"]
    assert len([s for s in spans if s.kind == 3]) == 8
    assert b"h-dana" not in json.dumps(document).encode()


def test_downloads_need_a_login_and_a_known_format(shop, logged_in, recorded, traces_dir):
    upload(logged_in, shop.app, recorded())
    trace = Trace.objects.get()
    assert logged_in.get(f"/traces/{trace.pk}/download/pdf/").status_code == 404
    anonymous = Client().get(f"/traces/{trace.pk}/download/jsonl/")
    assert (anonymous.status_code, anonymous["Location"]) == (
        302, f"/accounts/login/?next=/traces/{trace.pk}/download/jsonl/")


def test_a_recording_without_lines_has_nothing_to_download(tracked, operator, logged_in,
                                                           traces_dir):
    started = traces.start(tracked.app, operator, traces.Asked(scope="app", name="new"))
    pk = started.traces[0].pk
    response = logged_in.get(f"/traces/{pk}/download/chrome/")
    assert (response.status_code, response.content) == (409, b"This trace has no data yet.")
    page = logged_in.get(f"/traces/{pk}/").content.decode()
    assert "Nothing to show: no line received yet." in page


def test_under_asgi_downloads_stream_from_an_async_iterator(shop, recorded, traces_dir,
                                                           alice):
    from asgiref.sync import async_to_sync
    from django.test import AsyncRequestFactory

    from dashboard.views.traces import trace_download

    path = recorded()
    trace = _import(shop.app, path, alice)
    request = AsyncRequestFactory().get(f"/traces/{trace.pk}/download/chrome/")
    request.user = alice
    response = trace_download(request, trace.pk, "chrome")
    assert (response.streaming, response.is_async) == (True, True)

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = async_to_sync(read)()
    assert json.loads(data) == to_chrome(*jsonl.read(path))
    # Django reads a synchronous iterator to its end (into memory) under ASGI, and warns
    assert not [w for w in caught if "StreamingHttpResponse" in str(w.message)]


def _import(app, path: Path, user) -> Trace:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return traces_store.import_file(app.pk, SimpleUploadedFile(path.name, path.read_bytes()),
                                    user)


def lanes(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<div class="tl-row lane (\w+)" data-lane="(\w+)">', html)


def test_the_trace_page_shows_the_timeline_statements_and_flush_changes(
        shop, logged_in, recorded, traces_dir):
    upload(logged_in, shop.app, recorded())
    trace = Trace.objects.get()
    html = logged_in.get(f"/traces/{trace.pk}/").content.decode()
    tid = json.loads(traces_store.file_of(trace).read_text().splitlines()[3])["tid"]
    assert lanes(html) == [("thread", f"t{tid}"), ("connection", "c1")]
    spans = re.findall(r'<a class="span (\w+) ?(\w*) row-(\d)"', html)
    assert sorted(set(spans)) == [("flush", "", "1"), ("held", "", "0"),
                                  ("lazy_load", "", "2"), ("statement", "", "1"),
                                  ("statement", "", "2"), ("transaction", "commit", "0"),
                                  ("transaction", "rollback", "0")]
    assert [kind for kind, _, _ in spans].count("statement") == 16  # thread and connection
    assert [kind for kind, _, _ in spans].count("held") == 2
    assert re.findall(r'<tr id="st-(\d+)" class="statement">', html) == [
        str(n) for n in range(1, 9)]
    assert re.findall(r'<span class="span-name">([^<]+)</span>', html) == [
        "SELECT retort_order", "SELECT retort_customer", "SELECT retort_customer",
        "UPDATE retort_customer", "INSERT retort_customer", "DELETE retort_order",
        "SELECT retort_order", "UPDATE retort_order"]
    assert "bind parameters not captured" in html and "<th>parameters</th>" not in html
    changes = re.findall(r'<div class="change (\w+)" data-class="(\w+)" '
                         r'data-identity="(\w*)">', html)
    assert changes == [("insert", "Customer", ""), ("update", "Customer", "1"),
                       ("delete", "Order", "3"), ("update", "Order", "1")]
    update = html.split('data-class="Customer" data-identity="1">', 1)[1].split("</table>")[0]
    rows = re.findall(r'<tr class="attribute" data-attribute="(\w+)"><th>\w+</th>\s*'
                      r'<td class="old"><code>([^<]*)</code></td><td class="arrow">→</td>'
                      r'<td class="new"><code>([^<]*)</code></td>', update)
    assert rows == [("name", "&#x27;Ann&#x27;", "&#x27;Annie&#x27;"),
                    ("password_hash", "••••••", "••••••")]
    assert "new-secret-hash" not in html and "h-dana" not in html
    assert ("<strong>8</strong> statements" in html
            and "<strong>2</strong> transactions (1 rolled back)" in html)


def test_parameters_are_shown_only_as_the_trace_has_them(shop, logged_in, recorded,
                                                         traces_dir):
    upload(logged_in, shop.app, recorded(capture_parameters=True))
    html = logged_in.get(f"/traces/{Trace.objects.get().pk}/").content.decode()
    assert "bind parameters captured (redacted by the agent)" in html
    params = re.findall(r'<td class="params"><code>([^<]*)</code></td>', html)
    assert params[4] == ('{&quot;email&quot;: &quot;&#x27;d@example.com&#x27;&quot;, '
                         '&quot;name&quot;: &quot;&#x27;Dana&#x27;&quot;, '
                         '&quot;password_hash&quot;: &quot;••••••&quot;}')
    assert "h-dana" not in html and "new-secret-hash" not in html


@pytest.mark.parametrize("content, message", [
    (b"not json\n", "bad.jsonl: line 1 is not JSON: not a Retort trace"),
    (b'{"type": "header", "format": "retort-trace", "version": 9}\n',
     "bad.jsonl: trace format version 9 is not supported (this version reads 1)"),
    (b'{"type": "header", "format": "retort-trace", "version": 1}\n',
     "bad.jsonl: line 1: header: name missing"),
    (json.dumps({"type": "header", "format": "retort-trace", "version": 1, "name": "x",
                 "started": 1.0, "process": {"host": "h", "pid": 1, "app": "a",
                                             "python": "3"}}).encode()
     + b'\n{"type": "statement", "ts": 1}\n', "bad.jsonl: line 2: statement: dur missing"),
    (json.dumps({"type": "header", "format": "retort-trace", "version": 1, "name": "x",
                 "started": 1.0, "process": {"host": "h", "pid": 1, "app": "a",
                                             "python": "3"}}).encode() + b"\n{oops\n",
     "bad.jsonl: line 2 is not JSON"),
    (json.dumps({"type": "header", "format": "retort-trace", "version": 1, "name": "x",
                 "started": 1e300, "process": {"host": "h", "pid": 1, "app": "a",
                                               "python": "3"}}).encode() + b"\n",
     "bad.jsonl: header.started is not a time (1e+300)"),
    (b"\xff\xfe\x00", "bad.jsonl: line 1 is not JSON: not a Retort trace"),
])
def test_a_bad_upload_is_refused_with_the_reason_and_nothing_stored(
        shop, logged_in, traces_dir, tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    response = upload(logged_in, shop.app, bad)
    assert response.status_code == 400
    assert (f'<p class="error form-error" role="alert">{message}</p>'
            in response.content.decode().replace("&#x27;", "'"))
    assert Trace.objects.count() == 0
    assert [p for p in traces_dir.rglob("*") if p.is_file()] == []
    entry = AuditLog.objects.get()
    assert (entry.action, entry.target, entry.result) == (
        "trace.import", "bad.jsonl", f"refused: {message}")


def test_an_upload_without_a_file_or_too_large_is_refused(shop, logged_in, recorded,
                                                          traces_dir, settings):
    response = logged_in.post(f"/apps/{shop.app.pk}/traces/import/", {})
    assert "choose a JSON Lines trace file to upload" in response.content.decode()
    path = recorded()
    settings.RETORT = {"TRACES_DIR": str(traces_dir), "TRACE_MAX_BYTES": 1000}
    response = upload(logged_in, shop.app, path)
    assert response.status_code == 400
    assert (f"checkout.jsonl: {path.stat().st_size} bytes is more than this dashboard "
            f"stores per trace (1000 bytes, TRACE_MAX_BYTES)") in response.content.decode()
    assert Trace.objects.count() == 0


def test_an_app_keeps_its_newest_traces(shop, logged_in, recorded, traces_dir, settings):
    settings.RETORT = {"TRACES_DIR": str(traces_dir), "TRACES_PER_APP": 2}
    path = recorded()
    for _ in range(3):
        upload(logged_in, shop.app, path)
    kept = list(Trace.objects.order_by("pk"))
    assert len(kept) == 2
    assert sorted(p.relative_to(traces_dir).as_posix() for p in traces_dir.rglob("*.jsonl")) \
        == sorted(t.path for t in kept)


def test_the_traces_page_lists_them(shop, logged_in, recorded, traces_dir):
    upload(logged_in, shop.app, recorded())
    trace = Trace.objects.get()
    html = logged_in.get(f"/apps/{shop.app.pk}/traces/").content.decode()
    assert f'<a class="trace-link" href="/traces/{trace.pk}/">checkout-flow</a>' in html
    assert '<span class="badge trace-status imported">imported</span>' in html
    assert (f'<a href="/traces/{trace.pk}/download/jsonl/">jsonl</a> · '
            f'<a href="/traces/{trace.pk}/download/chrome/">chrome</a> · '
            f'<a href="/traces/{trace.pk}/download/otlp/">otlp</a>') in html
    assert f'ws-connect="/ws/live/app/{shop.app.pk}/traces/"' in html


def test_the_timeline_spans_the_events_with_round_ticks(shop, alice, traces_dir, tmp_path):
    from dashboard import traces_timeline

    from . import trace_records as tr

    path = tmp_path / "hand.jsonl"
    path.write_bytes(b"".join(jsonl.line(r) for r in [tr.header(), *tr.BODY, tr.end()]))
    timeline = traces_timeline.build(_import(shop.app, path, alice))
    # from the checkout (1 s after the start) to the checkin (2 s): the end line at
    # 2.5 s is not drawn
    assert (timeline.begin, timeline.duration) == (1.0, 1.0)
    assert timeline.ticks == [(0.0, "1.00 s"), (20.0, "1.20 s"), (40.0, "1.40 s"),
                              (60.0, "1.60 s"), (80.0, "1.80 s"), (100.0, "2.00 s")]
    thread, connection = timeline.lanes
    assert (thread.name, thread.detail, connection.name, connection.detail) == (
        "worker-1", f"tid {tr.TID}", "connection #1", "postgresql/shop")
    assert [(s.kind, s.left, s.width, s.row, s.anchor, s.css) for s in thread.spans] == [
        ("statement", 25.0, 0.2, 2, "st-1", ""),
        ("lazy_load", 30.0, 0.0, 2, "", ""),
        ("flush", 50.0, 0.4, 1, "fl-1", ""),
        ("statement", 50.1, 0.1, 2, "st-2", ""),
        ("transaction", 0.0, 100.0, 0, "", "commit")]
    assert [(s.kind, s.left, s.width, s.label) for s in connection.spans] == [
        ("statement", 25.0, 0.2, "SELECT customer"),
        ("statement", 50.1, 0.1, "UPDATE customer"),
        ("held", 0.0, 100.0, "held by worker-1")]
    (counter,) = timeline.counters
    assert (counter.engine, counter.peak, counter.path) == (
        "postgresql/shop", 1, "M0 100.0 H0.0 V4.0 H1000.0 V100.0 H1000 V100.0")
    assert timeline.counts == {"statement": 2, "transaction": 1, "flush": 1, "lazy_load": 1,
                               "finding": 0, "checkout": 1, "checkin": 1, "error": 0,
                               "rollback": 0, "change": 1}
    assert timeline.flushes[0]["changes"] == [
        {"op": "update", "class": "Customer", "identity": "1",
         "rows": [{"kind": "attribute", "attribute": "name", "old": "'Ann'", "new": "'Annie'"},
                  {"kind": "attribute", "attribute": "password_hash", "old": "••••••",
                   "new": "••••••"}]}]


def test_a_transaction_ended_by_a_close_is_drawn_with_its_outcome(shop, alice, traces_dir,
                                                                   tmp_path):
    # a read-only session closed without commit: neither rolled back nor an error
    from dashboard import traces_timeline

    from . import trace_records as tr

    body = [dict(r, phase="close") if r.get("phase") == "commit" else r for r in tr.BODY]
    path = tmp_path / "closed.jsonl"
    path.write_bytes(b"".join(jsonl.line(r) for r in [tr.header(), *body, tr.end()]))
    timeline = traces_timeline.build(_import(shop.app, path, alice))
    (txn,) = [s for s in timeline.lanes[0].spans if s.kind == "transaction"]
    assert (txn.css, txn.title) == (
        "close", "transaction of session s1 · 1.00 s · closed without commit or rollback "
                 "(the pool resets the connection)")
    assert (timeline.counts["transaction"], timeline.counts["rollback"]) == (1, 0)


def test_a_long_trace_draws_and_lists_only_the_first_spans_and_rows(
        shop, alice, traces_dir, tmp_path, settings, logged_in):
    from dashboard import traces_timeline

    from . import trace_records as tr

    path = tmp_path / "hand.jsonl"
    path.write_bytes(b"".join(jsonl.line(r) for r in [tr.header(), *tr.BODY, tr.end()]))
    trace = _import(shop.app, path, alice)
    settings.RETORT = {"TRACES_DIR": str(traces_dir), "TRACE_TIMELINE_SPANS": 3,
                       "TRACE_TABLE_ROWS": 1}
    timeline = traces_timeline.build(trace)
    assert (timeline.spans_drawn, timeline.spans_total, timeline.clipped) == (3, 8, True)
    assert (timeline.begin, round(timeline.duration, 6)) == (1.25, 0.05)
    assert (len(timeline.statements), len(timeline.flushes), timeline.counts["statement"]) \
        == (1, 1, 2)
    html = logged_in.get(f"/traces/{trace.pk}/").content.decode()
    assert "the first 3 of 8 spans (download the trace for all of it)" in html
    assert "(2; the first 1 are listed)" in html


def test_a_transaction_without_its_end_is_drawn_to_the_sessions_last_event(
        shop, alice, traces_dir, tmp_path):
    from dashboard import traces_timeline

    from . import trace_records as tr

    begin, select, checkin = tr.BODY[3], tr.BODY[4], tr.BODY[-1]
    # s1 is closed (no commit, no rollback: its connection is returned), used again,
    # and still open when the trace ends
    records = [tr.header(), *tr.BODY[:2], begin, select, {**checkin, "ts": checkin["ts"]},
               {**begin, "ts": begin["ts"] + 2}, {**select, "ts": select["ts"] + 2},
               tr.end()]
    path = tmp_path / "open.jsonl"
    path.write_bytes(b"".join(jsonl.line(r) for r in records))
    timeline = traces_timeline.build(_import(shop.app, path, alice))
    txns = [s for s in timeline.lanes[0].spans if s.kind == "transaction"]
    assert [(s.start, round(s.dur, 6), s.css) for s in txns] == [
        (1.0, 1.0, "open"), (3.0, 0.252, "open")]
    assert [s.title for s in txns] == [
        "transaction of session s1 · 1.00 s · no commit or rollback in the trace: ended "
        "when the session returned its connection (closed)",
        "transaction of session s1 · 252.0 ms · no commit or rollback in the trace (the "
        "session was closed, or the recording stopped first); drawn to its last event"]


def test_a_process_marked_connected_but_silent_is_not_recorded(tracked, as_operator, sent,
                                                               traces_dir):
    from dashboard.models import Process

    silent = second_process(tracked.app, host="web-2", pid=77)
    Process.objects.filter(pk=silent.pk).update(
        last_seen=timezone.now() - timedelta(seconds=11))  # STALE_AFTER_SECONDS is 10
    as_operator.post(f"/apps/{tracked.app.pk}/traces/start/", {"scope": "app", "name": "x"})
    assert [group for group, _ in sent] == [f"process-{tracked.process.pk}"]
    response = as_operator.post(f"/apps/{tracked.app.pk}/traces/start/",
                                {"scope": "process", "name": "x", "process": str(silent.pk)})
    assert "nothing to record: process web-2:77 is not connected" in response.content.decode()


def test_a_traces_file_goes_with_it_and_with_its_app(shop, logged_in, recorded, traces_dir,
                                                     admin_client):
    path = recorded()
    for _ in range(2):
        upload(logged_in, shop.app, path)
    first, second = Trace.objects.order_by("pk")
    files = [traces_store.file_of(first), traces_store.file_of(second)]
    assert [f.exists() for f in files] == [True, True]
    response = admin_client.post(f"/admin/dashboard/trace/{first.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert [f.exists() for f in files] == [False, True]
    shop.app.delete()
    assert [f.exists() for f in files] == [False, False]
    assert admin_client.get("/admin/dashboard/trace/").status_code == 200
    assert admin_client.get("/admin/dashboard/trace/add/").status_code == 403
