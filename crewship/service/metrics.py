"""Prometheus metrics, one registry per daemon (never the global one), served at ``/metrics``.

Counters and histograms are updated by ``crewship.service.telemetry`` (deploys, kickoffs,
restarts), the HTTP middleware (requests) and the SSH endpoint (auth failures);
instance and app states are read from the supervisor at scrape time through
``states`` (a callable the daemon sets), so they are never stale.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.backend import InstanceRef
from runtime.usage import Usage

_APP_LABEL = re.compile(rb'[{,]app="([^"]*)"')
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEPLOY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
KICKOFF_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# (app, app state, [instance states], restarts since the last deploy) for every app.
StateSource = Callable[[], Iterable[tuple[str, str, list[str], int]]]
# The latest usage of every live instance (crewship/service/usage.py).
UsageSource = Callable[[], Iterable[tuple[InstanceRef, Usage]]]

_USAGE_GAUGES = (
    ("memory_bytes", "crewship_instance_memory_bytes", "Resident memory of an instance's processes"),
    ("cpu_percent", "crewship_instance_cpu_percent", "CPU use of an instance, percent of one core"),
    ("fds", "crewship_instance_open_fds", "Open file descriptors of an instance's processes"),
    ("threads", "crewship_instance_threads", "Threads of an instance's processes"),
    ("uptime_seconds", "crewship_instance_uptime_seconds", "Seconds since the instance started"),
)


class _UsageCollector(Collector):
    """Per-instance gauges labelled app, release and instance, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        families = {key: GaugeMetricFamily(name, text, labels=["app", "release", "instance"])
                    for key, name, text in _USAGE_GAUGES}
        for ref, usage in self._metrics.usage():
            figures = usage.as_dict()
            for key, family in families.items():
                if figures.get(key) is not None:
                    family.add_metric([ref.app, f"v{ref.release}", ref.id], figures[key])
        yield from families.values()


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily("crewship_instances", "Crew instances by app and state",
                                      labels=["app", "state"])
        apps = GaugeMetricFamily("crewship_apps", "Apps by state", labels=["state"])
        restarts = GaugeMetricFamily("crewship_app_restarts", "Crash restarts since the app's "
                                     "last deploy (the 'restarts' of 'status')", labels=["app"])
        per_state: Tally[str] = Tally()
        for app, app_state, states, restarted in self._metrics.states():
            per_state[app_state] += 1
            restarts.add_metric([app], restarted)
            for state, count in sorted(Tally(states).items()):
                instances.add_metric([app, state], count)
        for state, count in sorted(per_state.items()):
            apps.add_metric([state], count)
        yield instances
        yield apps
        yield restarts


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.states: StateSource = lambda: ()
        self.usage: UsageSource = lambda: ()
        r = self.registry
        self.deploys = Counter("crewship_deploys", "Deploys (new releases) by kind and outcome",
                               ["app", "kind", "outcome"], registry=r)
        self.deploy_seconds = Histogram("crewship_deploy_duration_seconds",
                                        "Deploy duration, build included, by outcome",
                                        ["outcome"], buckets=DEPLOY_BUCKETS, registry=r)
        self.build_cache = Counter("crewship_build_cache", "Dependency environment lookups "
                                   "of pushed builds by result (hit, miss)", ["result"], registry=r)
        self.crashes = Counter("crewship_instance_crashes", "Instances that exited on their own "
                               "(each is restarted with backoff unless the app is crashed)",
                               ["app"], registry=r)
        self.memory_exceeded = Counter("crewship_instance_memory_exceeded", "Instances stopped "
                                       "for going over their memory limit", ["app"], registry=r)
        self.crashed = Counter("crewship_app_crash_loops", "Apps given up as crashed (crash loops)",
                               ["app"], registry=r)
        self.kickoffs = Counter("crewship_kickoffs", "Finished kickoffs by outcome "
                                "(SUCCESS, FAILURE, REVOKED)", ["app", "outcome"], registry=r)
        self.kickoff_seconds = Histogram("crewship_kickoff_duration_seconds",
                                         "Kickoff execution time", ["app"],
                                         buckets=KICKOFF_BUCKETS, registry=r)
        self.tokens = Counter("crewship_llm_tokens", "LLM tokens reported in crew results",
                              ["app", "kind"], registry=r)
        self.http = Counter("crewship_http_requests", "HTTP requests by route template and status",
                            ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("crewship_http_request_duration_seconds",
                                      "HTTP request duration by route template", ["route"],
                                      buckets=HTTP_BUCKETS, registry=r)
        self.ssh_auth_failures = Counter("crewship_ssh_auth_failures",
                                         "SSH public keys refused at the query stage", registry=r)
        self.alerts = Counter("crewship_alerts", "Alert deliveries by event and outcome",
                              ["event", "outcome"], registry=r)
        self.webhooks = Counter("crewship_webhooks", "Kickoff webhook deliveries by the daemon "
                                "by kind and outcome", ["kind", "outcome"], registry=r)
        r.register(_StateCollector(self))
        r.register(_UsageCollector(self))

    def render(self, visible: Collection[str] | None = None) -> bytes:
        """The text format; with ``visible``, series labelled with another app are left out."""
        text = generate_latest(self.registry)
        if visible is None:
            return text
        kept = [line for line in text.splitlines(keepends=True)
                if (found := _APP_LABEL.search(line)) is None
                or found.group(1).decode() in visible]
        return b"".join(kept)

    # ---------------------------------------------------------------- updates
    def deploy_finished(self, app: str, kind: str, outcome: str, duration: float,
                        cache_hit: bool | None) -> None:
        self.deploys.labels(app, kind, outcome).inc()
        self.deploy_seconds.labels(outcome).observe(duration)
        if cache_hit is not None:
            self.build_cache.labels("hit" if cache_hit else "miss").inc()

    def kickoff_finished(self, app: str, state: str, seconds: float | None,
                         usage: dict[str, Any] | None) -> None:
        self.kickoffs.labels(app, state).inc()
        if seconds is not None:
            self.kickoff_seconds.labels(app).observe(seconds)
        for kind in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = (usage or {}).get(kind)
            if isinstance(value, int | float) and value > 0:
                self.tokens.labels(app, kind.removesuffix("_tokens")).inc(value)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.labels(method, route, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)
