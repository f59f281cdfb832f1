"""Channel-layer group names and the messages sent to them."""

OVERVIEW = "overview"
#: sent to live groups: "something you show changed"
CHANGED = "live.changed"
#: sent to a process group: a ``control`` frame for that process's agent
#: (``{"type": CONTROL, "id": ..., "action": ..., "args": {...}}``)
CONTROL = "agent.control"


def engine(pk: int) -> str:
    """Open engine pages of engine ``pk``."""
    return f"engine-{pk}"


def process(pk: int) -> str:
    """The agent connection(s) of process ``pk``: where control messages go."""
    return f"process-{pk}"


def app_sessions(pk: int) -> str:
    """Open sessions pages of app ``pk``."""
    return f"app-sessions-{pk}"


def session(pk: int) -> str:
    """Open pages of tracked session ``pk``."""
    return f"session-{pk}"


def app_findings(pk: int) -> str:
    """Open findings pages of app ``pk``."""
    return f"app-findings-{pk}"


def app_statements(pk: int) -> str:
    """Open statements pages of app ``pk``'s engines (a page aggregates an engine
    over the app's processes, so any of them may change it)."""
    return f"app-statements-{pk}"


def app_controls(pk: int) -> str:
    """Open controls pages of app ``pk`` (its toggles and each process's answers)."""
    return f"app-controls-{pk}"


def app_traces(pk: int) -> str:
    """Open traces pages of app ``pk``, and its trace pages (status, records)."""
    return f"app-traces-{pk}"
