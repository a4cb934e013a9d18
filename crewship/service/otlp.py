"""Optional: each finished kickoff's trace, exported over OTLP/HTTP to an OpenTelemetry
collector (``CREWSHIP_OTLP_ENDPOINT``, e.g. ``http://collector:4318``), with the official
OpenTelemetry SDK (``pip install 'crewship[otlp]'``; not installed: a warning at start and
no export).

One OpenTelemetry trace per kickoff: a root span ``kickoff`` (``crewship.app``,
``crewship.kickoff_id``, ``crewship.state``) and under it the kickoff's spans as crewship
stores them (``crewship/service/traces.py``), with their own start and end times, their
parents, ``crewai.kind``, token counts as ``gen_ai.usage.input_tokens`` /
``gen_ai.usage.output_tokens``, inputs and outputs (clipped) and an error status where
they failed. The SDK's batch processor sends them from its own thread; nothing waits on
the collector. The endpoint is checked once at start against the outbound-URL policy
(``crewship/urls.py``: a collector on a private address needs
``CREWSHIP_ALLOW_PRIVATE_URLS=1``); the SDK makes the connections itself.
"""

from __future__ import annotations

from typing import Any

from crewship import log
from crewship.errors import InvalidInputError
from crewship.urls import Policy, check_url

logger = log.get("crewship.service.otlp")

TRACES_PATH = "/v1/traces"
NS = 1_000_000_000


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base endpoint (as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class TraceExport:
    """Kickoff traces to one collector, through an SDK ``TracerProvider`` of our own."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.url = traces_url(endpoint)
        self.provider = TracerProvider(resource=Resource.create({"service.name": "crewship"}))
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url, timeout=10)))
        self.tracer = self.provider.get_tracer("crewship")

    def export(self, app: str, kickoff_id: str, state: str,
               spans: list[dict[str, Any]]) -> None:
        """Queue a finished kickoff's spans for the collector (a failure is logged)."""
        try:
            self._export(app, kickoff_id, state, spans)
        except Exception:
            logger.exception("otlp_export_failed", app=app, kickoff_id=kickoff_id)

    def _export(self, app: str, kickoff_id: str, state: str,
                spans: list[dict[str, Any]]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        if not spans:
            return
        start = min(s["start"] for s in spans)
        end = max((s["end"] or s["start"]) for s in spans)
        root = self.tracer.start_span("kickoff", start_time=int(start * NS), attributes={
            "crewship.app": app, "crewship.kickoff_id": kickoff_id, "crewship.state": state})
        made: dict[str, Any] = {}
        for span in spans:  # in start order: a parent comes before its children
            parent = made.get(span["parent"] or "", root)
            otel = self.tracer.start_span(
                f"{span['kind']} {span['name']}", context=trace.set_span_in_context(parent),
                start_time=int(span["start"] * NS), attributes=_attributes(span))
            if span["status"] == "error":
                otel.set_status(Status(StatusCode.ERROR, span.get("error") or "failed"))
            made[span["id"]] = otel
        for span in spans:
            made[span["id"]].end(end_time=int((span["end"] or end) * NS))
        if state != "SUCCESS":
            root.set_status(Status(StatusCode.ERROR, state))
        root.end(end_time=int(end * NS))

    def flush(self, timeout: float = 10.0) -> bool:
        return bool(self.provider.force_flush(int(timeout * 1000)))

    def close(self) -> None:
        self.provider.shutdown()


def _attributes(span: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"crewai.kind": span["kind"], "crewai.name": span["name"],
                             "crewship.span_id": span["id"]}
    tokens = span.get("tokens")
    if tokens:
        attrs.update({"gen_ai.usage.input_tokens": tokens["prompt"],
                      "gen_ai.usage.output_tokens": tokens["completion"],
                      "crewai.tokens.total": tokens["total"]})
    for key in ("input", "output", "error"):
        if span.get(key):
            attrs[f"crewai.{key}"] = span[key]
    return attrs


def make_export(endpoint: str, policy: Policy) -> TraceExport | None:
    """The export the operator configured, or None (not set, no SDK, or a refused URL:
    said once in the log, the rest of crewship runs on)."""
    if not endpoint:
        return None
    try:
        check_url(traces_url(endpoint), "CREWSHIP_OTLP_ENDPOINT", policy)
        export = TraceExport(endpoint)
    except InvalidInputError as exc:
        logger.warning("otlp_export_off", reason=str(exc))
        return None
    except ImportError:
        logger.warning("otlp_export_off", reason="the OpenTelemetry SDK is not installed: "
                       "pip install 'crewship[otlp]'")
        return None
    logger.info("otlp_export_on", url=export.url)
    return export
