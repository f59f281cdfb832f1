"""Agent settings as command-line options, shared by ``run`` and ``attach``."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import ENV

#: option -> AgentConfig field
OPTIONS = {
    "--url": "url",
    "--token": "token",
    "--app": "app",
    "--capture-locations": "capture_locations",
    "--thresholds": "thresholds",
    "--secret-words": "secret_words",
}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "agent settings (each defaults to its RETORT_* environment variable)")
    group.add_argument("--url", help="dashboard websocket URL (RETORT_URL), e.g. "
                       "ws://127.0.0.1:8000/ws/agent/")
    group.add_argument("--token", help="the app's agent token (RETORT_TOKEN)")
    group.add_argument("--app", help="name the app is shown under (RETORT_APP)")
    group.add_argument("--capture-locations", choices=("always", "pressure", "off"),
                       help="checkout code locations (RETORT_CAPTURE_LOCATIONS)")
    group.add_argument("--capture-parameters", action="store_true", default=None,
                       help="allow parameter values to be captured "
                            "(RETORT_CAPTURE_PARAMETERS)")
    group.add_argument("--thresholds", help="advisor thresholds, e.g. n_plus_one=3 "
                       "(RETORT_THRESHOLDS)")
    group.add_argument("--secret-words", help="extra attribute names to mask "
                       "(RETORT_SECRET_WORDS; a leading + adds to the defaults)")


def as_environment(args: argparse.Namespace) -> dict[str, str]:
    """The options given, as ``RETORT_*`` variables."""
    env: dict[str, str] = {}
    for option, field in OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            env[ENV[field]] = str(value)
    if args.capture_parameters:
        env[ENV["capture_parameters"]] = "1"
    return env
