"""``dashboard.control``: snapshot arguments from a page's GET parameters, their
canonical key, request ids, and when a page's request reaches an agent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.http import QueryDict

from dashboard import control, groups, ingest
from dashboard.models import SessionSnapshot

from .conftest import NOW

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("query, args", [
    ("", {"offset": 0, "limit": 100}),
    ("page=3", {"offset": 200, "limit": 100}),
    ("class=Order&state=persistent&modified=yes",
     {"offset": 0, "limit": 100, "class": "Order", "state": "persistent", "modified": True}),
    ("modified=no", {"offset": 0, "limit": 100, "modified": False}),
    # invalid values are ignored, never errors
    ("page=0&state=frozen&modified=maybe&class=", {"offset": 0, "limit": 100}),
    ("page=-2", {"offset": 0, "limit": 100}),
    ("page=abc", {"offset": 0, "limit": 100}),
    ("page=99999999999999999999", {"offset": 0, "limit": 100}),
    ("class=%20Order%20", {"offset": 0, "limit": 100, "class": "Order"}),
])
def test_snapshot_args_from_get_parameters(query, args):
    assert control.snapshot_args(QueryDict(query)) == args


def test_long_class_names_are_cut():
    assert control.snapshot_args({"class": "C" * 500})["class"] == "C" * 200


def test_page_size_follows_the_setting_up_to_the_protocol_limit(settings):
    settings.RETORT = {"ENTITIES_PER_PAGE": 20}
    assert control.snapshot_args({"page": "2"}) == {"offset": 20, "limit": 20}
    settings.RETORT = {"ENTITIES_PER_PAGE": 10_000}
    assert control.snapshot_args({}) == {"offset": 0, "limit": 500}


def test_args_key_is_a_sorted_query_string():
    args = {"offset": 0, "limit": 100, "state": "persistent", "modified": True,
            "class": "Line Item/2"}
    key = control.args_key(args)
    assert key == "class=Line+Item%2F2&limit=100&modified=true&offset=0&state=persistent"
    assert control.args_from_key(key) == args


@pytest.mark.parametrize("key", [
    "", "limit=100", "offset=0&limit=100",  # not sorted: not a key args_key makes
    "limit=100&offset=-1", "limit=100&offset=0&state=frozen", "limit=100&offset=0&x=1",
    "limit=100&modified=maybe&offset=0",
])
def test_args_from_a_key_args_key_does_not_make_is_none(key):
    assert control.args_from_key(key) is None


def test_request_ids_round_trip():
    key = control.args_key({"offset": 100, "limit": 100, "class": "Order"})
    request = control.request_id(12, key)
    assert request == "snapshot:12:class=Order&limit=100&offset=100"
    assert control.parse_request_id(request) == (
        12, key, {"offset": 100, "limit": 100, "class": "Order"})


@pytest.mark.parametrize("request_id", [
    "c1", "snapshot", "snapshot:x:limit=100&offset=0", "snapshot:12", "toggle:12:limit=100&offset=0",
    "snapshot:12:limit=100&offset=0&bogus=1", "snapshot:" + "9" * 19 + ":limit=100&offset=0",
])
def test_ids_that_are_no_snapshot_request(request_id):
    assert control.parse_request_id(request_id) is None


# -- snapshot_request ---------------------------------------------------------------

def test_a_request_records_the_snapshot_row_and_names_it(tracked, frozen):
    args = control.snapshot_args({"class": "Order"})
    process_pk, message = control.snapshot_request(tracked.session.pk, args)
    assert process_pk == tracked.process.pk
    assert message == {
        "type": groups.CONTROL,
        "id": f"snapshot:{tracked.session.pk}:class=Order&limit=100&offset=0",
        "action": "snapshot",
        "args": {"session": "s1", "offset": 0, "limit": 100, "class": "Order"},
    }
    snapshot = SessionSnapshot.objects.get()
    assert (snapshot.session_id, snapshot.args_key, snapshot.args) == (
        tracked.session.pk, "class=Order&limit=100&offset=0",
        {"offset": 0, "limit": 100, "class": "Order"})
    assert snapshot.requested_at == NOW
    assert snapshot.taken_at is None


def test_a_second_viewer_within_half_the_interval_does_not_ask_again(
        tracked, monkeypatch, settings):
    from django.utils import timezone

    settings.RETORT = {"SNAPSHOT_SECONDS": 1.0}
    args = control.snapshot_args({})
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    assert control.snapshot_request(tracked.session.pk, args) is not None
    monkeypatch.setattr(timezone, "now", lambda: NOW + timedelta(seconds=0.4))
    assert control.snapshot_request(tracked.session.pk, args) is None
    monkeypatch.setattr(timezone, "now", lambda: NOW + timedelta(seconds=0.6))
    assert control.snapshot_request(tracked.session.pk, args) is not None
    assert SessionSnapshot.objects.get().requested_at == NOW + timedelta(seconds=0.6)


def test_no_request_for_an_ended_session_or_a_disconnected_process(tracked):
    args = control.snapshot_args({})
    ingest.mark_disconnected(tracked.process.pk)
    assert control.snapshot_request(tracked.session.pk, args) is None
    assert control.snapshot_request(tracked.session.pk + 1000, args) is None
    assert SessionSnapshot.objects.count() == 0


def test_only_the_newest_snapshots_of_a_session_are_kept(tracked, settings, monkeypatch):
    from django.utils import timezone

    settings.RETORT = {"SNAPSHOTS_PER_SESSION": 2}
    for page in (1, 2, 3):
        monkeypatch.setattr(timezone, "now", lambda page=page: NOW + timedelta(seconds=page))
        control.snapshot_request(tracked.session.pk, control.snapshot_args({"page": page}))
    assert list(SessionSnapshot.objects.order_by("args_key").values_list(
        "args_key", flat=True)) == ["limit=100&offset=100", "limit=100&offset=200"]
