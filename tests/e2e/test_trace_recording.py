"""End to end over HTTP and real websockets: a real daphne, a real instrumented
application in another process (tests/e2e/controls_app.py). An operator starts a
recording of the app, the app renames a customer and queries, the operator stops the
recording; the agent's lines arrive over its socket, the trace completes, and its three
downloads hold exactly what the app did (the OTLP parsed by the official protobuf
definitions). The audit log says who started and stopped it."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.parse
import urllib.request
from typing import Any

from tests.tracker.test_traces import _otlp_message

from .conftest import PASSWORD, USERNAME
from .reading import rows as _rows, until as _until


class Browser:
    """A logged-in HTTP client with Django's CSRF cookie (urllib, no redirects
    followed for POSTs)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def get(self, path: str) -> tuple[int, bytes, Any]:
        try:
            with self.opener.open(self.base + path, timeout=30) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, bytes, Any]:
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": self.csrf()}).encode()
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Referer": self.base + path})
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def log_in(self) -> None:
        self.get("/accounts/login/")
        status, _, headers = self.post("/accounts/login/", {"username": USERNAME,
                                                            "password": PASSWORD})
        assert (status, headers["Location"]) == (302, "/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def _trace(dashboard, pk: int) -> dict[str, Any]:
    (row,) = _rows(dashboard, "select status, seq, records, reason, gaps, duplicates "
                              "from dashboard_trace where id = ?", pk)
    return dict(row)


def test_a_recording_started_and_stopped_over_http_holds_what_the_app_did(
        dashboard, start_app, tmp_path):
    dashboard.manage("operator", USERNAME)
    app = start_app(script="controls_app.py", db=str(tmp_path / "traced.sqlite3"))
    pid = int(dict(p.split("=", 1) for p in app.send("query").split())["pid"])
    (app_row,) = _rows(dashboard, "select id from dashboard_app where name = 'e2e-app'")
    app_pk = app_row["id"]
    assert _until(lambda: _rows(dashboard, "select id from dashboard_process where pid = ? "
                                           "and connected", pid))
    client = Browser(dashboard.url)
    client.log_in()

    status, _, headers = client.post(f"/apps/{app_pk}/traces/start/",
                                     {"scope": "app", "name": "e2e", "seconds": "60"})
    assert (status, headers["Location"]) == (303, f"/apps/{app_pk}/traces/")
    (trace,) = _rows(dashboard, "select t.id from dashboard_trace t join dashboard_process p "
                                "on t.process_id = p.id where p.pid = ?", pid)
    pk = trace["id"]
    # the header comes once the agent applied the control: it records from then on
    assert _until(lambda: _trace(dashboard, pk)["seq"] >= 1)

    app.send("rename Zed")
    app.send("query")
    time.sleep(0.5)  # the trace's writer hands its lines to the worker every 0.2 s
    status, _, headers = client.post(f"/traces/{pk}/stop/", {})
    assert (status, headers["Location"]) == (303, f"/apps/{app_pk}/traces/")
    final = _until(lambda: _trace(dashboard, pk)["status"] == "complete"
                   and _trace(dashboard, pk))
    assert final and (final["reason"], final["gaps"], final["duplicates"]) == (
        "stopped from the dashboard", 0, 0)

    status, data, headers = client.get(f"/traces/{pk}/download/jsonl/")
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) == final["records"]
    header, *body, end = records
    assert (header["type"], header["name"], header["trace"], header["process"]["pid"],
            header["process"]["app"]) == ("header", "e2e", str(pk), pid, "e2e-app")
    assert (end["type"], end["dropped"], end["events"]) == ("end", 0, len(body))
    statements = [r["sql"] for r in body if r["type"] == "statement"]
    assert [s.split()[0] for s in statements] == [
        "SELECT", "UPDATE", "select", "select", "SELECT", "select", "select"]
    assert statements[1].startswith("UPDATE retort_customer SET name=")
    phases = [r["phase"] for r in body if r["type"] == "transaction"]
    # rename commits; query's session is closed without commit or rollback
    assert phases == ["begin", "commit", "begin", "close"]
    (flush,) = [r for r in body if r["type"] == "flush"]
    assert flush["changes"] == [{"op": "update", "class": "Customer", "identity": "1",
                                 "attributes": {"name": ["'Ann'", "'Zed'"]}}]

    status, data, _ = client.get(f"/traces/{pk}/download/chrome/")
    chrome = json.loads(data)
    spans = [e for e in chrome["traceEvents"] if e["ph"] == "X" and e["cat"] == "statement"]
    assert len(spans) == 2 * len(statements)  # on the thread's track and the connection's
    status, data, _ = client.get(f"/traces/{pk}/download/otlp/")
    message = _otlp_message(json.loads(data))
    names = [s.name for s in message.resource_spans[0].scope_spans[0].spans]
    assert "UPDATE retort_customer" in names

    audit = [tuple(r) for r in _rows(dashboard, "select actor_name, action, target, result "
                                                "from dashboard_auditlog where action like "
                                                "'trace.%' order by id")]
    assert audit[0][:3] == (USERNAME, "trace.start", "Recording 'e2e' of every process of "
                                                      "e2e-app")
    assert re.fullmatch(r"sent to \d+ process(es)?: .*:" + str(pid) + r"\b.*", audit[0][3])
    assert audit[1][:2] == (USERNAME, "trace.stop")
    assert f":{pid}" in audit[1][3]
