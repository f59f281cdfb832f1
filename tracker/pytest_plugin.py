"""pytest plugin: fail a test that causes an N+1, leaks a connection or loses writes.

Installed with the agent (entry point ``retort``) and inert until asked:

- the ``retort`` fixture guards one test::

      def test_order_page(retort, client):
          client.get("/orders")          # fails here if it lazy-loads row by row

- ``pytest --retort`` guards every test; ``@pytest.mark.retort(allow=["n-plus-one"])``
  lets one test through a rule, ``@pytest.mark.retort(fail_on=[...], thresholds={...})``
  changes what fails and when.

The guard attaches the agent (no worker, no dashboard) for the test, collects the
advisor's findings, and at teardown also reports connections the test left checked
out. A failing test's report names each finding's rule, message, code location and
fix.
"""

from __future__ import annotations

import gc
from typing import Any, Iterable

import pytest

from .rules import RULES

#: The rules that fail a guarded test by default: lost writes, N+1, leaks.
DEFAULT_FAIL_ON = (
    "n-plus-one",
    "lost-changes-on-close",
    "lost-changes-on-gc",
    "transaction-not-committed",
    "connection-held-long",
    "session-multiple-threads",
)


class Guard:
    """Findings of one test. ``findings`` holds every one seen; ``failures`` the ones
    that fail the test."""

    def __init__(self, agent: Any, fail_on: Iterable[str], allow: Iterable[str]) -> None:
        self.agent = agent
        self.fail_on = set(fail_on) - set(allow)
        self.findings: list[dict[str, Any]] = []
        self._held_before = self._holders()

    def collect(self) -> list[dict[str, Any]]:
        """Take the findings queued since the last call (and keep them)."""
        for item in self.agent.recorder.drain():
            if item[0] == "finding":
                (_, _, engine, rule, severity, session, thread, location, message,
                 evidence) = item[1]
                self.findings.append({
                    "rule": rule, "severity": severity, "message": message,
                    "location": location, "session": session, "thread": thread,
                    "engine": engine, "evidence": evidence})
        return self.findings

    def _holders(self) -> set[tuple[int, float]]:
        return {(key, holder[0]) for pool_entry in list(self.agent.registry.pools.values())
                for key, holder in list(pool_entry.holders.items())}

    def leaks(self) -> list[dict[str, Any]]:
        """Connections checked out during the test and still out now."""
        from .locations import describe

        found = []
        for pool_entry in list(self.agent.registry.pools.values()):
            for key, (t0, _tid, stack) in list(pool_entry.holders.items()):
                if (key, t0) in self._held_before:
                    continue
                lines = describe(stack)
                found.append({
                    "rule": "connection-held-long", "severity": "warning",
                    "message": (f"the test left a connection of engine "
                                f"{pool_entry.engine.name} checked out (a leak)"),
                    "location": lines[0] if lines else "", "session": "", "thread": "",
                    "engine": pool_entry.engine.id, "evidence": {"stack": lines}})
        return found

    def failures(self) -> list[dict[str, Any]]:
        gc.collect()  # sessions dropped without close() report their lost changes now
        found = self.collect() + self.leaks()
        return [finding for finding in found if finding["rule"] in self.fail_on]


def report(failures: list[dict[str, Any]]) -> str:
    """The failure text: each finding with where it happened and how to fix it."""
    lines = [f"Retort found {len(failures)} problem(s) in this test:"]
    for finding in failures:
        rule = RULES.get(finding["rule"])
        lines.append("")
        lines.append(f"[{finding['severity']}] {finding['rule']}: {finding['message']}")
        if finding["location"]:
            lines.append(f"  at {finding['location']}")
        fix = finding["evidence"].get("fix") if isinstance(finding["evidence"], dict) else None
        if rule is not None:
            lines.append(f"  fix: {rule.fix}")
            lines.append("    " + (fix or rule.fix_code).replace("\n", "\n    "))
    return "\n".join(lines)


def _guard(request: pytest.FixtureRequest) -> Any:
    import tracker

    marker = request.node.get_closest_marker("retort")
    options = dict(marker.kwargs) if marker is not None else {}
    if tracker.is_instrumented():
        raise pytest.UsageError(
            "the retort fixture attaches its own agent, but one is already attached to "
            "this process (RETORT_* settings or an instrument() call): detach it for tests")
    handle = tracker.instrument(run_worker=False, url=None, app="pytest",
                                capture_locations="always",
                                thresholds=options.get("thresholds", {}))
    guard = Guard(handle.agent, options.get("fail_on", DEFAULT_FAIL_ON),
                  options.get("allow", ()))
    try:
        yield guard
        failures = guard.failures()
    finally:
        tracker.uninstrument()
    if failures:
        pytest.fail(report(failures), pytrace=False)


@pytest.fixture
def retort(request: pytest.FixtureRequest) -> Any:
    """Guard this test: it fails if the advisor finds an N+1, a leaked connection or
    lost writes (see DEFAULT_FAIL_ON). Yields the :class:`Guard`."""
    yield from _guard(request)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("retort")
    group.addoption("--retort", action="store_true", default=False,
                    help="guard every test with Retort's advisor (N+1, leaks, lost writes)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "retort(fail_on=[...], allow=[...], thresholds={...}): Retort's "
        "advisor settings for this test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--retort"):
        for item in items:
            if "retort" not in getattr(item, "fixturenames", ()):
                item.fixturenames.append("retort")  # type: ignore[attr-defined]
