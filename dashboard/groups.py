"""Channel-layer group names and the one message type sent to them."""

OVERVIEW = "overview"
#: the only message sent to live groups: "something you show changed"
CHANGED = "live.changed"


def engine(pk: int) -> str:
    return f"engine-{pk}"
