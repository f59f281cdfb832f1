"""A real agent against a real dashboard, without a browser."""

from __future__ import annotations

import time


def test_wrong_token_is_refused_with_a_clear_reason(start_app):
    app = start_app(token="rt_this-token-does-not-exist")
    # the application itself is unaffected
    assert app.send("work 50").startswith("Pool size: 5")
    time.sleep(1.0)
    stderr = app.close()
    assert "retort agent: dashboard refused the agent: invalid or revoked agent token" in stderr
    # logged once, not once per retry
    assert stderr.count("invalid or revoked agent token") == 1


def test_token_of_another_app_is_refused(start_app):
    app = start_app(app_name="not-e2e-app")
    # the reason comes from the first attempt: the transport waits for the messages
    # that preceded the close (tracker/transport.py, send())
    time.sleep(1.0)
    stderr = app.close()
    assert ("dashboard refused the agent: this token belongs to app 'e2e-app', "
            "not 'not-e2e-app'") in stderr
