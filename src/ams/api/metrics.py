"""Prometheus metrics of one ``ams serve`` process, in a registry of its own; and the pure
ASGI middleware that counts and times every request.

With ``ams serve --workers N`` each worker process keeps its own request counters and
latencies (a scrape of ``/metrics`` reaches one worker, named by the ``pid`` label of
``ams_worker``); the gauges read from the database (backups, the audit trail) and the
failed-authentication counts (shared by the workers, ams.security.shared) are the same
whichever worker answers.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams import __version__
from ams.instance import Instance

__all__ = ["WORKER_HEADER", "Metrics", "MetricsMiddleware"]

# Every answer names the worker process that gave it (its pid): for operators following a
# request in the logs, and for tests that must reach a given worker.
WORKER_HEADER = b"x-ams-worker"


class Metrics:
    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.registry = CollectorRegistry(auto_describe=True)
        info = Info("ams", "This AMS instance.", registry=self.registry)
        info.info({"version": __version__, "instance_id": instance.id, "engine": instance.engine_name})
        self.unlocked = Gauge(
            "ams_master_key_unlocked",
            "1 when the master key is unlocked, 0 when locked.",
            registry=self.registry,
        )
        self.unlocked.set_function(
            lambda: 1.0 if instance.keyring.try_service_unlock() == "unlocked" else 0.0
        )
        self.requests = Counter(
            "ams_http_requests_total",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ams_http_request_duration_seconds",
            "Time to answer HTTP requests, by route.",
            ["route"],
            registry=self.registry,
        )
        self.leading = False  # set by the lifespan when this worker leads the jobs (ams.leader)
        self.registry.register(_WorkerCollector(self))
        self._backup_gauges(instance)
        self.registry.register(_AuditCollector(instance))
        self.registry.register(_OffsiteCollector(instance))

    def _backup_gauges(self, instance: Instance) -> None:
        """Issue 4: backups, read from the catalog and the schedule at each scrape."""
        from ams.backup.schedule import schedule_status

        def read(key: str) -> float:
            try:
                value = schedule_status(instance).get(key)
            except Exception:  # noqa: BLE001 - a scrape never fails for one gauge
                return float("nan")
            if key == "last_success_at":
                return datetime.fromisoformat(value).timestamp() if value else 0.0
            return float(value or 0)

        for name, key, text in (
            ("ams_backup_last_success_timestamp_seconds", "last_success_at", "Last good backup (Unix time)."),
            ("ams_backup_last_duration_seconds", "last_success_duration_seconds", "Seconds it took."),
            ("ams_backup_last_size_bytes", "last_success_size_bytes", "Size of the last good backup."),
            ("ams_backup_failures_total", "failures_total", "Scheduled backups that failed."),
            ("ams_backup_consecutive_failures", "consecutive_failures", "Scheduled backups failed in a row."),
        ):
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(functools.partial(read, key))


_Gauge = GaugeMetricFamily


class _AuditCollector(Collector):
    """Issue 18: the audit trail's size and the failed-authentication counts, at each scrape."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def _families(self) -> tuple[_Gauge, _Gauge, _Gauge, CounterMetricFamily]:
        return (
            GaugeMetricFamily("ams_audit_events", "Events the audit trail holds."),
            GaugeMetricFamily(
                "ams_audit_oldest_event_timestamp_seconds", "When the oldest audit event happened (Unix)."
            ),
            GaugeMetricFamily("ams_auth_throttled", "Addresses and key ids throttled now (failed auth)."),
            CounterMetricFamily(
                "ams_auth_failures",
                "Failed authentications by kind and answer (recorded, unrecorded, throttled).",
                labels=["kind", "answer"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        from ams.audit_retention import trail_size

        events, oldest, throttled, failures = self._families()
        try:
            size = trail_size(self.instance)
            events.add_metric([], float(size.events))
            oldest.add_metric([], size.oldest_at.timestamp() if size.oldest_at else 0.0)
        except Exception:  # noqa: BLE001 - a scrape never fails for one gauge
            events.add_metric([], float("nan"))
            oldest.add_metric([], float("nan"))
        throttle = self.instance.auth_throttle
        throttled.add_metric([], float(throttle.throttled_buckets()))
        for (kind, answer), count in sorted(throttle.counts().items()):
            failures.add_metric([kind, answer], float(count))
        yield from (events, oldest, throttled, failures)


class _OffsiteCollector(Collector):
    """Issue 16: per offsite target, the last successful copy's time and age, and what is missing."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def _families(self) -> tuple[_Gauge, _Gauge, _Gauge, _Gauge]:
        return (
            GaugeMetricFamily(
                "ams_offsite_last_success_timestamp_seconds",
                "Last successful copy to the target (Unix time; 0: none yet).",
                labels=["target"],
            ),
            GaugeMetricFamily(
                "ams_offsite_last_success_age_seconds",
                "Seconds since the last successful copy to the target (+Inf: none yet).",
                labels=["target"],
            ),
            GaugeMetricFamily(
                "ams_offsite_last_copy_failed",
                "1 when the last copy to the target failed.",
                labels=["target"],
            ),
            GaugeMetricFamily(
                "ams_offsite_missing_copies", "Verified backups not yet on the target.", labels=["target"]
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        from ams.backup.offsite import offsite_status

        stamp, age, failed, missing = self._families()
        try:
            targets = offsite_status(self.instance)
        except Exception:  # noqa: BLE001 - a scrape never fails for one gauge
            targets = []
        for t in targets:
            at = t["last_success_at"]
            stamp.add_metric([t["name"]], datetime.fromisoformat(at).timestamp() if at else 0.0)
            seconds = t["last_success_age_seconds"]
            age.add_metric([t["name"]], float(seconds) if seconds is not None else float("inf"))
            last = t["last_copy"]
            failed.add_metric([t["name"]], 1.0 if last and last["state"] == "failed" else 0.0)
            missing.add_metric([t["name"]], float(t["missing"]))
        yield from (stamp, age, failed, missing)


class _WorkerCollector(Collector):
    """``ams_worker{pid, jobs}``: which worker answered the scrape, and whether it leads."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ams_worker",
            "This worker process (pid); jobs is 1 in the one worker that runs the background jobs.",
            labels=["pid", "jobs"],
        )
        family.add_metric([str(os.getpid()), "1" if self.metrics.leading else "0"], 1.0)
        yield family


class MetricsMiddleware:
    """Counts and times each HTTP answer by route and status, and names the worker in an
    ``X-AMS-Worker`` header. Pure ASGI: no second request object, no task per request (what
    Starlette's ``BaseHTTPMiddleware`` cost every request before)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        pid = str(os.getpid()).encode()  # a forked worker has its own

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: Any = message.setdefault("headers", [])
                if isinstance(headers, list):
                    headers.append((WORKER_HEADER, pid))
                else:
                    message["headers"] = [*headers, (WORKER_HEADER, pid)]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
