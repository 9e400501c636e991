"""Prometheus metrics of one ``ams serve`` process, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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
