"""``dashboard.toggles``: validation, which processes a change reaches, the answers
of agents, what a (re)connecting process is sent, and the audit of all of it."""

from __future__ import annotations

import pytest

from dashboard import groups, toggles
from dashboard.models import AuditLog, Toggle, ToggleDelivery
from tracker.switches import SwitchError

from .conftest import second_process

pytestmark = pytest.mark.django_db

ENGINE = "postgresql/shop"  # the engine name of conftest's hello


def deliveries() -> list[tuple]:
    return list(ToggleDelivery.objects.order_by("toggle_id", "process__host")
                .values_list("toggle_id", "process__host", "revision", "status", "reason"))


def audit() -> list[tuple]:
    return list(AuditLog.objects.order_by("pk")
                .values_list("actor_name", "action", "target", "result"))


# -- validation ---------------------------------------------------------------------

@pytest.mark.parametrize("scope, target, switch, value, message", [
    ("app", "", "ignore_changes", True,
     "ignore_changes cannot be set per app (scopes: entity)"),
    ("engine", "", "statements", False, "a engine setting needs a target"),
    ("app", "x", "statements", False, "a app setting takes no target"),
    ("engine", ENGINE, "sampling", 0, "expected a fraction above 0 and at most 1, not 0"),
    ("engine", ENGINE, "statements", "maybe", "expected true or false, not 'maybe'"),
    ("app", "", "thresholds", {"n_plus_two": 3},
     None),  # the message lists the known names: checked by its start below
    ("app", "", "teleport", True, "unknown switch 'teleport'"),
    ("galaxy", "", "statements", True, "unknown scope 'galaxy'"),
])
def test_invalid_settings_are_refused_with_the_reason_and_nothing_is_stored(
        tracked, operator, scope, target, switch, value, message):
    with pytest.raises(SwitchError) as refused:
        toggles.change(tracked.app, operator, scope=scope, target=target, switch=switch,
                       value=value)
    if message is None:
        assert str(refused.value).startswith("unknown threshold 'n_plus_two' (known: ")
    else:
        assert str(refused.value) == message
    assert Toggle.objects.count() == 0
    assert ToggleDelivery.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_process_and_session_settings_need_a_process_of_the_app(tracked, operator):
    with pytest.raises(SwitchError, match="^a session setting needs a process$"):
        toggles.change(tracked.app, operator, scope="session", target="s1",
                       switch="snapshots", value=False)
    with pytest.raises(SwitchError) as refused:
        toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                       switch="statements", value=False, process=tracked.process)
    assert str(refused.value) == ("a engine setting applies to every process of shop: "
                                  "choose no process")
    from dashboard.models import App
    other = App.objects.create(name="other")
    with pytest.raises(SwitchError, match=r"^process web-1:4242 is not a process of other$"):
        toggles.change(other, operator, scope="process", target="", switch="statements",
                       value=False, process=tracked.process)
    assert Toggle.objects.count() == 0


def test_removing_a_setting_that_does_not_exist_is_refused(tracked, operator):
    with pytest.raises(SwitchError, match="^there is no such setting to remove$"):
        toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                       switch="statements", value=None)


@pytest.mark.parametrize("switch, text, value", [
    ("statements", "off", False), ("statements", "On", True), ("detectors", "no", False),
    ("statements", "maybe", "maybe"),
    ("locations", "pressure", "pressure"),
    ("sampling", "0.25", 0.25), ("sampling", "a lot", "a lot"),
    ("thresholds", "slow_statement_seconds=0.5, n_plus_one=4",
     {"slow_statement_seconds": 0.5, "n_plus_one": 4.0}),
    ("thresholds", '{"slow_statement_seconds": 2}', {"slow_statement_seconds": 2}),
])
def test_form_values(switch, text, value):
    assert toggles.parse_value(switch, text) == value


def test_form_values_that_cannot_be_read():
    with pytest.raises(SwitchError, match=r"^choose a value \(or remove the setting\)$"):
        toggles.parse_value("statements", " ")
    with pytest.raises(SwitchError, match="^expected name=number pairs"):
        toggles.parse_value("thresholds", "slow")


# -- changes ------------------------------------------------------------------------

def test_an_engine_toggle_goes_to_every_connected_process_of_the_app(tracked, operator):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    second_process(tracked.app, host="web-3", pid=78, connected=False)

    change = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False)

    toggle = Toggle.objects.get()
    assert (toggle.scope, toggle.target, toggle.switch, toggle.value, toggle.revision,
            toggle.process_id, toggle.updated_by) == (
        "engine", ENGINE, "statements", False, 1, None, operator)
    assert [p.host for p in change.processes] == ["web-1", "web-2"]
    assert deliveries() == [(toggle.pk, "web-1", 1, "pending", ""),
                            (toggle.pk, "web-2", 1, "pending", "")]
    message = {"type": "agent.control", "id": f"toggle:{toggle.pk}:1", "action": "set",
               "args": {"scope": "engine", "target": ENGINE, "switch": "statements",
                        "value": False}}
    assert change.messages == [(groups.process(tracked.process.pk), message),
                               (groups.process(web2.pk), message)]
    assert audit() == [("olga", "toggle.set",
                        "Statements for engine postgresql/shop: not set → off",
                        "sent to 2 processes: web-1:4242, web-2:77")]
    entry = AuditLog.objects.get()
    assert entry.app == tracked.app
    assert entry.details == {"toggle": toggle.pk, "revision": 1, "scope": "engine",
                             "target": ENGINE, "switch": "statements", "process": None,
                             "old": None, "new": False,
                             "processes": ["web-1:4242", "web-2:77"]}


def test_a_session_toggle_goes_only_to_its_process(tracked, operator):
    second_process(tracked.app, host="web-2", pid=77)
    change = toggles.change(tracked.app, operator, scope="session", target="s1",
                            switch="snapshots", value=False, process=tracked.process)
    toggle = change.toggle
    assert [p.pk for p in change.processes] == [tracked.process.pk]
    assert deliveries() == [(toggle.pk, "web-1", 1, "pending", "")]
    assert [group for group, _ in change.messages] == [groups.process(tracked.process.pk)]
    assert audit()[-1][2:] == ("Entity snapshots for session s1 of web-1:4242: not set → off",
                               "sent to 1 process: web-1:4242")


def test_a_toggle_for_a_disconnected_process_is_stored_for_its_return(tracked, operator):
    from dashboard import ingest
    ingest.mark_disconnected(tracked.process.pk)
    tracked.process.refresh_from_db()
    change = toggles.change(tracked.app, operator, scope="process", target="",
                            switch="detectors", value=False, process=tracked.process)
    assert change.messages == []
    assert deliveries() == []
    assert audit()[-1][2:] == (
        "Detectors for process web-1:4242: not set → off",
        "stored: web-1:4242 is not connected; sent when it reconnects")


def test_no_connected_process(shop, operator):
    change = toggles.change(shop.app, operator, scope="app", target="", switch="sampling",
                            value=0.5)
    assert change.messages == []
    assert audit() == [("olga", "toggle.set", "Statement sampling for every process of shop: "
                        "not set → 0.5",
                        "stored: no process of shop is connected; sent when one connects")]


def test_changing_again_bumps_the_revision_and_makes_it_pending_again(tracked, operator):
    first = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                           switch="statements", value=False)
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{first.toggle.pk}:1",
                                           "status": "applied"})
    second = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=True)
    assert second.toggle.pk == first.toggle.pk
    assert second.old is False
    assert deliveries() == [(first.toggle.pk, "web-1", 2, "pending", "")]
    assert second.messages[0][1]["id"] == f"toggle:{first.toggle.pk}:2"
    assert audit()[-1][2] == "Statements for engine postgresql/shop: off → on"


def test_removal_is_sent_with_no_value_and_audited(tracked, operator):
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=False)
    change = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=None)
    toggle = Toggle.objects.get()
    assert (toggle.value, toggle.revision) == (None, 2)
    assert change.messages[0][1]["args"] == {"scope": "engine", "target": ENGINE,
                                             "switch": "statements", "value": None}
    assert audit()[-1] == ("olga", "toggle.remove",
                           "Statements for engine postgresql/shop: off → not set",
                           "sent to 1 process: web-1:4242")


def test_refused_attempts_are_audited(tracked, alice):
    entry = toggles.refuse(tracked.app, alice, scope="entity", target="Order",
                           switch="ignore_changes", value=True)
    assert (entry.actor_name, entry.action, entry.target, entry.result) == (
        "alice", "toggle.set", "Ignore changes for entity class Order: → on",
        "refused: you do not have the permission to change what agents track "
        "(dashboard.operate_agents; ask an admin to add you to the Operators group)")
    assert Toggle.objects.count() == 0


def test_the_migrations_make_the_operators_group_with_the_permission():
    from django.contrib.auth.models import Group
    group = Group.objects.get(name="Operators")
    assert [(p.content_type.app_label, p.codename, p.name) for p in group.permissions.all()] \
        == [("dashboard", "operate_agents", "Can change what agents track")]


def test_operators_may_operate_viewers_may_not(operator, alice):
    assert toggles.can_operate(operator) is True
    assert toggles.can_operate(alice) is False


# -- answers ------------------------------------------------------------------------

def test_acks_mark_deliveries_applied_or_refused_with_the_reason(tracked, operator):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    toggle = toggles.change(tracked.app, operator, scope="app", target="",
                            switch="parameters", value=True).toggle
    reason = ("parameter capture is not allowed by this process's agent configuration "
              "(capture_parameters=False, RETORT_CAPTURE_PARAMETERS)")
    assert toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1",
                                                  "status": "applied"}) == tracked.app.pk
    assert toggles.store_ack(web2.pk, {"id": f"toggle:{toggle.pk}:1", "status": "refused",
                                       "reason": reason}) == tracked.app.pk
    assert deliveries() == [(toggle.pk, "web-1", 1, "applied", ""),
                            (toggle.pk, "web-2", 1, "refused", reason)]
    # a refusal is audited (not a policy: an applied answer is not)
    assert audit()[1:] == [("olga", "toggle.result",
                            "Parameter capture for every process of shop: on",
                            f"refused on web-2:77: {reason}")]
    # the same answer again changes nothing
    assert toggles.store_ack(web2.pk, {"id": f"toggle:{toggle.pk}:1", "status": "refused",
                                       "reason": reason}) is None
    assert len(audit()) == 2


def test_answers_to_an_older_revision_or_another_id_are_ignored(tracked, operator):
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=True)
    assert toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1",
                                                  "status": "refused"}) is None
    for ack_id in ("toggle:x:1", f"toggle:{toggle.pk}", "snapshot:1:limit=1&offset=0",
                   f"toggle:{toggle.pk + 1}:2"):
        assert toggles.store_ack(tracked.process.pk, {"id": ack_id, "status": "applied"}) is None
    # another process's answer is not this process's
    web2 = second_process(tracked.app, host="web-2", pid=77, connected=False)
    assert toggles.store_ack(web2.pk, {"id": f"toggle:{toggle.pk}:2",
                                       "status": "applied"}) is None
    assert deliveries() == [(toggle.pk, "web-1", 2, "pending", "")]


def test_policy_answers_are_audited_per_process(tracked, operator):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    toggle = toggles.change(tracked.app, operator, scope="entity", target="Order",
                            switch="ignore_changes", value=True).toggle
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1", "status": "applied"})
    toggles.store_ack(web2.pk, {"id": f"toggle:{toggle.pk}:1", "status": "refused",
                                "reason": "remote policies are disabled"})
    assert audit() == [
        ("olga", "toggle.set", "Ignore changes for entity class Order: not set → on",
         "sent to 2 processes: web-1:4242, web-2:77"),
        ("olga", "toggle.result", "Ignore changes for entity class Order: on",
         "applied on web-1:4242"),
        ("olga", "toggle.result", "Ignore changes for entity class Order: on",
         "refused on web-2:77: remote policies are disabled"),
    ]
    assert AuditLog.objects.order_by("pk").last().details["processes"] == ["web-2:77"]


# -- (re)connections ----------------------------------------------------------------

def test_hello_sends_the_toggles_that_concern_the_process_then_sync(tracked, operator):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    app = tracked.app
    engine = toggles.change(app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    entity = toggles.change(app, operator, scope="entity", target="Order",
                            switch="ignore_changes", value=True).toggle
    mine = toggles.change(app, operator, scope="session", target="s1", switch="detectors",
                          value=False, process=tracked.process).toggle
    # another process's setting, and a removed one: not sent
    toggles.change(app, operator, scope="process", target="", switch="sampling", value=0.5,
                   process=web2)
    gone = toggles.change(app, operator, scope="app", target="", switch="locations",
                          value="off").toggle
    toggles.change(app, operator, scope="app", target="", switch="locations", value=None)
    for t in (engine, entity, mine):
        toggles.store_ack(tracked.process.pk, {"id": f"toggle:{t.pk}:1", "status": "applied"})
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{gone.pk}:2", "status": "applied"})

    frames = toggles.on_hello(tracked.process.pk)

    connections = type(tracked.process).objects.get(pk=tracked.process.pk).connections
    assert frames == [
        {"t": "control", "id": f"toggle:{engine.pk}:1", "action": "set",
         "args": {"scope": "engine", "target": ENGINE, "switch": "statements", "value": False}},
        {"t": "control", "id": f"toggle:{entity.pk}:1", "action": "set",
         "args": {"scope": "entity", "target": "Order", "switch": "ignore_changes",
                  "value": True}},
        {"t": "control", "id": f"toggle:{mine.pk}:1", "action": "set",
         "args": {"scope": "session", "target": "s1", "switch": "detectors", "value": False}},
        {"t": "control", "id": f"sync:{tracked.process.pk}:{connections}", "action": "sync",
         "args": {"keep": [["engine", ENGINE, "statements"],
                           ["entity", "Order", "ignore_changes"],
                           ["session", "s1", "detectors"]]}},
    ]
    # sent again: pending again, until the process answers
    mine_rows = [row for row in deliveries() if row[1] == "web-1"]
    assert mine_rows == [(engine.pk, "web-1", 1, "pending", ""),
                         (entity.pk, "web-1", 1, "pending", ""),
                         (mine.pk, "web-1", 1, "pending", ""),
                         (gone.pk, "web-1", 2, "applied", "")]


def test_a_new_process_gets_the_app_wide_toggles(tracked, operator):
    toggle = toggles.change(tracked.app, operator, scope="app", target="",
                            switch="detectors", value=False).toggle
    newcomer = second_process(tracked.app, host="web-9", pid=99)
    frames = toggles.on_hello(newcomer.pk)
    assert [f["id"] for f in frames] == [f"toggle:{toggle.pk}:1", f"sync:{newcomer.pk}:1"]
    assert frames[-1]["args"] == {"keep": [["app", "", "detectors"]]}
    assert (toggle.pk, "web-9", 1, "pending", "") in deliveries()


def test_removed_while_away_the_sync_removes_it(tracked, operator):
    from dashboard import ingest
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1", "status": "applied"})
    ingest.mark_disconnected(tracked.process.pk)
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=None)
    assert deliveries() == [(toggle.pk, "web-1", 1, "applied", "")]

    frames = toggles.on_hello(tracked.process.pk)
    assert [f["action"] for f in frames] == ["sync"]
    assert frames[0]["args"] == {"keep": []}
    assert deliveries() == [(toggle.pk, "web-1", 2, "pending", "")]
    assert toggles.store_sync_ack(tracked.process.pk, {"id": frames[0]["id"],
                                                       "status": "applied"}) == tracked.app.pk
    assert deliveries() == [(toggle.pk, "web-1", 2, "applied", "")]
    # another process's sync id is not this one's
    assert toggles.store_sync_ack(tracked.process.pk + 1, {"id": frames[0]["id"],
                                                           "status": "applied"}) is None


def test_a_hello_never_takes_a_delivery_back_to_an_older_revision(tracked, operator):
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    ToggleDelivery.objects.filter(toggle=toggle).update(revision=5)
    toggles.on_hello(tracked.process.pk)
    assert deliveries() == [(toggle.pk, "web-1", 5, "pending", "")]
