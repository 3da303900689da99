"""Stats of the mm2face-live server: per-session frame rate and latency, and the ``stats`` replies.

:class:`SessionMeter` keeps a session's recent send times and latencies (input ready -> sent, and own
audio arrived -> sent); :func:`session_stats` and :func:`hub_stats` build the ``session`` and ``server``
objects of the protocol's ``stats`` reply (docs/protocol.md). Prometheus metrics are in
:mod:`mm2face.realtime.metrics`.
"""
from __future__ import annotations

import collections
import contextlib
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from mm2face.engine.frame import FPS, SAMPLE_RATE

if TYPE_CHECKING:
    from mm2face.realtime.server import Hub, LiveSession

FPS_WINDOW_S = 2.0            # the frame rate counts frames sent in this many past seconds
SEND_TIMES_KEPT = 100         # send times kept per session (enough for 25 fps over FPS_WINDOW_S)
LATENCIES_KEPT = 250          # latencies kept per session (10 s at 25 fps) for the medians and percentiles


class SessionMeter:
    """Recent send times and latencies of one session's frames (all times ``time.time()`` seconds)."""

    def __init__(self):
        self.send_times: collections.deque[float] = collections.deque(maxlen=SEND_TIMES_KEPT)
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=LATENCIES_KEPT)   # input ready -> sent
        self.a2f_ms: collections.deque[float] = collections.deque(maxlen=LATENCIES_KEPT)       # audio arrived -> sent

    def observe(self, frames, now: float) -> None:
        """Frames (``P.WireFrame``) sent at ``now``."""
        for wf in frames:
            self.send_times.append(now)
            if math.isfinite(wf.input_ready_time):
                self.latency_ms.append(1e3 * (now - wf.input_ready_time))
            if math.isfinite(wf.audio_arrival_time):
                self.a2f_ms.append(1e3 * (now - wf.audio_arrival_time))

    def fps(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        n = sum(1 for t in self.send_times if t > now - FPS_WINDOW_S)
        return n / FPS_WINDOW_S

    def median_latency_ms(self) -> float:
        """Median server processing latency of recent frames (last needed audio in -> sent), ms."""
        return float(np.median(self.latency_ms)) if self.latency_ms else math.nan

    def median_a2f_ms(self) -> float:
        """Median server-side audio-to-face latency of recent frames (own audio in -> sent), ms."""
        return float(np.median(self.a2f_ms)) if self.a2f_ms else math.nan


def _percentile(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def session_stats(live: "LiveSession") -> dict:
    """The ``session`` object of a ``stats`` reply."""
    m = live.meter
    lat, a2f = list(m.latency_ms), list(m.a2f_ms)
    engine = {}
    with contextlib.suppress(Exception):
        engine = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v))
                  for k, v in dict(live.session.stats).items()}
    return {
        "session": live.name, "style": live.style, "guidance": live.guidance,
        "frames": live.frames_out, "audio_s": live.audio_samples_in / SAMPLE_RATE,
        "time_s": live.t_wire_s(), "idle_played_s": live.seq_offset / FPS, "fps": m.fps(),
        "latency_ms_p50": _percentile(lat, 50), "latency_ms_p95": _percentile(lat, 95),
        "audio_to_send_ms_p50": _percentile(a2f, 50), "audio_to_send_ms_p95": _percentile(a2f, 95),
        "subscribers": len(live.subscribers),
        "idle": ("idle" if live.idle_active else "active") if live.idle else "off",
        "dropped_frames": live.dropped_frames,
        "dropped_audio_chunks": live.dropped_audio_chunks,
        "clipped_samples": live.n_clipped,
        "sample_rate": live.sample_rate, "sample_format": live.sample_format,
        "engine_ms": engine,
    }


def hub_stats(hub: "Hub") -> dict:
    """The ``server`` object of a ``stats`` reply."""
    out = {"uptime_s": time.time() - hub.started, "clients": len(hub.clients),
           "sessions": hub.live_sessions(), "dropped_frames_total": hub.dropped_total,
           "limits": hub.limits_info(), "refused": dict(hub.admission.refused),
           "errors": dict(hub.errors)}
    if hub.batcher is not None and hub.batcher.stats["batches"]:
        st = hub.batcher.stats
        out["batch_steps"] = st["batches"]
        out["batch_size_mean"] = st["hops"] / st["batches"]
    return out
