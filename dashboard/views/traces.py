"""Traces: an app's traces page (start a recording, upload a trace, the list), a
trace's page (status, timeline, statements, flushes), its downloads in three formats,
and the POST endpoints that start and stop recordings (the operator permission,
CSRF, audited) and import a file (audited)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, Iterator

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.handlers.asgi import ASGIRequest
from django.http import (Http404, HttpRequest, HttpResponse, HttpResponseRedirect,
                         StreamingHttpResponse)
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from tracker.traces import jsonl
from tracker.traces.chrome import iter_chrome
from tracker.traces.otlp import iter_otlp

from .. import groups, toggles, traces, traces_store, traces_timeline
from ..live import traces as pages
from ..models import App, AuditLog, Trace
from .refusal import not_allowed

#: format -> (content type, file name suffix)
FORMATS = {"jsonl": ("application/x-ndjson", ".jsonl"),
           "chrome": ("application/json", ".chrome.json"),
           "otlp": ("application/json", ".otlp.json")}
#: how many times wider than the page the timeline may be drawn
ZOOMS = (1, 2, 4, 8, 16)
#: bytes handed to the server at a time
CHUNK = 64 * 1024


@require_GET
def app_traces(request: HttpRequest, pk: int) -> HttpResponse:
    app = get_object_or_404(App, pk=pk)
    values = pages.FormValues.from_query(request.GET)
    return render(request, "dashboard/traces.html",
                  pages.traces_context(app, request.user, values))


@require_POST
def trace_start(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a recording (the scope, process, engine or session, name and length
    come from the form)."""
    app = get_object_or_404(App, pk=pk)
    values = pages.FormValues.from_query(request.POST)
    if not toggles.can_operate(request.user):
        traces.refuse(app, request.user, "start",
                      f"Recording {values.name!r} ({values.scope})")
        return not_allowed(request, app, "traces")
    try:
        started = traces.start(app, request.user, pages.asked(app, values))
    except traces.RecordError as exc:
        return render(request, "dashboard/traces.html",
                      pages.traces_context(app, request.user, values, error=str(exc)),
                      status=400)
    toggles.send(started.messages, groups.app_traces(app.pk))
    messages.success(request, f"{started.entry.target}: {started.entry.result}.")
    return HttpResponseRedirect(reverse("traces", args=[app.pk]), status=303)


@require_POST
def trace_stop(request: HttpRequest, pk: int) -> HttpResponse:
    """Stop the recording a trace belongs to (all its processes)."""
    trace = get_object_or_404(Trace.objects.select_related("app", "process"), pk=pk)
    if not toggles.can_operate(request.user):
        traces.refuse(trace.app, request.user, "stop",
                      f"Recording {trace.name!r} of {traces.describe(trace)}")
        return not_allowed(request, trace.app, "traces")
    stopped = traces.stop(trace, request.user)
    toggles.send(stopped.messages, groups.app_traces(trace.app_id))
    messages.success(request, f"{stopped.entry.target}: {stopped.entry.result}.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("traces", args=[trace.app_id])
    return HttpResponseRedirect(target, status=303)


@require_POST
def trace_import(request: HttpRequest, pk: int) -> HttpResponse:
    """Store an uploaded JSON Lines trace as an imported trace of the app."""
    app = get_object_or_404(App, pk=pk)
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise traces_store.BadTrace("choose a JSON Lines trace file to upload")
        trace = traces_store.import_file(app.pk, upload, request.user)
    except traces_store.BadTrace as exc:
        AuditLog.record(request.user, "trace.import", getattr(upload, "name", "no file")[:200],
                        app=app, result=f"refused: {exc}")
        return render(request, "dashboard/traces.html",
                      pages.traces_context(app, request.user, import_error=str(exc)),
                      status=400)
    AuditLog.record(request.user, "trace.import", f"{upload.name[:200]} as {trace.name!r}",
                    app=app, result=f"stored: {trace.records} records, {trace.bytes} bytes",
                    details={"trace": trace.pk})
    toggles.send((), groups.app_traces(app.pk))
    return HttpResponseRedirect(reverse("trace", args=[trace.pk]), status=303)


@require_GET
def trace_detail(request: HttpRequest, pk: int) -> HttpResponse:
    trace = get_object_or_404(Trace.objects.select_related("app", "process", "started_by",
                                                           "stopped_by"), pk=pk)
    traces.expire(trace.app_id)
    trace.refresh_from_db(fields=["status", "stopped_at", "reason"])
    zoom = request.GET.get("zoom", "1")
    return render(request, "dashboard/trace.html", {
        **pages.trace_status_context(trace, request.user),
        "timeline": traces_timeline.build(trace), "zooms": ZOOMS,
        "zoom": int(zoom) if zoom in map(str, ZOOMS) else 1})


@require_GET
def trace_download(request: HttpRequest, pk: int, fmt: str) -> HttpResponse:
    """The trace as Retort's JSON Lines (the stored file), a Chrome trace or OTLP/JSON,
    streamed: neither the file nor the export is held in memory."""
    trace = get_object_or_404(Trace, pk=pk)
    if fmt not in FORMATS:
        raise Http404(f"unknown format {fmt[:20]!r}")
    try:
        header, records = traces_store.read(trace)
    except (OSError, jsonl.TraceError):
        return HttpResponse("This trace has no data yet.", status=409,
                            content_type="text/plain")
    if fmt == "jsonl":
        records.close()
        chunks: Iterator[bytes] = _file_bytes(trace)
    else:
        export = iter_chrome if fmt == "chrome" else iter_otlp
        chunks = export(header, _complete_lines(records))
    content_type, suffix = FORMATS[fmt]
    response = StreamingHttpResponse(_served(request, _batched(chunks)),
                                     content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{_file_name(trace)}{suffix}"'
    return response


def _file_name(trace: Trace) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in trace.name)[:80]
    return f"{safe or 'trace'}-{trace.pk}"


def _file_bytes(trace: Trace) -> Iterator[bytes]:
    """The stored file as it is, up to the bytes committed (a recording may be
    appending a frame right now)."""
    left = trace.bytes
    with open(traces_store.file_of(trace), "rb") as handle:
        while left > 0:
            block = handle.read(min(CHUNK, left))
            if not block:
                break
            left -= len(block)
            yield block


def _complete_lines(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records, stopping quietly at a half-written last line (a recording)."""
    try:
        yield from records
    except jsonl.TraceError:
        return
    finally:
        records.close()


def _batched(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Small pieces gathered into blocks of about CHUNK bytes."""
    block: list[bytes] = []
    size = 0
    for chunk in chunks:
        block.append(chunk)
        size += len(chunk)
        if size >= CHUNK:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)


def _served(request: HttpRequest, chunks: Iterator[bytes]) -> Any:
    """Under ASGI (daphne) an async iterator: Django would otherwise read a synchronous
    one to its end into memory before sending anything."""
    if isinstance(request, ASGIRequest):
        return _async(chunks)
    return chunks


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    step = sync_to_async(next, thread_sensitive=False)
    try:
        while True:
            block = await step(chunks, None)
            if block is None:
                return
            yield block
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()
