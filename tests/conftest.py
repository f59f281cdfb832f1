"""Shared fixtures. Kept free of Django imports: the agent's tests also run in an
environment that has only the agent installed (see .ci/test)."""

from __future__ import annotations

import pytest


@pytest.fixture
def agent():
    """An agent with no background worker and no dashboard: the test drives it with
    ``agent.snapshot()``. Always uninstrumented afterwards."""
    import tracker

    assert not tracker.is_instrumented(), "a previous test left the agent attached"
    # every checkout's location, whatever the pressure: tests assert on them
    handle = tracker.instrument(run_worker=False, url=None, app="tests",
                                capture_locations="always")
    try:
        yield handle.agent
    finally:
        tracker.uninstrument()


def pytest_collection_modifyitems(config, items):
    # Browser tests run last: Playwright's event loop breaks pytest-asyncio tests
    # that would run after it in the same process.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
