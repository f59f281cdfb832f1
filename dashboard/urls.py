from django.contrib import admin
from django.urls import include, path

from .views import controls, findings, pages, traces

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("engines/<int:pk>/", pages.engine_detail, name="engine"),
    path("engines/<int:pk>/statements/", pages.engine_statements, name="statements"),
    path("apps/<int:pk>/findings/", findings.app_findings, name="findings"),
    path("findings/<int:pk>/<str:action>/", findings.advice_action, name="advice-action"),
    path("rules/", findings.rules, name="rules"),
    path("rules/<slug:rule_id>/", findings.rule, name="rule"),
    path("apps/<int:pk>/sessions/", pages.app_sessions, name="sessions"),
    path("sessions/<int:pk>/", pages.session_detail, name="session"),
    path("apps/<int:pk>/controls/", controls.app_controls, name="controls"),
    path("apps/<int:pk>/controls/form/", controls.toggle_form, name="toggle-form"),
    path("apps/<int:pk>/controls/change/", controls.toggle_change, name="toggle-change"),
    path("apps/<int:pk>/audit/", controls.audit_log, name="audit"),
    path("audit/", controls.audit_log, name="audit-all"),
    path("apps/<int:pk>/traces/", traces.app_traces, name="traces"),
    path("apps/<int:pk>/traces/start/", traces.trace_start, name="trace-start"),
    path("apps/<int:pk>/traces/import/", traces.trace_import, name="trace-import"),
    path("traces/<int:pk>/", traces.trace_detail, name="trace"),
    path("traces/<int:pk>/stop/", traces.trace_stop, name="trace-stop"),
    path("traces/<int:pk>/download/<str:fmt>/", traces.trace_download,
         name="trace-download"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
