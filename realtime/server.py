"""The mm2face-live WebSocket server (protocol v2, see docs/protocol.md), a thin asyncio layer.

    hub = Hub(make_session)                       # make_session(style) -> StreamSession
    default = await hub.create_session("default", style="calm")
    async with serve_hub(hub, "127.0.0.1", 8765):  # clients subscribe / open their own sessions
        await default.push_audio(audio_16k, arrival_time=time.time())

Parsing and encoding live in :mod:`mm2face.realtime.protocol` (sans-I/O). This module holds:

* :class:`LiveSession`: one StreamSession plus its subscribers. Its input goes to the hub's scheduler
  (:class:`mm2face.engine.batching.SessionBatcher`, one worker thread that steps every session as
  batched hops); the worker hands each session's frames back to the event loop
  (``loop.call_soon_threadsafe``), which pushes them to every subscriber at once. The event loop never
  waits on the model. Each frame carries the timing its session recorded (``audio_arrival_time``,
  ``input_ready_time``).
* :class:`ClientConn`: one WebSocket client with a bounded outbox. When a client stops reading, its
  oldest queued frames are dropped (for it alone) and counted; control replies are never dropped.
* :class:`Hub`: the sessions of one server, its scheduler and the connection handler.
* :class:`IdleClock`: keeps client sessions that receive no audio moving (breathing, blinks) at 25 fps.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mm2face.engine.batching import SPEAKING_HOLD_S, SessionBatcher
from mm2face.engine.frame import FPS, FRAME_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from mm2face.realtime import protocol as P
from mm2face.realtime import web_static
from mm2face.realtime.admission import (AUDIO_MSG_BURST, AUDIO_MSG_RATE_PER_S, INGEST_BURST_S, Admission,
                                        IdleReaper, Limits, RateLimiter)
from mm2face.realtime.idle_loop import IdleLoop
from mm2face.realtime.metrics import HubMetrics, log_event
from mm2face.engine.audio import StreamResampler

log = logging.getLogger("mm2face.realtime")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
# --server-session-control: what clients may send to the server's own sessions (mic / wav / text-only)
SERVER_SESSION_CONTROL = {"none": (), "style": ("style",), "all": ("style", "end", "flush")}
OUTBOX_MAX_FRAMES = 50        # per client: 2 s of frames; beyond that the oldest are dropped
OUTBOX_MAX_AUDIO_S = 2.0      # per client: seconds of session audio queued (subscribe "audio"); beyond, the oldest drop
OUTBOX_MAX_CONTROL = 500      # per client: unanswered control replies before it is disconnected
SEND_BUFFER_BYTES = 64 * 1024  # kernel send buffer per client: bounds the frames in flight to a slow client
WS_MAX_SIZE = 4 * P.MAX_AUDIO_BYTES   # websockets closes the socket (1009) above this; we answer below it
IDLE_AFTER_S = 0.5            # a client session whose audio has played out this long ago (s) goes idle
IDLE_MAX_BURST_FRAMES = 25    # idle clock: after a stall longer than this (frames) it re-anchors, no burst
MAX_BATCH = 64                # most sessions in one batched engine call (larger rounds are split)
REAP_EVERY_S = 1.0            # how often idle client sessions without subscribers are checked for the timeout
IDLE_TIMEOUT_REASON = "idle timeout: no audio and no subscriber"
INGEST_SLICE_SAMPLES = 1280   # a client audio message is fed in slices of this many 16 kHz samples (80 ms, one hop)


class SessionClosed(Exception):
    pass


@dataclass
class _PlayedFrame:
    """A frame of recorded idle motion (see :class:`~mm2face.realtime.idle_loop.IdleLoop`), numbered on
    the wire clock."""
    seq: int
    params: np.ndarray                 # (56,) float32
    style: str

    @property
    def t_audio_s(self) -> float:
        return self.seq / FPS


class LiveSession:
    """A StreamSession shared by its subscribers. All methods are called from the event loop."""

    def __init__(self, hub: "Hub", name: str, num: int, session, style: str, owner=None):
        self.hub, self.name, self.num, self.session, self.owner = hub, name, num, session, owner
        self.style, self.guidance = style, None
        self.subscribers: dict["ClientConn", str] = {}     # client -> a protocol FRAME_FORMATS entry
        self.listeners: list[Callable[["LiveSession", list[P.WireFrame]], None]] = []
        self.audio_taps: list[Callable[[np.ndarray], None]] = []   # see every 16 kHz chunk pushed
        self.audio_subscribers: set["ClientConn"] = set()   # subscribers that asked for the audio (MMAU)
        self.loop = asyncio.get_running_loop()     # where the scheduler's worker hands the frames back
        self._collecting: list[list[P.WireFrame]] = []   # callers awaiting this session's next frames
        self.closed = False
        # Audio bookkeeping (16 kHz samples).
        self.samples_in = 0                  # samples handed to the scheduler (audio + no-audio); after
                                             # end/flush the session's own count (padding, dropped audio)
        self.audio_samples_in = 0            # of which real audio
        self.n_clipped = 0
        self.warned_clipped = False
        self.last_audio_time = 0.0           # time.time() of the last real audio chunk
        # Idle clock (client sessions, see IdleClock): play_end is the wall time at which the input so
        # far would have finished playing at real-time pace (each chunk starts at max(play_end, arrival)).
        self.idle = False                    # driven by the hub's IdleClock when starved
        self.idle_active = False             # now inside an idle stretch
        self.input_over = False              # end/flush since the last audio: go idle without grace
        self.play_end = time.time()          # a session opened without audio goes idle after the grace
        # Cheap idle: after a few seconds of idle motion with one style, play a recording of it instead
        # of stepping the model (see idle_loop.py); frames keep counting on: wire seq = engine seq + offset.
        self.idle_loop = IdleLoop() if hub.idle_replay else None
        self.seq_offset = 0                  # frames played back from the idle loop so far
        # audio seconds per wall second a client may feed (None: unpaced); see Hub(ingest_speed=...)
        self.ingest_rate = (RateLimiter(hub.ingest_speed, INGEST_BURST_S) if hub.ingest_speed else None)
        # Client-fed audio format (for sessions opened by a client).
        self.sample_rate, self.sample_format = SAMPLE_RATE, "pcm16"
        self.resampler = StreamResampler(SAMPLE_RATE)
        # Output bookkeeping.
        self.frames_out = 0
        self.dropped_frames = 0              # of this session's frames, dropped for slow subscribers
        self.dropped_audio_chunks = 0        # of its MMAU audio messages, dropped for slow subscribers
        self.last_frame: P.WireFrame | None = None
        self._send_times: collections.deque[float] = collections.deque(maxlen=100)
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=250)   # input ready -> sent
        self._a2f_ms: collections.deque[float] = collections.deque(maxlen=250)       # audio arrived -> sent
        self.created = time.time()

    # -- input, through the hub's scheduler (its worker thread steps the session) ---------------

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosed(self.name)

    async def _frames_until_caught_up(self) -> list[P.WireFrame]:
        """Wait (without blocking the loop) until the scheduler has applied this session's queued input and
        run every ready hop; the frames published meanwhile. A session whose hop failed is closed:
        :class:`SessionClosed`."""
        fut = self.loop.create_future()

        def done(exc: BaseException | None) -> None:         # worker thread
            self.loop.call_soon_threadsafe(_settle, fut, exc)
        got: list[P.WireFrame] = []
        self._collecting.append(got)
        try:
            self.hub.batcher.when_caught_up(self, done)
            exc = await fut
        except KeyError:                                       # removed meanwhile
            exc = None
        finally:
            self._collecting.remove(got)
        if exc is not None or self.closed:
            raise SessionClosed(self.name)
        return got

    def _deliver(self, frames) -> None:
        """Frames from the scheduler's worker (called on the event loop): publish them."""
        if self.closed:
            return
        out = self._publish(frames)
        for got in self._collecting:
            got.extend(out)

    async def push_audio(self, audio_16k: np.ndarray, arrival_time: float | None = None) -> list[P.WireFrame]:
        """Feed ``audio_16k: (samples,) float32`` that arrived at server time ``arrival_time``; returns once
        its hops have run, with the frames published meanwhile."""
        audio_16k = np.asarray(audio_16k, np.float32).reshape(-1)
        if len(audio_16k) == 0:
            return []
        self._check_open()
        t = time.time() if arrival_time is None else arrival_time
        if self.idle_active:                 # audio resumes after idle frames: it starts right after them
            self.idle_active = False
            self._stop_idle_loop()
            self._idle_event("active", self.t_wire_s())
        self._send_audio(audio_16k)
        self.samples_in += len(audio_16k)
        self.audio_samples_in += len(audio_16k)
        self.last_audio_time = t
        self._played(len(audio_16k), t)
        self.input_over = False
        for tap in self.audio_taps:
            tap(audio_16k)
        self.hub.batcher.push_audio(self, audio_16k, arrival_time=t)
        return await self._frames_until_caught_up()

    def _send_audio(self, audio_16k: np.ndarray) -> None:
        """Queue ``audio_16k: (samples,) float32``, about to be consumed, for the subscribers that asked for the
        audio: stamped with the session-clock sample and the frames' time of its first sample (call under the lock)."""
        clients = [c for c in self.audio_subscribers if c in self.subscribers]
        if clients:
            msg = P.encode_audio_out(self.num, self.samples_in, self.t_wire_s(), audio_16k)
            for c in clients:
                c.send_audio(msg, len(audio_16k), self)

    async def push_no_audio(self, n_samples: int) -> list[P.WireFrame]:
        """Let ``n_samples`` of 16 kHz time pass with no audio (idle / text-only motion)."""
        if n_samples <= 0:
            return []
        self._check_open()
        self._feed_no_audio(int(n_samples))
        return await self._frames_until_caught_up()

    def _feed_no_audio(self, n_samples: int) -> None:
        """Hand ``n_samples`` of no-audio time to the scheduler (returns at once)."""
        now = time.time()
        self.samples_in += n_samples
        self._played(n_samples, now)
        self.hub.batcher.push_no_audio(self, n_samples, arrival_time=now)

    def _played(self, n_samples: int, arrival: float) -> None:
        self.play_end = max(self.play_end, arrival) + n_samples / SAMPLE_RATE

    def _idle_event(self, state: str, t_audio_s: float) -> None:
        msg = P.event_json("idle", session=self.name, state=state, t_audio_s=round(t_audio_s, 6),
                           audio_s=round(self.audio_samples_in / SAMPLE_RATE, 6))
        for c in list(self.subscribers):
            c.send_control(msg)

    def idle_due(self, now: float) -> int:
        """Frames of idle time the idle clock should push now (0: none).

        Starved = no audio has arrived for ``IDLE_AFTER_S`` past the play-out of the input so far
        (no grace after end/flush). An idle stretch then keeps the session clock one frame ahead of
        real time, i.e. 25 idle frames per second."""
        if not self.idle or self.closed:
            return 0
        if not self.idle_active:
            if now < self.play_end + (0.0 if self.input_over else IDLE_AFTER_S):
                return 0
            self.idle_active = True
            self.play_end = now                    # idle time starts now (the grace is not made up)
            if self.idle_loop is not None:
                self.idle_loop.reset()
            self._idle_event("idle", self.t_wire_s())
        n = math.ceil((now + 1.0 / FPS - self.play_end) * FPS - 1e-6)
        if n > IDLE_MAX_BURST_FRAMES:              # the loop stalled: re-anchor rather than burst
            self.play_end, n = now, 1
        return max(0, n)

    def t_wire_s(self) -> float:
        """The session clock as clients see it: input taken in, plus idle time played back."""
        return self.samples_in / SAMPLE_RATE + self.seq_offset / FPS

    def replaying(self) -> bool:
        return self.idle_loop is not None and self.idle_loop.playing and self.idle_active

    def play_idle(self, n_frames: int) -> list[P.WireFrame]:
        """Publish ``n_frames`` of recorded idle motion (no model step)."""
        params = self.idle_loop.play(n_frames)
        base = (self.last_frame.seq + 1) if self.last_frame is not None else self.seq_offset
        frames = [_PlayedFrame(base + i, p, self.style) for i, p in enumerate(params)]
        self.seq_offset += n_frames
        self._played(n_frames * SAMPLES_PER_FRAME, time.time())
        return self._publish(frames)

    def _stop_idle_loop(self) -> None:
        if self.idle_loop is not None and self.idle_loop.playing:
            self.idle_loop.stop(self.last_frame.params if self.last_frame is not None else None)

    async def set_style(self, text: str, blend_s: float = 0.5, guidance: float | None = None,
                        requester: "ClientConn | None" = None) -> None:
        self._check_open()
        if guidance is not None and not math.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        self.hub.batcher.set_style(self, text, blend_s)
        if guidance is not None:
            self.hub.batcher.set_guidance(self, guidance)
        await self._frames_until_caught_up()
        if self.style != text or guidance is not None:
            self._stop_idle_loop()
        self.style = text
        if guidance is not None:
            self.guidance = guidance
        msg = P.event_json("style", session=self.name, text=text, blend_s=blend_s, guidance=self.guidance)
        for c in set(self.subscribers) | ({requester} if requester is not None else set()):
            c.send_control(msg)
        self.hub.notify_status(self)

    async def end(self) -> list[P.WireFrame]:
        """The input is over: emit the remaining frames (mouth closes, face returns to idle); the last one
        is ``final``. Returns the frames published until the session caught up."""
        self._check_open()
        self._stop_idle_loop()
        now, n0 = time.time(), self.samples_in
        self.hub.batcher.end(self, arrival_time=now)
        frames = await self._frames_until_caught_up()
        self.samples_in = self.session.n_in          # the session's clock: padding and tail added
        self._played(max(0, self.samples_in - n0), now)
        self.input_over = True
        return frames

    async def flush(self) -> list[P.WireFrame]:
        """Barge-in: drop queued audio; the face returns to idle within one hop."""
        self._check_open()
        self._stop_idle_loop()
        now, n0 = time.time(), self.samples_in
        self.hub.batcher.flush(self, arrival_time=now)
        frames = await self._frames_until_caught_up()
        self.samples_in = self.session.n_in          # the session's clock: unused audio dropped, idle hop added
        # Barge-in: the dropped audio will never play, so play-out restarts now.
        self.play_end = now + max(0, self.samples_in - n0) / SAMPLE_RATE
        self.input_over = True
        self.resampler = StreamResampler(self.sample_rate)
        return frames

    # -- frames out ---------------------------------------------------------------------------

    def _publish(self, frames) -> list[P.WireFrame]:
        out = []
        for i, f in enumerate(frames):
            params = np.asarray(f.params, np.float32).reshape(-1)
            if params.shape != (FRAME_DIM,) or not np.isfinite(params).all():
                log.error("session %s produced a malformed frame %s; skipped", self.name, getattr(f, "seq", "?"))
                continue
            t = float(f.t_audio_s)
            if isinstance(f, _PlayedFrame):          # idle playback: already numbered on the wire clock
                seq, arrival, ready = f.seq, math.nan, time.time()
            else:                                    # the session's own timing of this frame
                arrival, ready = float(f.audio_arrival_time), float(f.input_ready_time)
                seq = int(f.seq) + self.seq_offset
                if self.idle_loop is not None:
                    params = self.idle_loop.blend(params)
                    if self.idle_active and not math.isfinite(arrival):
                        self.idle_loop.record(params)
            t = seq / FPS if self.seq_offset else t
            wf = P.WireFrame(session=self.name, session_num=self.num, seq=seq, t_audio_s=t, params=params,
                             audio_arrival_time=arrival, input_ready_time=ready,
                             style=str(getattr(f, "style", self.style) or ""),
                             final=bool(getattr(f, "final", False)))
            out.append(wf)
        if not out:
            return out
        now = time.time()
        for wf in out:
            wf.server_send_time = now
            self._send_times.append(now)
            if math.isfinite(wf.input_ready_time):
                self._latency_ms.append(1e3 * (now - wf.input_ready_time))
            if math.isfinite(wf.audio_arrival_time):
                self._a2f_ms.append(1e3 * (now - wf.audio_arrival_time))
        encoder = P.FrameBatchEncoder(out, self.hub.arkit_retarget)    # each format (and ARKit) once
        for client, fmt in list(self.subscribers.items()):
            for m in encoder.get(fmt):
                client.send_frame(m, self)
        self.frames_out += len(out)
        self.hub.frames_total += len(out)
        self.last_frame = out[-1]
        for fn in list(self.listeners):
            try:
                fn(self, out)
            except Exception:  # a broken listener must not stop the stream
                log.exception("frame listener failed for session %s", self.name)
        return out

    # -- stats --------------------------------------------------------------------------------

    def is_idle(self, now: float | None = None) -> bool:
        """No real audio has arrived for ``SPEAKING_HOLD_S`` (idle, text-only, or not yet speaking)."""
        now = time.time() if now is None else now
        return now - self.last_audio_time > SPEAKING_HOLD_S

    def fps(self) -> float:
        ts = [t for t in self._send_times if t > time.time() - 2.0]
        return len(ts) / 2.0 if ts else 0.0

    def latency_ms(self) -> float:
        """Median server processing latency of recent frames (last needed audio in -> sent), ms."""
        return float(np.median(self._latency_ms)) if self._latency_ms else math.nan

    def a2f_ms(self) -> float:
        """Median server-side audio-to-face latency of recent frames (own audio in -> sent), ms."""
        return float(np.median(self._a2f_ms)) if self._a2f_ms else math.nan

    def stats(self) -> dict:
        lat = list(self._latency_ms)
        engine = {}
        with contextlib.suppress(Exception):
            engine = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v))
                      for k, v in dict(self.session.stats).items()}
        return {
            "session": self.name, "style": self.style, "guidance": self.guidance,
            "frames": self.frames_out, "audio_s": self.audio_samples_in / SAMPLE_RATE,
            "time_s": self.t_wire_s(), "idle_played_s": self.seq_offset / FPS, "fps": self.fps(),
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat else None,
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat else None,
            "audio_to_send_ms_p50": float(np.percentile(self._a2f_ms, 50)) if self._a2f_ms else None,
            "audio_to_send_ms_p95": float(np.percentile(self._a2f_ms, 95)) if self._a2f_ms else None,
            "subscribers": len(self.subscribers),
            "idle": ("idle" if self.idle_active else "active") if self.idle else "off",
            "dropped_frames": self.dropped_frames,
            "dropped_audio_chunks": self.dropped_audio_chunks,
            "clipped_samples": self.n_clipped,
            "sample_rate": self.sample_rate, "sample_format": self.sample_format,
            "engine_ms": engine,
        }


def _settle(fut: asyncio.Future, exc: BaseException | None) -> None:
    """Resolve ``fut`` with ``exc`` (None: caught up) unless it was cancelled meanwhile."""
    if not fut.done():
        fut.set_result(exc)


class IdleClock:
    """Keeps starved client sessions moving: a real-time clock that ticks once per frame (40 ms) and
    pushes no-audio time into every session whose :meth:`LiveSession.idle_due` says so, so that it
    emits idle frames (breathing, blinks, current style) at 25 fps until its audio resumes.

    The idle sessions of one tick are fed to the hub's scheduler together, so their hops run in the same
    batched step as any session with real audio: N idle sessions cost about one batched hop per tick
    (speakers are served first when a round is full). A session replaying recorded idle motion costs no
    engine step at all. A tick returns once the sessions it fed have caught up (it waits, never blocks)."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        self._task: asyncio.Task | None = None
        self.ticks = 0

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _sessions(self) -> list[LiveSession]:
        return [s for s in self.hub.sessions.values() if s is not None and s.idle and not s.closed]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0, i = loop.time(), 0
        while True:
            i += 1
            delay = t0 + i / FPS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:                     # the loop stalled: re-anchor the tick grid
                t0, i = loop.time(), 0
            sessions = self._sessions()
            if not sessions:
                return                             # restarted by the next session that wants idle
            try:
                await self.tick(sessions, time.time())
            except Exception:                      # a failing session must not stop the others' idle
                log.exception("idle clock tick failed")
            self.ticks += 1

    async def tick(self, sessions: list[LiveSession], now: float) -> None:
        fed = []
        for s in sessions:
            n = s.idle_due(now)
            if n > 0 and s.replaying():
                s.play_idle(n)                     # recorded idle motion: no engine step
            elif n > 0:
                s._feed_no_audio(n * SAMPLES_PER_FRAME)
                fed.append(s)
        for r in await asyncio.gather(*(s._frames_until_caught_up() for s in fed), return_exceptions=True):
            if isinstance(r, Exception) and not isinstance(r, SessionClosed):
                log.error("idle step failed: %s", r)


_CONTROL, _FRAME, _AUDIO = 0, 1, 2    # kinds of ClientConn outbox entries


def _audio_out_samples(msg: bytes) -> int:
    """16 kHz samples in an MMAU message (header, then PCM16)."""
    return (len(msg) - P.AUDIO_OUT_HEADER_BYTES) // 2


class ClientConn:
    """One connected WebSocket client: its subscriptions, its own session and a bounded outbox."""

    _ids = itertools.count(1)

    def __init__(self, hub: "Hub", ws, max_frames: int = OUTBOX_MAX_FRAMES):
        self.hub, self.ws, self.max_frames = hub, ws, max_frames
        self.id = next(self._ids)
        self.authed = hub.token is None
        self.own: LiveSession | None = None
        self.subs: set[str] = set()
        self.outbox: collections.deque = collections.deque()   # (kind: _CONTROL/_FRAME/_AUDIO, message, LiveSession | None)
        self.addr = _peer_host(ws)                              # client address: per-client session limit
        self.control_rate = RateLimiter()                       # control messages per second
        self.audio_rate = RateLimiter(AUDIO_MSG_RATE_PER_S, AUDIO_MSG_BURST)   # audio messages per second
        self._rate_warned_at = -math.inf
        self.n_frames_queued = 0
        self.n_control_queued = 0
        self.audio_samples_queued = 0                           # 16 kHz samples in queued MMAU messages
        self.dropped = 0
        self.dropped_audio_chunks = 0
        self.sent_frames = 0
        self._wake = asyncio.Event()
        self.closing = False
        self._warned_drop_at = 0

    # -- outbox -------------------------------------------------------------------------------

    def send_frame(self, msg, live: "LiveSession | None" = None) -> None:
        """Queue a frame of session ``live`` (its drops are counted for that session)."""
        if self.closing:
            return
        if self.n_frames_queued >= self.max_frames:
            # Drop this client's oldest queued frame: it fell behind; everyone else is unaffected.
            for i, (kind, _, of) in enumerate(self.outbox):
                if kind == _FRAME:
                    del self.outbox[i]
                    if of is not None:
                        of.dropped_frames += 1
                    break
            self.n_frames_queued -= 1
            self.dropped += 1
            self.hub.dropped_total += 1
        self.outbox.append((_FRAME, msg, live))
        self.n_frames_queued += 1
        self._wake.set()

    def send_audio(self, msg: bytes, n_samples: int, live: "LiveSession") -> None:
        """Queue an MMAU message of ``n_samples`` of session ``live``'s audio. Bounded like frames: past
        ``OUTBOX_MAX_AUDIO_S`` queued, this client's oldest audio messages are dropped and counted."""
        if self.closing:
            return
        limit = int(OUTBOX_MAX_AUDIO_S * SAMPLE_RATE)
        while self.audio_samples_queued + n_samples > limit and self.audio_samples_queued > 0:
            for i, (kind, old, of) in enumerate(self.outbox):
                if kind == _AUDIO:
                    del self.outbox[i]
                    self.audio_samples_queued -= _audio_out_samples(old)
                    self.dropped_audio_chunks += 1
                    of.dropped_audio_chunks += 1
                    break
            else:
                break
        self.outbox.append((_AUDIO, msg, live))
        self.audio_samples_queued += n_samples
        self._wake.set()

    def send_control(self, msg: str) -> None:
        if self.closing:
            return
        if self.n_control_queued >= OUTBOX_MAX_CONTROL:
            log.warning("client %d is not reading its replies; disconnecting it", self.id)
            self.closing = True
            asyncio.ensure_future(self.ws.close(1008, "not reading replies"))
            return
        self.outbox.append((_CONTROL, msg, None))
        self.n_control_queued += 1
        self._wake.set()

    def error(self, code: str, message: str, ref: str | None = None) -> None:
        self.send_control(P.error_json(code, message, ref))

    async def writer(self) -> None:
        while True:
            while not self.outbox:
                self._wake.clear()
                await self._wake.wait()
            kind, msg, _ = self.outbox.popleft()
            if kind == _FRAME:
                self.n_frames_queued -= 1
            elif kind == _AUDIO:
                self.audio_samples_queued -= _audio_out_samples(msg)
            else:
                self.n_control_queued -= 1
            await self.ws.send(msg)
            if kind == _FRAME:
                self.sent_frames += 1
                if self.dropped > self._warned_drop_at and not self.outbox:
                    # Tell the client once it has caught up that it lost frames.
                    self._warned_drop_at = self.dropped
                    await self.ws.send(P.warning_json(P.WarningCode.FRAMES_DROPPED,
                                                      f"{self.dropped} frames dropped so far because this "
                                                      "client read too slowly"))


class Hub:
    """The sessions of one server. ``make_session(style) -> StreamSession`` builds new sessions (all on
    one model). One scheduler (:class:`~mm2face.engine.batching.SessionBatcher`, ``self.batcher``, made
    with the first session) steps them all in its worker thread, ``max_batch`` sessions per batched call;
    :meth:`close` stops it.
    """

    def __init__(self, make_session: Callable[[str], object], token: str | None = None,
                 max_frames_per_client: int = OUTBOX_MAX_FRAMES, max_sessions: int = 64,
                 send_buffer_bytes: int = SEND_BUFFER_BYTES, max_batch: int = MAX_BATCH, limits: Limits | None = None,
                 server_session_control: str = "style", idle_replay: bool = True,
                 ingest_speed: float | None = None):
        self.make_session = make_session
        self.token = token
        self.max_frames_per_client = max_frames_per_client
        # Without explicit limits (library use, tests): only the server-wide session limit applies.
        self.limits = limits or Limits(max_sessions=max_sessions, max_sessions_per_client=max_sessions)
        self.max_sessions = self.limits.max_sessions
        self.admission = Admission(self.limits)
        self.reaper = IdleReaper(self.limits.idle_timeout_s)
        if server_session_control not in SERVER_SESSION_CONTROL:
            raise ValueError(f"server_session_control must be one of {list(SERVER_SESSION_CONTROL)}")
        self.server_session_control = server_session_control
        self.idle_replay = idle_replay           # idle client sessions play back recorded idle motion
        self.ingest_speed = ingest_speed         # client audio fed at most this many x real time (None: unpaced)
        self.send_buffer_bytes = send_buffer_bytes
        self.frames_total = 0                    # frames published by all sessions
        self.metrics = HubMetrics(self)
        self.max_batch = max_batch
        self.batcher: SessionBatcher | None = None     # the scheduler, made for the first session's model
        self.idle_clock = IdleClock(self)
        self.sessions: dict[str, LiveSession] = {}
        self.clients: set[ClientConn] = set()
        self.dropped_total = 0
        self.errors: collections.Counter[str] = collections.Counter()   # error replies by code
        self._building: collections.Counter = collections.Counter()      # client addr -> sessions being built
        self._sessions_changed = asyncio.Event()                           # set when a session closes
        self._nums = itertools.count(1)
        # ARKit frame formats: the map (None = the stand-in's); arkit_error refuses them, saying why
        self.arkit_retarget = None
        self.arkit_error: str | None = None
        self.status_listeners: list[Callable[[LiveSession], None]] = []
        self.session_listeners: list[Callable[[LiveSession, bool], None]] = []   # (session, created?)
        self.started = time.time()

    async def create_session(self, name: str, style: str = "", owner: ClientConn | None = None,
                             idle: bool = False) -> LiveSession:
        """A new session. ``idle=True``: the hub's :class:`IdleClock` keeps it moving when its audio
        stops (client sessions; sessions fed by a server source have their own clock)."""
        if name in self.sessions:
            raise P.ProtocolError(P.ErrorCode.SESSION_EXISTS, f"session {name!r} already exists; "
                                  "pick another name or omit it", "open")
        if owner is not None:          # the operator's own sessions are not subject to admission
            try:
                self.admission.check_open(len(self.sessions), self.sessions_of(owner.addr), owner.addr or "?")
            except P.ProtocolError as e:
                log_event("session_refused", code=e.code, client=owner.addr, sessions=len(self.sessions))
                raise
        self.sessions[name] = None  # reserve the name (and a place) while the session is built
        addr = owner.addr if owner is not None else None
        self._building[addr] += 1
        try:
            session = await asyncio.to_thread(self.make_session, style)
        except BaseException:
            del self.sessions[name]
            raise
        finally:
            self._building[addr] -= 1
            if not self._building[addr]:
                del self._building[addr]
        try:
            live = LiveSession(self, name, next(self._nums), session, style, owner)
            self._scheduler(session).add(session, key=live)
        except BaseException:
            del self.sessions[name]
            raise
        live.idle = idle
        self.sessions[name] = live
        if idle:
            self.idle_clock.ensure_running()
        for fn in list(self.session_listeners):
            fn(live, True)
        log_event("session_opened", session=name, client=owner.addr if owner is not None else None,
                  sessions=len(self.sessions))
        return live

    def _scheduler(self, session) -> SessionBatcher:
        """The hub's scheduler (made and started for the first session's model)."""
        if self.batcher is None:
            self.batcher = SessionBatcher(session.model, device=session.device, max_batch=self.max_batch,
                                          on_frames=self._on_frames, on_error=self._on_engine_error,
                                          on_step=self.metrics.observe_hop)
        if not self.batcher.running:
            self.batcher.start()
        return self.batcher

    @staticmethod
    def _on_frames(live: LiveSession, frames) -> None:
        """The scheduler's worker thread: hand ``live``'s new frames to its event loop (never blocks)."""
        live.loop.call_soon_threadsafe(live._deliver, frames)

    def _on_engine_error(self, live: LiveSession, exc: BaseException) -> None:
        """The scheduler's worker thread: ``live``'s hop raised; it was removed from the scheduler. Close
        it (on its event loop) and tell its subscribers why; the other sessions go on."""
        log.error("session %s failed in the engine and is closed: %s: %s", live.name, type(exc).__name__, exc)
        live.loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self.close_session(live, reason=f"engine error: {type(exc).__name__}")))

    def close(self) -> None:
        """Stop the idle clock and the scheduler's worker (the sessions stay as they are)."""
        self.idle_clock.close()
        if self.batcher is not None:
            self.batcher.stop()

    async def close_session(self, live: LiveSession, reason: str = "closed") -> None:
        if live.closed:
            return
        live.closed = True
        self.sessions.pop(live.name, None)
        if self.batcher is not None:
            self.batcher.remove(live)
        msg = P.event_json("session_closed", session=live.name, reason=reason)
        for c in list(live.subscribers):
            c.subs.discard(live.name)
            c.send_control(msg)
        live.subscribers.clear()
        live.audio_subscribers.clear()
        self._sessions_changed.set()
        log_event("session_closed", session=live.name, reason=reason, frames=live.frames_out,
                  dropped=live.dropped_frames, client=live.owner.addr if live.owner is not None else None)
        for fn in list(self.session_listeners):
            fn(live, False)

    def notify_status(self, live: LiveSession) -> None:
        for fn in list(self.status_listeners):
            try:
                fn(live)
            except Exception:
                log.exception("status listener failed")

    def live_sessions(self) -> list[str]:
        return [n for n, s in self.sessions.items() if s is not None]

    def sessions_of(self, addr: str | None) -> int:
        """Client sessions (open or being built) whose owner connected from ``addr``."""
        return sum(1 for s in self.sessions.values() if s is not None and s.owner is not None
                   and s.owner.addr == addr) + self._building.get(addr, 0)

    def ready(self) -> tuple[bool, str]:
        """Whether a new client session would be admitted now, and why (``/readyz``)."""
        cap, n = self.limits.effective_capacity, len(self.sessions)
        if self.admission.draining:
            return False, "draining (shutting down, no new sessions)"
        if n >= cap:
            return False, f"full: {n} of {cap} sessions"
        return True, f"{n} of {cap} sessions"

    async def drain(self, grace_s: float, reason: str = "server shutting down") -> int:
        """Graceful shutdown: refuse new sessions (``draining``), give the running client sessions up to
        ``grace_s`` to finish (their owners close them), then close the rest with ``session_closed``
        and ``reason``. Returns how many were closed by the drain."""
        self.admission.draining = True
        log_event("drain_started", grace_s=grace_s, sessions=self.live_sessions())
        loop = asyncio.get_running_loop()
        t_end = loop.time() + grace_s
        while self._client_sessions() and loop.time() < t_end:
            self._sessions_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sessions_changed.wait(), max(0.0, t_end - loop.time()))
        left = self._client_sessions()
        for live in left:
            await self.close_session(live, reason=f"{reason} (drain after {grace_s:g} s)")
        log_event("drain_done", closed=len(left))
        return len(left)

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Close client sessions idle (no audio) with no subscriber for the idle timeout; their names."""
        live = self._client_sessions()
        due = self.reaper.observe({s: bool(s.subscribers) or not s.is_idle() for s in live}, now)
        for s in due:
            if s.owner is not None and s.owner.own is s:
                s.owner.own = None
                s.owner.send_control(P.event_json("session_closed", session=s.name, reason=IDLE_TIMEOUT_REASON))
            await self.close_session(s, reason=IDLE_TIMEOUT_REASON)
        return [s.name for s in due]

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            try:
                await self.reap_idle()
            except Exception:  # noqa: BLE001 - the reaper must not die with one bad session
                log.exception("idle reaper failed")

    def _client_sessions(self) -> list[LiveSession]:
        return [s for s in self.sessions.values() if s is not None and s.owner is not None and not s.closed]

    def limits_info(self) -> dict:
        return self.admission.as_dict(len(self.sessions))

    def stats(self) -> dict:
        out = {"uptime_s": time.time() - self.started, "clients": len(self.clients),
               "sessions": self.live_sessions(), "dropped_frames_total": self.dropped_total,
               "limits": self.limits_info(), "refused": dict(self.admission.refused),
               "errors": dict(self.errors)}
        if self.batcher is not None and self.batcher.stats["batches"]:
            st = self.batcher.stats
            out["batch_steps"] = st["batches"]
            out["batch_size_mean"] = st["hops"] / st["batches"]
        return out

    # -- connection handler -------------------------------------------------------------------

    async def handler(self, ws) -> None:
        client = ClientConn(self, ws, self.max_frames_per_client)
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and self.send_buffer_bytes:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        self.clients.add(client)
        writer = asyncio.create_task(client.writer())
        try:
            async for data in ws:
                rx = received_at(ws)
                audio = isinstance(data, (bytes, bytearray, memoryview))
                wait = (client.audio_rate if audio else client.control_rate).delay()
                if wait > 0:                  # over its rate: stop reading this client for a while (backpressure)
                    self._rate_warning(client, audio, rx)
                await self.dispatch(client, data, rx)
                await asyncio.sleep(wait)     # also: one message per turn, so no client can hog the loop
        except Exception as e:  # abrupt disconnects end up here (ConnectionClosedError)
            log.debug("client %d disconnected: %s", client.id, e)
        finally:
            client.closing = True
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            self.clients.discard(client)
            for name in list(client.subs):
                live = self.sessions.get(name)
                if live is not None:
                    live.subscribers.pop(client, None)
                    live.audio_subscribers.discard(client)
            if client.own is not None:
                await self.close_session(client.own, reason="owner disconnected")

    async def dispatch(self, client: ClientConn, data, rx_time: float | None = None) -> str | None:
        """Handle one received WebSocket message (``str``: control JSON, bytes: audio) that reached the
        server at ``rx_time`` (``time.time()``; None = now). Every error the input can cause is answered
        with its own code; ``internal`` is left for server bugs. Returns the error code sent, if any."""
        rx_time = time.time() if rx_time is None else rx_time
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                await self._on_audio(client, bytes(data), rx_time)
            else:
                await self._on_message(client, P.parse_text(data))
            return None
        except P.ProtocolError as e:
            client.error(e.code, e.message, e.ref)
            code = e.code
        except SessionClosed as e:
            client.error(P.ErrorCode.UNKNOWN_SESSION, f"session {e} was closed", None)
            code = P.ErrorCode.UNKNOWN_SESSION
        except Exception as e:  # the model or a bug: report it, keep serving
            log.exception("error handling a message from client %d", client.id)
            client.error(P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
            code = P.ErrorCode.INTERNAL
        self.errors[code] += 1
        return code

    def _rate_warning(self, client: ClientConn, audio: bool, rx_time: float | None) -> None:
        """Tell a client over its message rate, at most once a second, that it is being slowed down."""
        now = time.time() if rx_time is None else rx_time
        self.errors[P.ErrorCode.RATE_LIMITED] += 1
        if now - client._rate_warned_at < 1.0:
            return
        client._rate_warned_at = now
        rate = client.audio_rate.rate if audio else client.control_rate.rate
        client.error(P.ErrorCode.RATE_LIMITED, f"more than {rate:.0f} {'audio' if audio else 'control'} messages "
                     "per second from this connection: the server reads it more slowly until it keeps to that "
                     "rate (nothing is dropped; this reply comes at most once a second)")

    def _session(self, name: str | None, client: ClientConn, ref: str) -> LiveSession:
        if name is None:
            name = client.own.name if client.own is not None else "default"
        live = self.sessions.get(name)
        if live is None:
            raise P.ProtocolError(P.ErrorCode.UNKNOWN_SESSION, f"no session named {name!r}; sessions: "
                                  f"{self.live_sessions()}", ref)
        return live

    def _check_auth(self, client: ClientConn, msg) -> None:
        if client.authed or not P.needs_token(msg):
            return
        if msg.token is not None and _token_ok(msg.token, self.token):
            return
        raise P.ProtocolError(P.ErrorCode.UNAUTHORIZED, "this server requires a token for control messages: "
                              'send {"type": "hello", "token": "..."} first or add "token" to the message',
                              type(msg).__name__.lower())

    def _check_owner(self, client: ClientConn, live: LiveSession, ref: str) -> None:
        if live.owner is None:
            if ref not in SERVER_SESSION_CONTROL[self.server_session_control]:
                allowed = SERVER_SESSION_CONTROL[self.server_session_control]
                raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"session {live.name!r} is the server's own; its "
                                      f"operator lets clients send {' and '.join(allowed) or 'no control'} to it "
                                      "(mm2face-live --server-session-control). Open your own session to "
                                      f"{ref} it", ref)
            return
        if live.owner is not client:
            raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"session {live.name!r} belongs to another client; "
                                  "only its owner may end, flush or close it", ref)

    def check_format(self, fmt: str, ref: str) -> None:
        """ARKit formats need a map for the model's head (the stand-in's, or one from mm2face-retarget)."""
        if fmt in P.ARKIT_FORMATS and self.arkit_error is not None:
            raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, f"{ref}: format {fmt!r} is not available: "
                                  f"{self.arkit_error}", ref)

    def _subscribe(self, client: ClientConn, live: LiveSession, fmt: str, audio: bool = False) -> None:
        self.check_format(fmt, "subscribe")
        extra = {}
        if fmt in P.ARKIT_FORMATS:
            from mm2face.engine.arkit import standin_retarget
            extra = P.arkit_subscribed_fields(self.arkit_retarget or standin_retarget())
        if audio:                      # the session's audio as MMAU messages; reply says so (v1 replies unchanged)
            live.audio_subscribers.add(client)
            extra["audio"] = True
            extra["sample_rate"] = SAMPLE_RATE
        else:
            live.audio_subscribers.discard(client)
        live.subscribers[client] = fmt
        client.subs.add(live.name)
        client.send_control(P.event_json("subscribed", session=live.name, session_num=live.num, format=fmt,
                                         style=live.style, **extra))

    async def _on_message(self, client: ClientConn, msg) -> None:
        self._check_auth(client, msg)
        if isinstance(msg, P.Hello):
            if self.token is not None and msg.token is not None:
                if not _token_ok(msg.token, self.token):
                    raise P.ProtocolError(P.ErrorCode.UNAUTHORIZED, "wrong token", "hello")
                client.authed = True
            client.send_control(P.hello_json(self.live_sessions(), auth_required=not client.authed,
                                             limits=self.limits_info(), version=msg.version))
        elif isinstance(msg, P.Subscribe):
            self._subscribe(client, self._session(msg.session, client, "subscribe"), msg.format, msg.audio)
        elif isinstance(msg, P.Unsubscribe):
            live = self._session(msg.session, client, "unsubscribe")
            live.subscribers.pop(client, None)
            live.audio_subscribers.discard(client)
            client.subs.discard(live.name)
            client.send_control(P.event_json("unsubscribed", session=live.name))
        elif isinstance(msg, P.Open):
            if client.own is not None:
                raise P.ProtocolError(P.ErrorCode.SESSION_EXISTS, f"this client already has session "
                                      f"{client.own.name!r}; send close first", "open")
            self.check_format(msg.format, "open")
            name = msg.session or f"s-{secrets.token_hex(4)}"
            live = await self.create_session(name, style=msg.style, owner=client, idle=msg.idle)
            if msg.guidance is not None:
                await live.set_style(msg.style, 0.0, msg.guidance)
            live.sample_rate, live.sample_format = msg.sample_rate, msg.sample_format
            live.resampler = StreamResampler(msg.sample_rate)
            client.own = live
            client.send_control(P.event_json("opened", session=live.name, session_num=live.num,
                                             sample_rate=msg.sample_rate, sample_format=msg.sample_format,
                                             idle=live.idle))
            self._subscribe(client, live, msg.format)
        elif isinstance(msg, P.AudioFormat):
            live = client.own
            if live is None:
                raise P.ProtocolError(P.ErrorCode.NO_SESSION, 'send {"type": "open", ...} before audio_format',
                                      "audio_format")
            # Samples still inside the old resampler's window belong to the old rate: finish them.
            tail = live.resampler.flush()
            if len(tail):
                await live.push_audio(tail)
            live.sample_rate, live.sample_format = msg.sample_rate, msg.sample_format
            live.resampler = StreamResampler(msg.sample_rate)
            client.send_control(P.event_json("audio_format", session=live.name, sample_rate=msg.sample_rate,
                                             sample_format=msg.sample_format))
        elif isinstance(msg, P.Style):
            live = self._session(msg.session, client, "style")
            if live.owner is None:
                self._check_owner(client, live, "style")
            await live.set_style(msg.text, msg.blend_s, msg.guidance, requester=client)
        elif isinstance(msg, P.End):
            live = self._session(msg.session, client, "end")
            self._check_owner(client, live, "end")
            if live is client.own:
                tail = live.resampler.flush()
                if len(tail):
                    await live.push_audio(tail)
            frames = await live.end()
            last = frames[-1].seq if frames else None
            for c in list(live.subscribers):
                c.send_control(P.event_json("ended", session=live.name, last_seq=last, n_frames=len(frames)))
            if client not in live.subscribers:
                client.send_control(P.event_json("ended", session=live.name, last_seq=last, n_frames=len(frames)))
        elif isinstance(msg, P.Flush):
            live = self._session(msg.session, client, "flush")
            self._check_owner(client, live, "flush")
            frames = await live.flush()
            for c in set(live.subscribers) | {client}:
                c.send_control(P.event_json("flushed", session=live.name, n_frames=len(frames)))
        elif isinstance(msg, P.Close):
            live = self._session(msg.session, client, "close")
            if live.owner is not client:
                raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"only the client that opened {live.name!r} "
                                      "can close it", "close")
            client.own = None
            await self.close_session(live, reason="closed by owner")
            if live.name not in client.subs:
                client.send_control(P.event_json("session_closed", session=live.name, reason="closed by owner"))
        elif isinstance(msg, P.Stats):
            live = self._session(msg.session, client, "stats") if (msg.session or client.own or
                                                                   "default" in self.sessions) else None
            client.send_control(P.event_json("stats", server=self.stats(), session=live.stats() if live else None,
                                             client={"dropped_frames": client.dropped,
                                                     "sent_frames": client.sent_frames,
                                                     "dropped_audio_chunks": client.dropped_audio_chunks}))

    async def _on_audio(self, client: ClientConn, data: bytes, arrival: float) -> None:
        live = client.own
        if live is None:
            raise P.ProtocolError(P.ErrorCode.NO_SESSION, "binary messages are audio for this client's own "
                                  'session: send {"type": "open", "sample_rate": 16000, "sample_format": '
                                  '"pcm16"} first', "audio")
        chk = P.check_audio(data, live.sample_format)
        if chk.n_clipped:
            live.n_clipped += chk.n_clipped
            if not live.warned_clipped:
                live.warned_clipped = True
                client.send_control(P.warning_json(
                    P.WarningCode.AUDIO_CLIPPED, f"{chk.n_clipped} samples beyond [-1, 1] were clipped; "
                    "float32 audio must be scaled to [-1, 1] (reported once per session)", live.name))
        audio = live.resampler.process(chk.audio)
        # Fair ingestion: a long message goes in one hop at a time, each slice joining the next batched
        # round with everyone else's ready hops, so no session waits behind another's upload.
        # Paced: beyond a first burst, at most ``ingest_speed`` times real time (the handler then stops
        # reading this client: backpressure), so an upload costs about what a speaking session does.
        for i in range(0, len(audio), INGEST_SLICE_SAMPLES):
            part = audio[i:i + INGEST_SLICE_SAMPLES]
            if live.ingest_rate is not None:
                wait = live.ingest_rate.delay(len(part) / SAMPLE_RATE)
                if wait > 0:
                    await asyncio.sleep(wait)
            await live.push_audio(part, arrival_time=arrival)


def _peer_host(ws) -> str | None:
    """The client's IP address (the key of the per-client session limit), or None when unknown."""
    try:
        addr = ws.remote_address
    except Exception:  # noqa: BLE001 - a closed transport or a stand-in without one
        return None
    return str(addr[0]) if isinstance(addr, (tuple, list)) and addr else None


def _token_ok(given: str, expected: str) -> bool:
    """Constant-time token check; compares UTF-8 bytes (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def received_at(ws) -> float | None:
    """When the next message of ``ws`` reached the server (stamped by :class:`StampedConnection` as its
    last frame arrived, before it waited in any queue); None for other connection types."""
    q = getattr(ws, "rx_times", None)
    return q.popleft() if q else None


@functools.cache
def stamped_connection_class():
    """A websockets ServerConnection that stamps each data message with ``time.time()`` when its last
    frame reaches the process (``rx_times``, read with :func:`received_at`), so latency includes the
    time a message then waits unread, queued behind the client's earlier messages."""
    from websockets.asyncio.server import ServerConnection
    from websockets.frames import Frame, Opcode

    data_ops = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)

    class StampedConnection(ServerConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rx_times: collections.deque[float] = collections.deque()

        def process_event(self, event) -> None:
            if self.request is not None and isinstance(event, Frame) and event.fin and event.opcode in data_ops:
                self.rx_times.append(time.time())
            super().process_event(event)

    return StampedConnection


def _http_page(connection, request, hub: "Hub | None" = None):
    """Plain HTTP GET (not a WebSocket upgrade): the operations endpoints, then the browser viewer's files (see web_static)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    ops = _ops_response(connection, request.path.split("?")[0], hub) if hub is not None else None
    if ops is not None:
        return ops
    static = web_static.static_response(connection, request.path)
    if static is not None:
        return static
    return connection.respond(404, "mm2face-live speaks WebSocket protocol v2 here; see docs/protocol.md\n")


def _ops_response(connection, path: str, hub: "Hub"):
    """``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``; None for any other path."""
    if path == "/metrics":
        body, ctype = hub.metrics.exposition()
        response = connection.respond(200, body.decode("utf-8"))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = ctype
        return response
    if path == "/healthz":
        return connection.respond(200, f"ok: up {time.time() - hub.started:.0f} s, {len(hub.live_sessions())} "
                                       "sessions\n")
    if path == "/readyz":
        ready, why = hub.ready()
        return connection.respond(200 if ready else 503, ("ready: " if ready else "not ready: ") + why + "\n")
    return None


@contextlib.asynccontextmanager
async def serve_hub(hub: Hub, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """Serve ``hub`` on ``ws://host:port`` while the context is open. ``port=0`` picks a free port
    (read it from ``server.port``)."""
    from websockets.asyncio.server import serve

    async with serve(hub.handler, host, port, max_size=WS_MAX_SIZE, compression=None,
                     max_queue=64, process_request=lambda conn, req: _http_page(conn, req, hub),
                     create_connection=stamped_connection_class()) as server:
        server.port = next(iter(server.sockets)).getsockname()[1]
        reaper = asyncio.ensure_future(hub._reap_loop()) if hub.limits.idle_timeout_s > 0 else None
        try:
            yield server
        finally:
            if reaper is not None:
                reaper.cancel()
            hub.close()
