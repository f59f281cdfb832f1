"""What the dashboard stores: apps and their agent tokens, the processes that
connected, their engines, a bounded pool history and notable pool events; the ORM
sessions of each process, snapshots of what they track, and findings (each
occurrence, and grouped per app as advice with a status); statement statistics per
fingerprint and recent slow statements; an audit log of what users changed.

Timestamps reported by an agent (a session's ``created``, a snapshot's ``taken_at``,
a finding's ``at``) are kept on the agent's clock; ``Process.clock_offset`` turns
them into ages on ours."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from . import conf

TOKEN_PREFIX = "rt_"


class App(models.Model):
    """An application whose processes report to Retort (one token or more)."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def token_digest(raw: str) -> str:
    # Tokens are 256-bit random values, so a fast hash is enough: there is nothing to
    # brute-force, and lookups by digest stay a single indexed query.
    return hashlib.sha256(raw.encode()).hexdigest()


class AgentToken(models.Model):
    """A per-app agent credential. Only its SHA-256 digest is stored; the token itself
    is shown once, when it is created."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["app", "-created_at"]

    def __str__(self) -> str:
        return f"{self.app} {self.prefix}… {self.name}".strip()

    @classmethod
    def issue(cls, app: App, name: str = "", user=None) -> tuple["AgentToken", str]:
        """Create a token for ``app``; returns the row and the token (shown once)."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(app=app, name=name, prefix=raw[:10],
                                   digest=token_digest(raw), created_by=user)
        return token, raw

    @classmethod
    def authenticate(cls, raw: str | None) -> "AgentToken | None":
        """The live token matching ``raw``, or None (unknown, revoked, malformed)."""
        if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
            return None
        token = (cls.objects.select_related("app")
                 .filter(digest=token_digest(raw), revoked_at__isnull=True).first())
        if token is not None:
            token.last_used_at = timezone.now()
            cls.objects.filter(pk=token.pk).update(last_used_at=token.last_used_at)
        return token


class Process(models.Model):
    """One process of an app running the agent (a restart is a new process)."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="processes")
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    ppid = models.IntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    argv = models.JSONField(default=list)
    python_version = models.CharField(max_length=32)
    sqlalchemy_version = models.CharField(max_length=32)
    agent_version = models.CharField(max_length=32)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()
    connected = models.BooleanField(default=False)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    connections = models.IntegerField(default=0)
    drops = models.JSONField(default=dict)
    events_dropped = models.BigIntegerField(default=0)
    agent_errors = models.IntegerField(default=0)
    queue = models.IntegerField(default=0)
    # seconds our clock is ahead of the agent's, measured at its last state frame
    clock_offset = models.FloatField(default=0.0)
    # live sessions its last state frame left out (tracker.protocol.MAX_SESSIONS)
    sessions_omitted = models.IntegerField(default=0)

    class Meta:
        ordering = ["-connected", "-last_seen"]
        constraints = [models.UniqueConstraint(fields=["app", "host", "pid", "started_at"],
                                               name="unique_process")]

    def __str__(self) -> str:
        return f"{self.app} {self.host}:{self.pid}"

    @property
    def status(self) -> str:
        """``connected``, ``stale`` (connected but silent) or ``disconnected``."""
        if not self.connected:
            return "disconnected"
        silent = timezone.now() - self.last_seen
        if silent > timedelta(seconds=conf.get("STALE_AFTER_SECONDS")):
            return "stale"
        return "connected"

    def agent_now(self) -> datetime:
        """Now, on the agent's clock (for ages of what it reported)."""
        return timezone.now() - timedelta(seconds=self.clock_offset)


class Engine(models.Model):
    """An engine of one process, with its configuration and latest pool state."""

    process = models.ForeignKey(Process, on_delete=models.CASCADE, related_name="engines")
    key = models.CharField(max_length=32)  # the agent's id, unique within the process
    name = models.CharField(max_length=255)
    dialect = models.CharField(max_length=64, blank=True)
    driver = models.CharField(max_length=64, blank=True)
    url = models.CharField(max_length=1000, blank=True)  # password masked by the agent
    echo = models.BooleanField(default=False)
    pool = models.JSONField(default=dict)
    disposed = models.IntegerField(default=0)
    # settings read from the database server when the agent may (ENGINE_INFO.server):
    # max_connections, wait_timeout, version…; {} when not read
    server = models.JSONField(default=dict, blank=True)
    state = models.JSONField(default=dict)
    state_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["process", "key"]
        constraints = [models.UniqueConstraint(fields=["process", "key"], name="unique_engine")]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class PoolSample(models.Model):
    """One point of an engine's pool timeline (bounded by POOL_HISTORY_SECONDS)."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True)
    checked_out = models.IntegerField()
    idle = models.IntegerField(null=True)
    overflow = models.IntegerField(null=True)
    capacity = models.IntegerField(null=True)
    waiting = models.IntegerField(default=0)

    class Meta:
        ordering = ["at"]
        indexes = [models.Index(fields=["engine", "at"])]


class PoolEvent(models.Model):
    """A notable pool event: checkout timeout, invalidation, dispose."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=32)
    thread = models.CharField(max_length=200, blank=True)
    location = models.CharField(max_length=1000, blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["engine", "at"])]


class TrackedSession(models.Model):
    """An ORM session of a process, as its agent last summarised it (live, or ended
    within RECENT_SESSION_SECONDS). Columns hold what the pages filter and sort on;
    ``summary`` the whole summary (lifecycle, objects per class, stack…)."""

    process = models.ForeignKey(Process, on_delete=models.CASCADE, related_name="sessions")
    key = models.CharField(max_length=32)  # the agent's id ("s3"), unique within the process
    kind = models.CharField(max_length=200)
    created = models.DateTimeField()
    thread = models.CharField(max_length=200)
    task = models.CharField(max_length=200, blank=True)
    engines = models.ManyToManyField(Engine, related_name="sessions", blank=True)
    state = models.CharField(max_length=16)  # idle | transaction | flushing | closed
    txn_since = models.DateTimeField(null=True, blank=True)
    last_activity = models.DateTimeField(null=True, blank=True)
    objects_count = models.IntegerField(default=0)  # in the identity map
    new = models.IntegerField(default=0)
    dirty = models.IntegerField(default=0)
    deleted = models.IntegerField(default=0)
    statements = models.BigIntegerField(default=0)
    flushes = models.IntegerField(default=0)
    commits = models.IntegerField(default=0)
    rollbacks = models.IntegerField(default=0)
    location = models.CharField(max_length=1000, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=16, blank=True)  # closed | collected | disconnected | gone
    summary = models.JSONField(default=dict)
    updated_at = models.DateTimeField()  # our clock: when it was last stored

    class Meta:
        constraints = [models.UniqueConstraint(fields=["process", "key"],
                                               name="unique_session")]
        indexes = [models.Index(fields=["process", "ended_at"]),
                   models.Index(fields=["ended_at", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.key} of {self.process}"

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def pending(self) -> int:
        """Objects a flush would write or delete (new + modified + deleted)."""
        return self.new + self.dirty + self.deleted


class SessionSnapshot(models.Model):
    """The latest snapshot of one session for one set of snapshot arguments (filter
    and page): what it tracks and what its next flush would write."""

    session = models.ForeignKey(TrackedSession, on_delete=models.CASCADE,
                                related_name="snapshots")
    args_key = models.CharField(max_length=1000)  # see dashboard.control.args_key
    args = models.JSONField(default=dict)
    requested_at = models.DateTimeField(null=True, blank=True)  # our clock
    taken_at = models.DateTimeField(null=True, blank=True)      # the agent's clock
    # entities, changes, total, offset, partial, changes_total (and error, if any)
    data = models.JSONField(default=dict)
    refusal = models.TextField(blank=True)  # why the agent refused the last request

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "args_key"],
                                               name="unique_snapshot")]


class Finding(models.Model):
    """Something the agent found wrong (a data-loss trap…): rule ids in docs/findings.md."""

    process = models.ForeignKey(Process, on_delete=models.CASCADE, related_name="findings")
    engine = models.ForeignKey(Engine, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="findings")
    session = models.CharField(max_length=32, blank=True)  # a TrackedSession key, or ""
    rule = models.CharField(max_length=100)
    severity = models.CharField(max_length=16)
    message = models.TextField()
    thread = models.CharField(max_length=200, blank=True)
    location = models.CharField(max_length=1000, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField()  # the agent's clock

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["process", "at"]),
                   models.Index(fields=["process", "session"])]

    def __str__(self) -> str:
        return f"{self.rule}: {self.message[:80]}"


class Advice(models.Model):
    """Findings of one app grouped by (rule, engine, code location): how often and
    when the rule fired there, the last occurrence's message and evidence, and what a
    user decided about it (acknowledged, muted).

    Engines are grouped by name (``postgresql@db/shop``), so the same advice from
    several processes, or from a restarted one, is one group. Times are on the
    dashboard's clock (each occurrence's agent time corrected by its process's clock
    offset): a group spans processes whose clocks differ, and is compared with the
    time a user acknowledged it."""

    OPEN, ACKNOWLEDGED, MUTED = "open", "acknowledged", "muted"
    STATUSES = (OPEN, ACKNOWLEDGED, MUTED)

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="advice")
    # digest of (rule, engine name, location), or of what else identifies the group
    key = models.CharField(max_length=64)
    rule = models.CharField(max_length=100)
    engine_name = models.CharField(max_length=255, blank=True)  # "" when about no engine
    # the engine (of the latest process) it was last reported on, for links
    engine = models.ForeignKey(Engine, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="advice")
    location = models.CharField(max_length=1000, blank=True)
    severity = models.CharField(max_length=16)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.BigIntegerField(default=0)
    # the last occurrence
    message = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    session = models.CharField(max_length=32, blank=True)
    thread = models.CharField(max_length=200, blank=True)
    process = models.ForeignKey(Process, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="advice")
    status = models.CharField(max_length=16, default=OPEN)
    # who set the status last, and when (kept when an acknowledged group reopens)
    status_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    status_at = models.DateTimeField(null=True, blank=True)
    # it occurred again after it was acknowledged: back to open at this time
    reopened_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "advice"
        ordering = ["-last_seen", "-pk"]
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="unique_advice")]
        indexes = [models.Index(fields=["app", "status", "severity"]),
                   models.Index(fields=["app", "last_seen"])]

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.rule}{where} ({self.app})"


class StatementStat(models.Model):
    """One statement fingerprint of one engine: cumulative since its process started
    (the agent sends a fingerprint again whenever it changed; the row is replaced).
    At most STATEMENTS_PER_ENGINE per engine, the most recently updated."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="statements")
    fp = models.CharField(max_length=64)
    sql = models.TextField()
    op = models.CharField(max_length=16)
    table = models.CharField(max_length=255, blank=True)
    count = models.BigIntegerField()
    errors = models.BigIntegerField()
    total = models.FloatField()  # seconds
    max = models.FloatField()    # seconds
    rows = models.BigIntegerField()
    buckets = models.JSONField(default=list)  # tracker.protocol.HIST_BOUNDS histogram
    location = models.CharField(max_length=1000, blank=True)
    stack = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField()  # our clock: when a frame last changed it

    class Meta:
        constraints = [models.UniqueConstraint(fields=["engine", "fp"],
                                               name="unique_statement")]
        indexes = [models.Index(fields=["engine", "updated_at"])]

    def __str__(self) -> str:
        return f"{self.fp}: {self.sql[:80]}"


class SlowStatement(models.Model):
    """One statement slower than the agent's slow_statement_seconds threshold; the
    newest SLOW_STATEMENTS_PER_ENGINE per engine are kept."""

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE,
                               related_name="slow_statements")
    at = models.DateTimeField()  # the agent's clock
    fp = models.CharField(max_length=64)
    sql = models.TextField()
    seconds = models.FloatField()
    rows = models.BigIntegerField()
    session = models.CharField(max_length=32, blank=True)
    thread = models.CharField(max_length=200, blank=True)
    location = models.CharField(max_length=1000, blank=True)
    stack = models.JSONField(default=list, blank=True)
    # bind parameters, redacted by the agent; null unless it may capture them
    params = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["engine", "at"])]

    def __str__(self) -> str:
        return f"{self.seconds:.3f} s: {self.sql[:80]}"


class AuditLog(models.Model):
    """Something a user changed, and what came of it: acknowledging or muting advice
    now, toggles sent to agents later. Rows are never edited."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="+")
    # the name at the time, kept if the user is deleted
    actor_name = models.CharField(max_length=150)
    app = models.ForeignKey(App, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="audit")
    action = models.CharField(max_length=64)   # "advice.acknowledge", "advice.mute"…
    target = models.CharField(max_length=500)  # what it was done to, in words
    details = models.JSONField(default=dict, blank=True)
    result = models.CharField(max_length=500)  # what came of it ("acknowledged", …)

    class Meta:
        ordering = ["-at", "-pk"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.target}: {self.result}"

    @classmethod
    def record(cls, user, action: str, target: str, *, app: App | None = None,
               details: dict | None = None, result: str = "") -> "AuditLog":
        """Write one entry (``user`` may be None for the dashboard itself)."""
        name = user.get_username() if user is not None else "dashboard"
        return cls.objects.create(actor=user, actor_name=name[:150], app=app,
                                  action=action[:64], target=target[:500],
                                  details=details or {}, result=result[:500])


class Toggle(models.Model):
    """A runtime setting an operator chose for an app's agents (``tracker.switches``):
    ``(scope, target, switch) -> value``.

    App, engine and entity settings (``process`` empty) go to every process of the
    app, new ones too; process and session settings only to their ``process``. A
    removed setting keeps its row with ``value`` None (its removal is sent, and each
    process's answer shown, like a change); setting it again reuses the row. Every
    change bumps ``revision``: acknowledgements name it (``toggle:<pk>:<revision>``),
    so a late answer to an older revision is not taken for the newest."""

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="toggles")
    process = models.ForeignKey(Process, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="toggles")
    scope = models.CharField(max_length=16)
    target = models.CharField(max_length=255, blank=True)
    switch = models.CharField(max_length=32)
    value = models.JSONField(null=True, blank=True)  # None: removed
    revision = models.IntegerField(default=0)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["scope", "target", "switch", "pk"]
        permissions = [("operate_agents", "Can change what agents track")]
        # two constraints: NULLs are distinct in a unique index (SQLite, PostgreSQL
        # before 15), so the app-wide rows need one of their own
        constraints = [
            models.UniqueConstraint(fields=["app", "scope", "target", "switch"],
                                    condition=models.Q(process__isnull=True),
                                    name="unique_app_toggle"),
            models.UniqueConstraint(fields=["app", "process", "scope", "target", "switch"],
                                    condition=models.Q(process__isnull=False),
                                    name="unique_process_toggle"),
        ]

    def __str__(self) -> str:
        return f"{self.app}: {self.switch} {self.scope} {self.target}".strip()

    @property
    def removed(self) -> bool:
        return self.value is None

    @property
    def key(self) -> list[str]:
        """The setting's key as the agent knows it (``sync``'s ``keep``)."""
        return [self.scope, self.target, self.switch]


class ToggleDelivery(models.Model):
    """What one process answered to the latest revision of a toggle sent to it."""

    PENDING, APPLIED, REFUSED = "pending", "applied", "refused"

    toggle = models.ForeignKey(Toggle, on_delete=models.CASCADE, related_name="deliveries")
    process = models.ForeignKey(Process, on_delete=models.CASCADE,
                                related_name="toggle_deliveries")
    revision = models.IntegerField()
    status = models.CharField(max_length=16, default=PENDING)
    reason = models.TextField(blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "toggle deliveries"
        constraints = [models.UniqueConstraint(fields=["toggle", "process"],
                                               name="unique_toggle_delivery")]

    def __str__(self) -> str:
        return f"{self.toggle} → {self.process}: {self.status}"


class Trace(models.Model):
    """A session trace (issue 7): the full event stream of a scope, stored as a JSON
    Lines file in the agent's own format (``tracker.traces.jsonl``) under the traces
    directory, so the exporters of ``tracker.traces`` read it as it is.

    A recording is started from the traces page for an app, a process, an engine (by
    name) or one session; each process it reaches records into a trace of its own
    (one file per process: a trace's header names one process), the traces started
    together sharing ``recording``. An uploaded trace is ``imported``, with no
    process."""

    RECORDING, COMPLETE, FAILED, IMPORTED = "recording", "complete", "failed", "imported"

    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="traces")
    process = models.ForeignKey(Process, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="traces")
    # the traces started by one request share it (an app-wide recording: one per process)
    recording = models.CharField(max_length=32, blank=True, db_index=True)
    scope = models.CharField(max_length=16)  # app | process | engine | session | import
    engine = models.CharField(max_length=255, blank=True)  # an engine name (engine scope)
    session = models.CharField(max_length=32, blank=True)  # a session key (session scope)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    stopped_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    # our clock for a recording (asked, ended); the trace's own for an imported one
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    max_seconds = models.FloatField(default=600.0)
    status = models.CharField(max_length=16, default=RECORDING)
    reason = models.TextField(blank=True)  # why it ended, failed or was truncated
    truncated = models.BooleanField(default=False)
    records = models.BigIntegerField(default=0)  # lines stored, the header included
    bytes = models.BigIntegerField(default=0)
    seq = models.IntegerField(default=0)          # the last trace frame stored
    gaps = models.IntegerField(default=0)         # frames that never arrived
    duplicates = models.IntegerField(default=0)   # frames received twice (ignored)
    dropped = models.BigIntegerField(default=0)   # events the agent dropped (its end line)
    last_frame_at = models.DateTimeField(null=True, blank=True)
    path = models.CharField(max_length=500, blank=True)  # relative to the traces directory
    header = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["app", "status"])]

    def __str__(self) -> str:
        return f"{self.app}: {self.name} ({self.status})"

    @property
    def live(self) -> bool:
        return self.status == self.RECORDING


@receiver(post_delete, sender=Trace)
def _delete_trace_file(sender, instance: Trace, **kwargs) -> None:
    """A trace's file goes with its row (pruned, deleted in the admin, or its app)."""
    from .traces_store import delete_file

    delete_file(instance)
