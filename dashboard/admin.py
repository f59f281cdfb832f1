"""Admin: apps, their agent tokens (created here or with ``create_agent_token``),
processes and engines; advice (status editable, audited on the findings page only),
statement statistics, slow statements, toggles with each process's answer and the
audit log (read-only: toggles change on the controls page, which sends and audits
them)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from .models import (AgentToken, Advice, App, AuditLog, Engine, Process, SlowStatement,
                     StatementStat, Toggle, ToggleDelivery, Trace)


class AgentTokenInline(admin.TabularInline):
    model = AgentToken
    extra = 0
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    can_delete = True
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        # a token must be issued (so that it is shown once): use Agent tokens → Add
        return False


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)
    inlines = [AgentTokenInline]


@admin.register(AgentToken)
class AgentTokenAdmin(admin.ModelAdmin):
    list_display = ("app", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("app",)
    readonly_fields = ("prefix", "created_at", "created_by", "last_used_at")
    fields = ("app", "name", "prefix", "created_at", "created_by", "last_used_at",
              "revoked_at")
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        token, raw = AgentToken.issue(obj.app, obj.name, request.user)
        if obj.revoked_at is not None:
            AgentToken.objects.filter(pk=token.pk).update(revoked_at=obj.revoked_at)
        obj.pk = token.pk
        obj.prefix, obj.digest = token.prefix, token.digest
        messages.warning(request, f"Agent token for {obj.app}: {raw} — copy it now, "
                                  f"it is stored hashed and will not be shown again.")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        messages.info(request, f"{count} token(s) revoked.")


@admin.register(Process)
class ProcessAdmin(admin.ModelAdmin):
    list_display = ("app", "host", "pid", "started_at", "connected", "last_seen",
                    "events_dropped")
    list_filter = ("app", "connected")

    def has_add_permission(self, request):
        return False


@admin.register(Engine)
class EngineAdmin(admin.ModelAdmin):
    list_display = ("name", "process", "dialect", "driver", "url")

    def has_add_permission(self, request):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """What agents reported, or what was audited: viewed here, never edited."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Advice)
class AdviceAdmin(ReadOnlyAdmin):
    list_display = ("rule", "app", "engine_name", "location", "severity", "status", "count",
                    "first_seen", "last_seen")
    list_filter = ("app", "severity", "status", "rule")
    search_fields = ("rule", "location", "message")


@admin.register(StatementStat)
class StatementStatAdmin(ReadOnlyAdmin):
    list_display = ("fp", "engine", "op", "table", "count", "total", "max", "updated_at")
    search_fields = ("fp", "sql")


@admin.register(SlowStatement)
class SlowStatementAdmin(ReadOnlyAdmin):
    list_display = ("at", "engine", "seconds", "rows", "fp", "location")
    search_fields = ("fp", "sql")


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_name", "app", "action", "target", "result")
    list_filter = ("action", "app")
    search_fields = ("actor_name", "target")

    def has_delete_permission(self, request, obj=None):
        return False


class ToggleDeliveryInline(admin.TabularInline):
    model = ToggleDelivery
    extra = 0
    can_delete = False
    fields = ("process", "revision", "status", "reason", "updated_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Toggle)
class ToggleAdmin(ReadOnlyAdmin):
    """Toggles change on an app's controls page, which sends them to the agents and
    audits them; here they are only viewed (deleting a row would do neither)."""

    list_display = ("app", "switch", "scope", "target", "process", "value", "revision",
                    "updated_by", "updated_at")
    list_filter = ("app", "switch", "scope")
    inlines = [ToggleDeliveryInline]

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Trace)
class TraceAdmin(ReadOnlyAdmin):
    """Traces are recorded and imported on an app's traces page; here they are viewed,
    and may be deleted (their files go with them)."""

    list_display = ("name", "app", "process", "scope", "status", "truncated", "records",
                    "bytes", "started_by", "started_at", "stopped_at")
    list_filter = ("app", "status", "scope")
    search_fields = ("name",)

