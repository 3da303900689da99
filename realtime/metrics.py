"""Prometheus metrics and health endpoints of the mm2face-live server (prometheus-client).

``GET /metrics`` (Prometheus text format), ``GET /healthz`` (200 while the server's loop answers)
and ``GET /readyz`` (200 when a new session would be admitted; 503 when full or draining) are served
on the WebSocket port by :func:`mm2face.realtime.connection.http_page`. One registry per hub, no global
state; values are read from the hub when scraped, except the hop-time histogram, which the batcher
feeds as it steps. Metric names and a scrape config: docs/protocol.md ("Operations").
"""
from __future__ import annotations

import json
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("mm2face.realtime")

# Hop-time buckets (seconds): one batched engine step; 80 ms is one hop of real time.
HOP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.4, 1.0)
SESSION_STATES = ("speaking", "idle", "building")


class _HubCollector:
    """Reads the hub's sessions and counters at scrape time."""

    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        hub = self.hub
        states = dict.fromkeys(SESSION_STATES, 0)
        for s in hub.sessions.values():
            states["building" if s is None else ("idle" if s.is_idle() else "speaking")] += 1
        g = GaugeMetricFamily("mm2face_sessions", "Sessions on the server by state", labels=["state"])
        for k, v in states.items():
            g.add_metric([k], v)
        yield g
        lim = hub.limits
        g = GaugeMetricFamily("mm2face_session_limit", "Admission limits", labels=["limit"])
        g.add_metric(["max_sessions"], lim.max_sessions)
        g.add_metric(["max_sessions_per_client"], lim.max_sessions_per_client)
        g.add_metric(["capacity"], lim.effective_capacity)
        yield g
        yield GaugeMetricFamily("mm2face_clients", "Connected WebSocket clients", value=len(hub.clients))
        yield GaugeMetricFamily("mm2face_draining", "1 while the server drains (no new sessions)",
                                value=int(hub.admission.draining))
        c = CounterMetricFamily("mm2face_frames_sent", "Frames published by sessions (to all subscribers)")
        c.add_metric([], hub.frames_total)
        yield c
        c = CounterMetricFamily("mm2face_frames_dropped", "Frames dropped for clients that read too slowly")
        c.add_metric([], hub.dropped_total)
        yield c
        c = CounterMetricFamily("mm2face_admissions_refused", "Session opens refused, by error code", labels=["code"])
        for code, n in sorted(hub.admission.refused.items()):
            c.add_metric([code], n)
        yield c
        c = CounterMetricFamily("mm2face_errors", "Error replies sent to clients, by code", labels=["code"])
        for code, n in sorted(hub.errors.items()):
            c.add_metric([code], n)
        yield c


class HubMetrics:
    """The registry of one hub: its collector and the hop-time histogram (``observe_hop``)."""

    def __init__(self, hub):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HubCollector(hub))
        self.hop_seconds = Histogram("mm2face_hop_seconds", "Time of one engine step (a batched hop of every "
                                     "ready session)", buckets=HOP_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mm2face_batch_size", "Sessions per engine step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)

    def observe_hop(self, seconds: float, batch: int) -> None:
        self.hop_seconds.observe(seconds)
        self.batch_size.observe(batch)

    def exposition(self) -> tuple[bytes, str]:
        """``(body, content type)`` of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def log_event(event: str, **fields) -> None:
    """One structured log line: ``{"event": ..., **fields}`` as JSON at INFO (``mm2face-live -v``)."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, default=str, ensure_ascii=False))
