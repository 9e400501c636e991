"""Prometheus metrics of one ``ams serve`` process, in a registry of its own."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ams import __version__
from ams.instance import Instance

__all__ = ["Metrics"]


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
        self._backup_gauges(instance)
        self.registry.register(_AuditCollector(instance))

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
